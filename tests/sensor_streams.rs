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
        stdout.contains("taxels (tensor [4, 4] at 50 Hz; stale after 200 ms: paused inference)"),
        "{stdout}"
    );
    assert!(stdout.contains("mic (audio 1 ch at 400 Hz"), "{stdout}");

    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let log = dir.join("run.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
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
        wire::encode_tensor(sent, &[4, 4], &[k * TAXEL_VALUE; 16], 0, &mut buf);
        session
            .put("reflex/sim_arm/taxels", buf.clone())
            .wait()
            .unwrap();
        wire::encode_tensor(sent, &[8, 1], &[k * AUDIO_VALUE; 8], 0, &mut buf);
        session
            .put("reflex/sim_arm/mic", buf.clone())
            .wait()
            .unwrap();
        if sent == 10 {
            // A sample of the wrong shape and one with NaN are refused, not fed.
            wire::encode_tensor(0, &[2, 8], &[1e3; 16], 0, &mut buf);
            session
                .put("reflex/sim_arm/taxels", buf.clone())
                .wait()
                .unwrap();
            wire::encode_tensor(0, &[4, 4], &[f32::NAN; 16], 0, &mut buf);
            session
                .put("reflex/sim_arm/taxels", buf.clone())
                .wait()
                .unwrap();
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
