//! Cameras through OpenCV videoio (`opencv_camera`), with no camera hardware: a
//! video file written here with OpenCV's `VideoWriter`, and GStreamer
//! `videotestsrc` pipelines. The fixture model (chunk_image_mean.onnx) adds 0.1 x
//! the image's mean brightness to the state, so every logged chunk shows which
//! frame it saw.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use opencv::core::{CV_8UC3, Mat, Scalar, Size};
use opencv::prelude::*;
use opencv::videoio::{VideoWriter, VideoWriterTrait};

const FPS: f64 = 10.0;
const FRAMES: usize = 30;

/// Frame k is uniformly gray at level 16 k + 8 (mod 256): told apart by the model.
fn gray(k: usize) -> f64 {
    ((16 * k + 8) % 256) as f64
}

fn write_video(path: &Path) {
    write_levels(path, gray);
}

/// A video whose frame k is uniformly gray at `level(k)`.
fn write_levels(path: &Path, level: impl Fn(usize) -> f64) {
    let fourcc = VideoWriter::fourcc('M', 'J', 'P', 'G').unwrap();
    let mut writer =
        VideoWriter::new(path.to_str().unwrap(), fourcc, FPS, Size::new(64, 48), true).unwrap();
    assert!(writer.is_opened().unwrap(), "OpenCV cannot write MJPG/AVI");
    for k in 0..FRAMES {
        let level = level(k);
        let frame =
            Mat::new_rows_cols_with_default(48, 64, CV_8UC3, Scalar::new(level, level, level, 0.0))
                .unwrap();
        writer.write(&frame).unwrap();
    }
    writer.release().unwrap();
}

fn launch_text(camera: &str) -> String {
    let policy = chunk_policy(
        "chunk_image_mean.onnx",
        r#"
[[policy.inputs]]
name = "image"
source = "cam.image"
shape = [1, 3, 32, 32]
image = { resize = [32, 32], layout = "nchw", range = "zero_one" }
"#,
        10,
    );
    format!(
        "{}\n[[drivers]]\nkind = \"opencv_camera\"\nname = \"cam\"\nwidth = 64\nheight = 48\n{camera}\n",
        demo_with_policy(&policy, 3)
    )
}

/// The gray level each logged chunk saw, by the tick it was conditioned on.
fn levels_seen(log: &Path) -> BTreeMap<u64, f64> {
    chunk_offsets(log)
        .into_iter()
        .map(|(tick, offset)| (tick, offset[0] / 0.1 * 255.0))
        .collect()
}

/// The camera's line of the run's stderr and the fresh frames it counted.
fn camera_summary(stderr: &[u8]) -> (String, u64) {
    let stderr = String::from_utf8_lossy(stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("camera `cam`"))
        .unwrap_or_else(|| panic!("no camera summary: {stderr}"))
        .to_string();
    let fresh = line
        .split("): ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (line, fresh)
}

#[test]
fn a_video_file_feeds_the_frame_due_at_each_simulated_tick() {
    let dir = scratch("camera-file");
    let video = dir.join("gray.avi");
    write_video(&video);
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        launch_text(&format!("file = {:?}\nfps = {FPS}\n", video.display())),
    )
    .unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("cam (image 64x48 at 10 Hz"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let logs: Vec<_> = ["a.log", "b.log"].iter().map(|n| dir.join(n)).collect();
    for log in &logs {
        run_ok(&[
            "run",
            launch.to_str().unwrap(),
            "--sim-clock",
            "--duration",
            "2.5",
            "--set",
            "zenoh.enabled=false",
            "--log",
            log.to_str().unwrap(),
        ]);
    }
    // Deterministic: the same frames at the same ticks, byte for byte.
    assert_eq!(
        std::fs::read(&logs[0]).unwrap(),
        std::fs::read(&logs[1]).unwrap()
    );
    let seen = levels_seen(&logs[0]);
    assert!(seen.len() >= 5, "{seen:?}");
    for (tick, level) in &seen {
        // 100 Hz ticks: frame k is due at tick 10 k; the newest due one is seen.
        let k = (*tick / 10) as usize;
        assert!(
            (level - gray(k)).abs() < 3.0,
            "tick {tick}: saw level {level:.1}, frame {k} has {}",
            gray(k)
        );
    }
}

#[test]
fn a_tactile_camera_publishes_the_difference_to_its_reference() {
    // GelSight / DIGIT style: the first 5 frames (no contact, level 100) are the
    // reference; then contact brightens the image by 4 levels a frame.
    let contact = |k: usize| {
        if k < 5 {
            100.0
        } else {
            100.0 + 4.0 * (k - 4) as f64
        }
    };
    let dir = scratch("camera-tactile");
    let video = dir.join("gel.avi");
    write_levels(&video, contact);
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        launch_text(&format!(
            "file = {:?}\nfps = {FPS}\nreference_frames = 5\n",
            video.display()
        )),
    )
    .unwrap();
    let log = dir.join("run.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "2.5",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let seen = levels_seen(&log);
    assert!(seen.len() >= 4, "{seen:?}");
    for (tick, level) in &seen {
        let k = (*tick / 10) as usize;
        assert!(
            k >= 5,
            "a chunk before the reference was complete: tick {tick}"
        );
        let want = 128.0 + contact(k) - 100.0;
        assert!(
            (level - want).abs() < 3.0,
            "tick {tick}: saw {level:.1}, the difference of frame {k} is {want}"
        );
    }
}

#[test]
fn a_live_pipeline_is_fresh_and_a_static_scene_is_not_flagged_as_repeated() {
    let dir = scratch("camera-gst");
    let launch = dir.join("launch.toml");
    // A static gray scene: every frame identical, every frame fresh.
    std::fs::write(
        &launch,
        launch_text(
            "pipeline = \"videotestsrc is-live=true pattern=solid-color foreground-color=0xff808080 \
             ! video/x-raw,width=64,height=48,framerate=30/1 ! videoconvert ! \
             video/x-raw,format=BGR ! appsink\"\nfps = 30.0\n",
        ),
    )
    .unwrap();
    let log = dir.join("run.log");
    let out = run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "2",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let (line, fresh) = camera_summary(&out.stderr);
    assert!(line.contains(" 0 repeated"), "{line}");
    assert!(fresh >= 30, "{line}");
    let seen = levels_seen(&log);
    assert!(seen.len() >= 3, "{seen:?}");
    for level in seen.values() {
        assert!((level - 128.0).abs() < 3.0, "{seen:?}");
    }
}

/// An RTSP camera (`url`, OpenCV's FFmpeg backend): a live MJPEG/RTP stream from
/// a gst-rtsp-server run by tests/fixtures/rtsp_server.py.
#[test]
fn an_rtsp_stream_is_a_camera() {
    let dir = scratch("camera-rtsp");
    let port = free_port();
    let mut server = std::process::Command::new("/usr/bin/python3")
        .arg(repo().join("tests/fixtures/rtsp_server.py"))
        .args([&port.to_string(), "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("system python3 (PyGObject, gst-rtsp-server: scripts/setup.sh installs them)");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "serving", "the RTSP server did not start");
    let launch = dir.join("launch.toml");
    std::fs::write(
        &launch,
        launch_text(&format!(
            "url = \"rtsp://127.0.0.1:{port}/cam\"\nfps = 15.0\n"
        )),
    )
    .unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&format!(
            "from opencv_camera `cam`: stream rtsp://127.0.0.1:{port}/cam"
        )),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let log = dir.join("run.log");
    let out = run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let _ = server.kill();
    let _ = server.wait();
    let (line, fresh) = camera_summary(&out.stderr);
    eprintln!("{line}");
    assert!(fresh >= 20, "{line}");
    let seen = levels_seen(&log);
    assert!(seen.len() >= 3, "{seen:?}");
    for level in seen.values() {
        assert!((level - 128.0).abs() < 4.0, "{seen:?}");
    }
}

#[test]
fn a_camera_that_stops_goes_stale_holds_the_arm_and_is_reopened() {
    let dir = scratch("camera-stall");
    let launch = dir.join("launch.toml");
    // 15 frames (0.5 s), then end of stream: the driver reopens the pipeline after
    // 700 ms; meanwhile the stream is stale (after 200 ms) and inference pauses.
    let text = format!(
        "{}\n[streams.cam]\nmax_age_ms = 200\n",
        launch_text(
            "pipeline = \"videotestsrc is-live=true num-buffers=15 ! \
             video/x-raw,width=64,height=48,framerate=30/1 ! videoconvert ! \
             video/x-raw,format=BGR ! appsink\"\nfps = 30.0\nreconnect_ms = 700\n",
        )
    );
    std::fs::write(&launch, text).unwrap();
    let summary_path = dir.join("summary.json");
    let out = run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "3",
        "--set",
        "zenoh.enabled=false",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stream `cam` stale"), "{stderr}");
    assert!(stderr.contains("stream `cam` fresh again"), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("camera `cam`")).unwrap();
    assert!(!line.contains(" 0 reconnects"), "{line}");
    let s = summary(&summary_path);
    let cam = s["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "cam")
        .cloned()
        .unwrap();
    assert!(cam["stale_episodes"].as_u64().unwrap() >= 1, "{cam}");
    assert_eq!(s["estop"], false, "a stale camera pauses, it does not stop");
}

#[test]
fn missing_cameras_are_clear_errors_not_hangs() {
    let dir = scratch("camera-missing");
    let launch = dir.join("launch.toml");
    // A device path that does not exist: refused by `reflex check`.
    std::fs::write(
        &launch,
        launch_text("device = \"/dev/video42\"\nfps = 30.0\n"),
    )
    .unwrap();
    let out = reflex()
        .args(["check", launch.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("field `drivers[1].device`: no such device: /dev/video42"),
        "{err}"
    );
    // Two sources, or none.
    std::fs::write(
        &launch,
        launch_text("device = 0\nurl = \"rtsp://127.0.0.1:9/x\"\nfps = 30.0\n"),
    )
    .unwrap();
    let out = reflex()
        .args(["check", launch.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exactly one of `device`, `pipeline`, `url` or `file`, found device, url"),
        "{err}"
    );
    // A device index with no device behind it: the run fails at start, naming it.
    std::fs::write(&launch, launch_text("device = 57\nfps = 30.0\n")).unwrap();
    let started = std::time::Instant::now();
    let out = reflex()
        .args([
            "run",
            launch.to_str().unwrap(),
            "--duration",
            "2",
            "--set",
            "zenoh.enabled=false",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("driver `cam`") && err.contains("V4L2 device 57"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
