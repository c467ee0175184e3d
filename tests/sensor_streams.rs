//! Tensor and audio streams from a driver reach the policy: a taxel array and a
//! microphone arrive over zenoh (`zenoh_stream` drivers), and the fixture model
//! (chunk_tensor.onnx) adds 1e-3 x (sum of the taxels, sum of the audio chunk, 0)
//! to the state, so every logged chunk shows the samples it was fed. Until both
//! streams have sent something they are stale (`on_stale = "pause"`, the default):
//! no chunk is requested.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reflex_zenoh::wire;
use zenoh::Wait;

const TAXEL_VALUE: f32 = 0.01;
const AUDIO_VALUE: f32 = 0.01;

fn header(seq: u64) -> wire::TensorHeader {
    wire::TensorHeader {
        seq,
        stamp_ns: 0,
        unix_ns: 0,
    }
}

fn launch_text() -> String {
    let policy = chunk_policy(
        "chunk_tensor.onnx",
        r#"
[[policy.inputs]]
name = "taxels"
source = "taxels.data"
shape = [1, 4, 4]

[[policy.inputs]]
name = "audio"
source = "mic.samples"
shape = [1, 8, 1]
"#,
        10,
    );
    format!(
        "{}
[[drivers]]
kind = \"zenoh_stream\"
name = \"taxels\"
stream = \"tensor\"
shape = [4, 4]
rate_hz = 50.0

[[drivers]]
kind = \"zenoh_stream\"
name = \"mic\"
stream = \"audio\"
frames = 8
channels = 1
sample_rate_hz = 400.0

[streams.taxels]
max_age_ms = 200
",
        demo_with_policy(&policy, 3)
    )
}

#[test]
fn taxels_and_audio_over_zenoh_feed_the_policy() {
    let dir = scratch("sensor-streams");
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text()).unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains(
            "taxels (tensor [4, 4] at 50 Hz, from zenoh_stream `taxels`: zenoh key \
             reflex/sim_arm/taxels; stale after 200 ms: paused inference)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("mic (audio 1 ch at 400 Hz"), "{stdout}");

    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let log = dir.join("run.log");
    let summary_path = dir.join("summary.json");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--summary-json",
        summary_path.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = spawn_until(&args, "wall clock");
    let session = zenoh_peer(&endpoint);
    // Silent for the first second: both streams stale, nothing requested.
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_millis(2000) {
        sent += 1;
        let k = sent as f32;
        wire::encode_tensor(header(sent), &[4, 4], &[k * TAXEL_VALUE; 16], &mut buf);
        session
            .put("reflex/sim_arm/taxels", buf.clone())
            .wait()
            .unwrap();
        wire::encode_tensor(header(sent), &[8, 1], &[k * AUDIO_VALUE; 8], &mut buf);
        session
            .put("reflex/sim_arm/mic", buf.clone())
            .wait()
            .unwrap();
        if sent == 10 {
            // A sample of the wrong shape and one with NaN are refused, not fed.
            wire::encode_tensor(header(0), &[2, 8], &[1e3; 16], &mut buf);
            session
                .put("reflex/sim_arm/taxels", buf.clone())
                .wait()
                .unwrap();
            wire::encode_tensor(header(0), &[4, 4], &[f32::NAN; 16], &mut buf);
            session
                .put("reflex/sim_arm/taxels", buf.clone())
                .wait()
                .unwrap();
            // A repeat of an earlier sequence number (huge values: a chunk that
            // saw it would show) is not fed; a jump counts what was skipped.
            wire::encode_tensor(header(5), &[4, 4], &[1e3; 16], &mut buf);
            session
                .put("reflex/sim_arm/taxels", buf.clone())
                .wait()
                .unwrap();
            sent += 3;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());

    let mut seen = Vec::new();
    for (tick, offset) in chunk_offsets(&log) {
        // Sample k: taxels sum to 16 k x 0.01, audio to 8 k x 0.01.
        let taxel_k = offset[0] / (1e-3 * 16.0 * f64::from(TAXEL_VALUE));
        let audio_k = offset[1] / (1e-3 * 8.0 * f64::from(AUDIO_VALUE));
        for k in [taxel_k, audio_k] {
            assert!(
                (k - k.round()).abs() < 0.05,
                "tick {tick}: offsets {offset:?} are no whole sample"
            );
        }
        assert!(offset[2].abs() < 1e-6);
        seen.push((taxel_k.round() as u64, audio_k.round() as u64));
    }
    assert!(seen.len() >= 5, "{} chunks", seen.len());
    for (taxel_k, audio_k) in &seen {
        assert!(
            (1..=sent).contains(taxel_k) && (1..=sent).contains(audio_k),
            "a chunk saw no sample or one never sent: {seen:?}"
        );
        assert!(
            taxel_k.abs_diff(*audio_k) <= 3,
            "the two streams are far apart: {seen:?}"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[1].0 >= w[0].0),
        "samples went backwards: {seen:?}"
    );
    assert!(
        seen.last().unwrap().0 + 10 >= sent,
        "the last chunk saw an old sample: {seen:?}, {sent} sent"
    );
    let summary = summary(&summary_path);
    let taxels = &summary["streams"][1];
    assert_eq!(taxels["name"], "taxels", "{summary}");
    assert_eq!(taxels["source"]["repeated"], 1, "{summary}");
    assert_eq!(taxels["source"]["corrupt"], 2, "{summary}");
    // Sequence numbers 11..=13 of the taxels, and of the audio, never came (a
    // busy machine may drop more: zenoh drops puts under congestion).
    for stream in 1..3 {
        let dropped = summary["streams"][stream]["source"]["dropped"].as_u64();
        assert!(dropped >= Some(3), "{summary}");
    }
}

#[test]
fn sensor_stream_settings_are_checked_at_their_fields() {
    let dir = scratch("sensor-streams-check");
    let launch = dir.join("launch.toml");
    let cases = [
        (
            launch_text().replace("shape = [1, 4, 4]", "shape = [1, 16, 1]"),
            "field `policy.inputs[1].shape`: stream `taxels` has samples of shape [4, 4]",
        ),
        (
            launch_text().replace("source = \"mic.samples\"", "source = \"mic.data\""),
            "`mic` is an audio stream: its field is `samples`, not `data`",
        ),
        (
            launch_text().replace("shape = [4, 4]\nrate_hz", "shape = [4, 0]\nrate_hz"),
            "field `drivers[1].shape`",
        ),
        (
            launch_text().replace("sample_rate_hz = 400.0", ""),
            "field `drivers[2].sample_rate_hz`: is needed for this stream type",
        ),
        (
            launch_text().replace("channels = 1\n", "channels = 1\nshape = [2]\n"),
            "field `drivers[2].shape`: does not apply to this stream type (`audio`)",
        ),
    ];
    for (text, wanted) in cases {
        std::fs::write(&launch, text).unwrap();
        let out = reflex()
            .args(["check", launch.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{wanted}: accepted");
        assert!(err.contains(wanted), "{wanted}: {err}");
    }
    // A flattened tensor input is accepted.
    std::fs::write(
        &launch,
        launch_text().replace("shape = [1, 4, 4]", "shape = [1, 16]"),
    )
    .unwrap();
    let out = reflex()
        .args(["check", launch.to_str().unwrap()])
        .output()
        .unwrap();
    // The model itself wants [1, 4, 4]: the signature check names it.
    assert!(String::from_utf8_lossy(&out.stderr).contains("has shape [1, 4, 4] in the model"));
}

/// A Python sensor node whose clocks run 5 s behind reflex's: with `clock =
/// "sender"` the offset is estimated from arrivals and its samples are fresh; read
/// as synchronized Unix time (`clock = "unix"`) they look 5 s old, so the stream
/// is stale and no chunk is requested (the negative control).
#[test]
fn a_sender_clock_offset_is_recovered() {
    let run = |clock: &str| -> (serde_json::Value, usize) {
        let dir = scratch(&format!("sensor-clock-{clock}"));
        let policy = chunk_policy(
            "chunk_taxels.onnx",
            "\n[[policy.inputs]]\nname = \"taxels\"\nsource = \"taxels.data\"\nshape = [1, 4, 4]\n",
            10,
        );
        let text = format!(
            "{}\n[[drivers]]\nkind = \"zenoh_stream\"\nname = \"taxels\"\nstream = \"tensor\"\n\
             shape = [4, 4]\nclock = \"{clock}\"\n\n[streams.taxels]\nmax_age_ms = 300\n",
            demo_with_policy(&policy, 3)
        );
        let launch = dir.join("launch.toml");
        std::fs::write(&launch, text).unwrap();
        let port = free_port();
        let endpoint = format!("tcp/127.0.0.1:{port}");
        let (log, summary_path) = (dir.join("run.log"), dir.join("summary.json"));
        let args: Vec<String> = [
            "run",
            launch.to_str().unwrap(),
            "--duration",
            "3",
            "--set",
            &format!("zenoh.listen=[\"{endpoint}\"]"),
            "--log",
            log.to_str().unwrap(),
            "--summary-json",
            summary_path.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = spawn_until(&args, "wall clock");
        let node = std::process::Command::new(repo().join(".venv/bin/python"))
            .args([
                "-c",
                r#"
import struct, sys, time, zenoh
conf = zenoh.Config()
conf.insert_json5("mode", '"peer"')
conf.insert_json5("connect/endpoints", f'["{sys.argv[1]}"]')
conf.insert_json5("scouting/multicast/enabled", "false")
behind = 5_000_000_000
with zenoh.open(conf) as session:
    pub = session.declare_publisher("reflex/sim_arm/taxels")
    for seq in range(1, 201):
        head = struct.pack("<4sHHQQQQ", b"RFXT", 1, 2, seq, 1,
                           time.monotonic_ns() - behind, time.time_ns() - behind)
        pub.put(head + struct.pack("<2I", 4, 4) + struct.pack("<16f", *([0.5] * 16)))
        time.sleep(0.01)
"#,
                &endpoint,
            ])
            .output()
            .unwrap();
        assert!(
            node.status.success(),
            "{}",
            String::from_utf8_lossy(&node.stderr)
        );
        assert!(child.wait().unwrap().success());
        (summary(&summary_path), chunk_offsets(&log).len())
    };
    let (recovered, chunks) = run("sender");
    let stream = &recovered["streams"][1];
    assert_eq!(stream["name"], "taxels");
    assert!(chunks >= 3, "{chunks} chunks: {stream}");
    // Recovered: the samples fed are milliseconds old, not the 5 s the sender's
    // clock is behind. The median, since a publisher stalled by a loaded machine
    // can make one of the few chunks wait for a sample (seen: 255 ms); the worst
    // stays far from 5 s.
    let age = &stream["age_ms"];
    assert!(
        age["p50"].as_f64().unwrap() < 100.0 && age["max"].as_f64().unwrap() < 1000.0,
        "samples fed as if old: {stream}"
    );
    let (unsynchronized, chunks) = run("unix");
    let stream = &unsynchronized["streams"][1];
    assert_eq!(chunks, 0, "5 s old samples were fed: {stream}");
    assert!(stream["stale_episodes"].as_u64().unwrap() >= 1, "{stream}");
}

/// `reflex infer` feeds tensor and audio streams from the observation file
/// (`<stream>.data`, `<stream>.samples`), and refuses a file without a stream an
/// input reads instead of feeding zeros.
#[test]
fn reflex_infer_reads_tensor_and_audio_samples_from_the_observation() {
    let dir = scratch("sensor-infer");
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text()).unwrap();
    let taxels: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    let audio: Vec<f32> = (0..8).map(|i| 0.25 - i as f32 * 0.05).collect();
    reflex_runtime::npy::write_f32(&dir.join("taxels.npy"), &[4, 4], &taxels).unwrap();
    reflex_runtime::npy::write_f32(&dir.join("mic.npy"), &[8, 1], &audio).unwrap();
    let obs = dir.join("obs.json");
    std::fs::write(
        &obs,
        r#"{"joint_positions": [0.1, -0.2, 0.3], "images": {}, "tensors": {"taxels.data": "taxels.npy", "mic.samples": "mic.npy"}}"#,
    )
    .unwrap();
    let out_path = dir.join("out.json");
    // The demo's camera input is not optional: give it an image too.
    let camera = dir.join("top.npy");
    std::fs::write(&camera, npy_u8(&[96, 96, 3], &vec![0u8; 96 * 96 * 3])).unwrap();
    let with_camera = std::fs::read_to_string(&obs)
        .unwrap()
        .replace(r#""images": {}"#, r#""images": {"top": "top.npy"}"#);
    std::fs::write(&obs, with_camera).unwrap();
    run_ok(&[
        "infer",
        launch.to_str().unwrap(),
        "--obs",
        obs.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let first = &report["actions"][0][0];
    let want = [
        0.1 + 1e-3 * taxels.iter().sum::<f32>() as f64,
        -0.2 + 1e-3 * audio.iter().sum::<f32>() as f64,
        0.3,
    ];
    for (j, w) in want.iter().enumerate() {
        let got = first[j].as_f64().unwrap();
        assert!((got - w).abs() < 1e-5, "joint {j}: {got} vs {w}: {report}");
    }
    // Without the audio the input reads, a clear error.
    let without = std::fs::read_to_string(&obs)
        .unwrap()
        .replace(r#", "mic.samples": "mic.npy""#, "");
    std::fs::write(&obs, without).unwrap();
    let out = reflex()
        .args([
            "infer",
            launch.to_str().unwrap(),
            "--obs",
            obs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no `mic.samples` for the input that reads stream `mic` (shape [8, 1])"),
        "{err}"
    );
}

/// A uint8 .npy file.
fn npy_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}
