//! openpi interop, both ways, against real peers: the openpi-client package from
//! PyPI drives `reflex serve` (its chunks equal `reflex infer` on the same
//! observation and noise), and `[policy] kind = "openpi"` runs the loop against
//! a small openpi-protocol server written in Python (tests/openpi_server.py),
//! which is killed and restarted mid-run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reflex_runtime::log::{Record, read_log};
use reflex_runtime::npy;

/// The python of the openpi-client venv (`make test` makes it first).
fn openpi_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/openpi_venv.sh"))
        .output()
        .expect("scripts/openpi_venv.sh");
    assert!(
        out.status.success(),
        "the openpi venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Kills a child process when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a child process printed on stderr so far (also echoed).
type Stderr = Arc<Mutex<String>>;

/// Starts `reflex serve` on a free port and returns it with its URL (read from
/// the line it prints once listening) and its stderr.
fn serve(launch: &Path, envs: &[(&str, &str)]) -> (Reaped, String, Stderr) {
    let mut command = reflex();
    command
        .args(["serve", launch.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn reflex serve");
    let stderr = Stderr::default();
    let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no ws:// address in {line:?}"))
        .to_string();
    (Reaped(child), url, stderr)
}

fn served_launch(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "{}\n[serve]\nlisten = \"127.0.0.1:8000\"\n{extra}\n[serve.keys]\nstate = \"observation/state\"\nprompt = \"prompt\"\n\n[serve.keys.images]\ntop = \"observation/image\"\n",
        repo_launch_text("sim_arm_flow.toml")
    );
    let path = dir.join("serve.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn read_f32(path: &Path) -> (Vec<usize>, Vec<f64>) {
    npy::read_f64(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn openpi_client_drives_reflex_serve_and_gets_the_local_chunk() {
    let dir = scratch("openpi-serve");
    let launch = served_launch(&dir, "");
    let keyed = dir.join("keyed.toml");
    std::fs::write(
        &keyed,
        std::fs::read_to_string(&launch).unwrap().replace(
            "listen = \"127.0.0.1:8000\"",
            "listen = \"127.0.0.1:8000\"\napi_key_env = \"REFLEX_TEST_KEY\"",
        ),
    )
    .unwrap();
    let (_server, url, _) = serve(&launch, &[]);
    let (_keyed_server, keyed_url, _) = serve(&keyed, &[("REFLEX_TEST_KEY", "s3cret")]);

    let out = Command::new(openpi_python())
        .arg(repo().join("tests/openpi_client_check.py"))
        .args([
            "--url",
            &url,
            "--keyed-url",
            &keyed_url,
            "--api-key",
            "s3cret",
        ])
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openpi-client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report:#}");

    assert_eq!(report["healthz"], serde_json::json!([200, "OK\n"]));
    let meta = &report["metadata"];
    assert_eq!(meta["server"], "reflex");
    assert_eq!(meta["policy"], "flow");
    assert_eq!(meta["action_horizon"], 10);
    assert_eq!(meta["action_dim"], 3);
    assert_eq!(
        meta["joints"],
        serde_json::json!(["shoulder", "elbow", "wrist"])
    );
    assert_eq!(meta["keys"]["images"]["top"], "observation/image");
    let models = meta["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{models:?}");
    assert!(
        models
            .iter()
            .all(|m| m["sha256"].as_str().unwrap().len() == 64)
    );

    assert_eq!(report["first"]["dtype"], "float32");
    assert_eq!(report["first"]["shape"], serde_json::json!([10, 3]));
    assert!(
        report["first"]["server_timing"]["infer_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        report["first"]["server_timing"]
            .get("prev_total_ms")
            .is_none()
    );
    assert!(
        report["second_server_timing"]["prev_total_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(report["nested_equal"], true, "nested keys and CHW images");

    // The served chunks are the local ones: request 0 samples the seeded noise
    // of tick 0, and an explicit `noise` is used as given.
    let obs = dir.join("obs.npz");
    let local_seeded = dir.join("local_seeded.npy");
    let local_noise = dir.join("local_noise.npy");
    for (out, more) in [
        (&local_seeded, vec!["--tick", "0"]),
        (
            &local_noise,
            vec!["--noise", dir.join("noise.npy").to_str().unwrap()],
        ),
    ] {
        let mut args = vec![
            "infer",
            launch.to_str().unwrap(),
            "--obs",
            obs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(more.iter().map(|s| &**s));
        run_ok(&args);
    }
    for (served, local) in [
        ("served_seeded.npy", &local_seeded),
        ("served_noise.npy", &local_noise),
    ] {
        let (shape, values) = read_f32(&dir.join(served));
        let (local_shape, local_values) = read_f32(local);
        assert_eq!(shape, vec![10, 3]);
        assert_eq!(local_shape, vec![1, 10, 3]);
        assert_eq!(values, local_values, "{served} differs from reflex infer");
    }
    let (_, seeded) = read_f32(&dir.join("served_seeded.npy"));
    let (_, noised) = read_f32(&dir.join("served_noise.npy"));
    assert_ne!(seeded, noised, "the noise changed nothing");

    // Errors: a text frame with the reason (openpi-client raises it), then close.
    let bad = report["bad_request"].as_str().unwrap();
    assert!(
        bad.contains("Error in inference server")
            && bad.contains("`observation/state` has 2 values"),
        "{bad}"
    );
    assert_ne!(report["after_error"], "answered");
    let wrong = report["wrong_key"].as_str().unwrap();
    assert!(wrong.contains("401"), "{wrong}");
    assert!(report["no_key"].as_str().unwrap().contains("401"));
    assert_eq!(report["right_key_shape"], serde_json::json!([10, 3]));
}

#[test]
fn serve_needs_a_key_for_every_camera_the_policy_reads() {
    let dir = scratch("openpi-serve-keys");
    let launch = served_launch(&dir, "");
    let text = std::fs::read_to_string(&launch)
        .unwrap()
        .replace("top = \"observation/image\"", "");
    std::fs::write(&launch, text).unwrap();
    let out = reflex()
        .args(["serve", launch.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serve.toml:")
            && err.contains("serve.keys.images")
            && err.contains("camera `top`"),
        "{err}"
    );
    // A key for a camera the robot does not have.
    let text = std::fs::read_to_string(served_launch(&dir, ""))
        .unwrap()
        .replace(
            "top = \"observation/image\"",
            "wrist = \"observation/wrist_image\"",
        );
    std::fs::write(&launch, text).unwrap();
    let out = reflex()
        .args(["serve", launch.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("serve.keys.images.wrist")
            && err.contains("no camera named `wrist`"),
        "{err}"
    );
}

/// The Python openpi-protocol server on `port`, once it listens.
fn python_server(python: &Path, port: u16, log: &Path) -> Reaped {
    let mut child = Command::new(python)
        .arg(repo().join("tests/openpi_server.py"))
        .args(["--port", &port.to_string(), "--log"])
        .arg(log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("openpi test server"), "{line:?}");
    Reaped(child)
}

fn openpi_launch(dir: &Path, port: u16) -> PathBuf {
    let policy = format!(
        r#"[policy]
kind = "openpi"
url = "ws://127.0.0.1:{port}"
horizon = 10
timeout_ms = 500
resize_with_pad = [64, 48]

[policy.keys]
state = "observation/state"
prompt = "prompt"

[policy.keys.images]
top = "observation/image"

[task]
instruction = "reach the red target"
"#
    );
    let path = dir.join("openpi.toml");
    std::fs::write(&path, demo_with_policy(&policy, 3)).unwrap();
    path
}

/// Action k of the test server's chunk for `state`.
fn server_chunk(state: &[f64]) -> Vec<f32> {
    let target = [0.3, -0.4, 0.5];
    (0..10)
        .flat_map(|k| {
            state
                .iter()
                .zip(target)
                .map(move |(s, t)| (s + (t - s) * ((k + 1) as f64 / 10.0)) as f32)
        })
        .collect()
}

#[test]
fn openpi_policy_kind_drives_the_arm_and_survives_a_server_restart() {
    let dir = scratch("openpi-kind");
    let python = openpi_python();
    let port = free_port();
    let requests = dir.join("requests.jsonl");
    let launch = openpi_launch(&dir, port);
    let server = python_server(&python, port, &requests);
    let (log, summary_path) = (dir.join("run.reflexlog"), dir.join("summary.json"));
    let mut run = Reaped(
        reflex()
            .args(["run", launch.to_str().unwrap(), "--duration", "7"])
            .args(["--set", "zenoh.enabled=false", "--log"])
            .arg(&log)
            .arg("--summary-json")
            .arg(&summary_path)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    // Killed mid-run: the in-flight request fails, connects are refused.
    drop(server);
    std::thread::sleep(Duration::from_millis(1500));
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let _server = python_server(&python, port, &requests);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "reflex run did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "reflex run failed");

    let summary = summary(&summary_path);
    assert!(
        summary["inference_errors"].as_u64().unwrap() >= 1,
        "the outage was not reported: {summary}"
    );
    assert_eq!(summary["estop"], false, "{summary}");

    // What reflex sent: the mapped keys, the prompt, images resized to 64 x 48.
    let sent: Vec<serde_json::Value> = std::fs::read_to_string(&requests)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let after: Vec<_> = sent
        .iter()
        .filter(|r| r["time"].as_f64().unwrap() > restarted)
        .collect();
    assert!(
        sent.len() - after.len() >= 5,
        "{} requests before the kill",
        sent.len() - after.len()
    );
    assert!(
        after.len() >= 5,
        "only {} requests after the restart",
        after.len()
    );
    for request in &sent {
        assert_eq!(
            request["keys"],
            serde_json::json!(["observation/image", "observation/state", "prompt"])
        );
        assert_eq!(
            request["images"]["observation/image"],
            serde_json::json!([64, 48, 3, "uint8"])
        );
        assert_eq!(request["prompt"], "reach the red target");
        assert_eq!(request["state"].as_array().unwrap().len(), 3);
    }

    // Every chunk the loop applied is the server's answer to a state it was sent,
    // before and after the restart.
    let states: Vec<Vec<f64>> = sent
        .iter()
        .map(|r| {
            r["state"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let restart_index = sent.len() - after.len();
    let mut matched_after = 0;
    let mut applied = 0;
    // The arm held still while the server was gone: the longest run of ticks
    // with an unchanged command.
    let (mut still, mut longest_still, mut last) = (0usize, 0usize, None);
    for record in read_log(&log).unwrap().records {
        if let Record::Tick(tick) = &record {
            let command = tick.command.position;
            still = if last == Some(command) { still + 1 } else { 0 };
            longest_still = longest_still.max(still);
            last = Some(command);
        }
        let Record::Chunk {
            accepted: true,
            chunk,
            ..
        } = record
        else {
            continue;
        };
        applied += 1;
        let found = states.iter().position(|s| {
            server_chunk(s)
                .iter()
                .zip(&chunk.actions)
                .all(|(a, b)| (a - b).abs() < 1e-6)
        });
        let found =
            found.unwrap_or_else(|| panic!("chunk {} is no answer of the server", chunk.id));
        matched_after += usize::from(found >= restart_index);
    }
    assert!(applied >= 10, "{applied} chunks applied");
    assert!(
        longest_still >= 30,
        "the arm held for {longest_still} ticks at most"
    );
    assert!(
        matched_after >= 3,
        "{matched_after} chunks applied after the restart"
    );
}

#[test]
fn openpi_policy_kind_errors_name_the_field() {
    let dir = scratch("openpi-kind-errors");
    // Nobody listens: an error at start, at the url's line.
    let launch = openpi_launch(&dir, free_port());
    let err = run_fails(&launch);
    assert!(
        err.contains("openpi.toml:")
            && err.contains("policy.url")
            && err.contains("cannot reach the openpi server"),
        "{err}"
    );
    let text = std::fs::read_to_string(&launch).unwrap();
    for (from, to, field, message) in [
        ("url = \"ws://", "url = \"wss://", "policy.url", "wss://"),
        (
            "horizon = 10",
            "horizon = 0",
            "policy.horizon",
            "must be in",
        ),
        (
            "top = \"observation/image\"",
            "side = \"observation/image\"",
            "policy.keys.images.side",
            "no camera named `side`",
        ),
    ] {
        std::fs::write(&launch, text.replacen(from, to, 1)).unwrap();
        let err = run_fails(&launch);
        assert!(
            err.contains(field) && err.contains(message),
            "{field}: {err}"
        );
    }
}

/// V-GPS runs server-side: the reply names the chosen candidate and every
/// score, and the executed chunk is the one the value model's formula ranks
/// first (test/value_reach.onnx: Q is minus the squared distance of the action
/// from state + offset). An openpi request carries no inference delay, so the
/// first action is scored.
#[test]
fn served_chunks_go_through_the_launch_files_stages() {
    let dir = scratch("openpi-serve-vgps");
    let stage = format!(
        "\n[[stages]]\nkind = \"vgps\"\nmodel = \"{}\"\n\n[[stages.inputs]]\nname = \"state\"\n\
         source = \"state.joint_positions\"\nshape = [1, 3]\n",
        fixture("value_reach.onnx").display()
    );
    let launch = dir.join("vgps.toml");
    std::fs::write(
        &launch,
        format!(
            "{}\n[serve]\nstatus_interval_s = 0.2\n[serve.keys]\nstate = \"observation/state\"\n",
            demo_with_policy(&analytic_flow_policy(8, &stage), 2)
        ),
    )
    .unwrap();
    let (_server, url, stderr) = serve(&launch, &[]);
    let port = url.rsplit(':').next().unwrap();
    let script = format!(
        r#"
import json
import numpy as np
from openpi_client import websocket_client_policy
client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", {port})
rng = np.random.default_rng(3)
rows = []
for _ in range(6):
    state = rng.uniform(-0.6, 0.6, 3)
    reply = client.infer({{"observation/state": state}})
    rows.append([state.tolist(), reply["actions"].tolist(), int(reply["choice"]["selected"]),
                 reply["choice"]["scores"].tolist()])
print(json.dumps(rows))
"#
    );
    let out = Command::new(openpi_python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per request: state, actions, selected, scores.
    type Served = (Vec<f64>, Vec<Vec<f64>>, usize, Vec<f64>);
    let rows: Vec<Served> = serde_json::from_slice(&out.stdout).unwrap();
    let offset = [0.2, -0.1, 0.15];
    let mut not_first = 0;
    for (state, actions, selected, scores) in rows {
        assert_eq!(scores.len(), 8);
        assert_eq!(actions.len(), 6);
        let best = (0..8).fold(0, |b, k| if scores[k] > scores[b] { k } else { b });
        assert_eq!(selected, best, "{scores:?}");
        not_first += usize::from(selected != 0);
        let q: f64 = -(0..3)
            .map(|j| (actions[0][j] - state[j] - offset[j]).powi(2))
            .sum::<f64>();
        assert!(
            (q - scores[selected]).abs() < 1e-4 * (1.0 + q.abs()),
            "the executed chunk scores {q}, the chosen one {}",
            scores[selected]
        );
    }
    assert!(
        not_first > 0,
        "V-GPS never chose another candidate than the first"
    );
    // The status line counts what was served.
    std::thread::sleep(Duration::from_millis(600));
    let printed = stderr.lock().unwrap().clone();
    assert!(
        printed.contains("reflex serve: 6 requests") && printed.contains("0 errors"),
        "{printed}"
    );
}
