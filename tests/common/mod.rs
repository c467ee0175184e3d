//! Helpers shared by the end-to-end tests: run the real binary, pick free ports,
//! make scratch directories, read summaries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn reflex() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reflex"));
    cmd.current_dir(repo());
    cmd
}

pub fn run_ok(args: &[&str]) -> Output {
    let out = reflex().args(args).output().expect("run reflex");
    assert!(
        out.status.success(),
        "reflex {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reflex-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A launch file of the repository (`launch/NAME`) with its model paths made
/// absolute, so that a variant written elsewhere still finds them.
pub fn repo_launch_text(name: &str) -> String {
    std::fs::read_to_string(repo().join("launch").join(name))
        .unwrap()
        .replace(
            "\"../policies/",
            &format!("\"{}/policies/", repo().display()),
        )
}

/// `reflex run LAUNCH --sim-clock` for `seconds` without zenoh, logged to `log`;
/// the log's records.
pub fn sim_run_records(
    launch: &Path,
    seconds: &str,
    log: &Path,
) -> Vec<reflex_runtime::log::Record> {
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        seconds,
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    reflex_runtime::log::read_log(log).unwrap().records
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo launch file (launch/sim_arm.toml) with its relative paths (the URDF,
/// the model) made absolute, so a modified copy works from any directory.
pub fn demo_launch_text() -> String {
    let text = std::fs::read_to_string(repo().join("launch/sim_arm.toml")).unwrap();
    text.replace(
        "urdf = \"sim_arm.urdf\"",
        &format!("urdf = {:?}", repo().join("launch/sim_arm.urdf")),
    )
    .replace(
        "../policies/models/",
        &format!("{}/policies/models/", repo().display()),
    )
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("policies/models/test").join(name)
}

pub fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary json")).expect("valid json")
}

/// `reflex run LAUNCH --sim-clock --duration SECONDS` without zenoh, with more
/// arguments (`--seed`, `--set`, ...), and its summary (written to `summary_path`).
pub fn sim_summary(
    launch: &Path,
    seconds: &str,
    more: &[&str],
    summary_path: &Path,
) -> serde_json::Value {
    let mut args = vec![
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        seconds,
        "--set",
        "zenoh.enabled=false",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    run_ok(&args);
    summary(summary_path)
}

/// A `[policy]` table of the analytic flow field (test/rtc_analytic.onnx: H = 6,
/// the arm's joint positions as `state` [1, 3]) sampling `batch` candidates,
/// followed by `more` (its sub-tables, then other tables).
pub fn analytic_flow_policy(batch: usize, more: &str) -> String {
    format!(
        r#"[policy]
kind = "flow"
model = "{model}"
num_steps = 10
batch = {batch}

[[policy.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]

[policy.actions]
horizon = 6
{more}"#,
        model = fixture("rtc_analytic.onnx").display(),
    )
}

/// `reflex run LAUNCH --sim-clock` for half a second without zenoh, expected to
/// fail (at load); its stderr.
pub fn run_fails(launch: &Path) -> String {
    let out = reflex()
        .args([
            "run",
            launch.to_str().unwrap(),
            "--sim-clock",
            "--duration",
            "0.5",
            "--set",
            "zenoh.enabled=false",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{} should not run", launch.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Spawns `reflex` and returns once its stderr has printed a line containing
/// `ready`; the rest of stderr keeps draining in the background.
pub fn spawn_until(args: &[String], ready: &str) -> Child {
    spawn_until_with(reflex(), args, ready)
}

/// [`spawn_until`] with a prepared command (environment, say).
pub fn spawn_until_with(mut command: Command, args: &[String], ready: &str) -> Child {
    let mut child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reflex");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        let mut signalled = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[reflex] {line}");
            if !signalled && line.contains(&ready) {
                let _ = tx.send(());
                signalled = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("reflex did not become ready");
    child
}

/// A zenoh peer that connects to `endpoint` only.
pub fn zenoh_peer(endpoint: &str) -> zenoh::Session {
    use zenoh::Wait;
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", "\"peer\"").unwrap();
    config.insert_json5("listen/endpoints", "[]").unwrap();
    config
        .insert_json5("connect/endpoints", &format!("[\"{endpoint}\"]"))
        .unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    zenoh::open(config).wait().expect("zenoh session")
}

/// A zenoh peer that listens on `endpoint` for reflex to connect to it.
pub fn zenoh_listener(endpoint: &str) -> zenoh::Session {
    use zenoh::Wait;
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", "\"peer\"").unwrap();
    config
        .insert_json5("listen/endpoints", &format!("[\"{endpoint}\"]"))
        .unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    zenoh::open(config).wait().expect("zenoh session")
}

/// The demo launch file with its `[execution]` and `[policy]` replaced by
/// `policy` (a `[policy]` table in the launch-file format) and `replan_after`.
pub fn demo_with_policy(policy: &str, replan_after: usize) -> String {
    let text = demo_launch_text();
    let start = text.find("[execution]").unwrap();
    let end = text.find("[safety]").unwrap();
    format!(
        "{}[execution]\naction_rate_hz = 10.0\nreplan_after = {replan_after}\n\n{policy}\n{}",
        &text[..start],
        &text[end..]
    )
}

/// The embedded launch file's joint limits: (min, max, velocity) per joint.
pub fn sim_arm_limits() -> Vec<(f64, f64, f64)> {
    let launch = reflex::embedded_launch(&[]).unwrap();
    launch
        .config
        .robot
        .joints
        .iter()
        .map(|j| (j.position[0], j.position[1], j.velocity))
        .collect()
}

/// A `[policy]` table of kind `chunk` for a test fixture `model`: the arm's joint
/// positions as `state` [1, 3], then `inputs` (more `[[policy.inputs]]` tables, in
/// the launch-file format), and `horizon` actions.
pub fn chunk_policy(model: &str, inputs: &str, horizon: usize) -> String {
    format!(
        r#"[policy]
kind = "chunk"
model = "{model}"
intra_threads = 1

[[policy.inputs]]
name = "state"
source = "arm.position"
shape = [1, 3]
{inputs}
[policy.actions]
horizon = {horizon}
"#,
        model = fixture(model).display(),
    )
}

/// For every chunk in a run log: the tick it was conditioned on and its first
/// action minus the joint state logged at that tick (what fixtures that add
/// something to the state encode).
pub fn chunk_offsets(log: &Path) -> Vec<(u64, Vec<f64>)> {
    let contents = reflex_runtime::log::read_log(log).unwrap();
    let mut states = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for record in &contents.records {
        match record {
            reflex_runtime::log::Record::Tick(t) => {
                states.insert(t.tick, t.state.positions().to_vec());
            }
            reflex_runtime::log::Record::Chunk { chunk, .. } => {
                let state: &Vec<f64> = &states[&chunk.conditioned_on_tick];
                let offsets = state
                    .iter()
                    .zip(&chunk.actions)
                    .map(|(s, a)| f64::from(*a) - s)
                    .collect();
                out.push((chunk.conditioned_on_tick, offsets));
            }
            _ => {}
        }
    }
    out
}

/// The python of the parity venv (torch, diffusers), made on first use by
/// scripts/parity_venv.sh (`make test` runs it first).
pub fn parity_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/parity_venv.sh"))
        .output()
        .expect("scripts/parity_venv.sh");
    assert!(
        out.status.success(),
        "the parity venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Episodes reached and run by `launch` on the simulated clock, `seeds` x
/// `seconds` of simulated time, with launch-file overrides.
pub fn task_success(
    launch: &str,
    label: &str,
    seeds: std::ops::Range<u64>,
    seconds: u32,
    sets: &[&str],
) -> (usize, usize) {
    let dir = scratch(&format!("task-{label}"));
    let (mut reached, mut total) = (0, 0);
    for seed in seeds {
        let path = dir.join(format!("summary-{seed}.json"));
        let seed = seed.to_string();
        let mut more = vec!["--seed", &seed];
        for set in sets {
            more.extend(["--set", set]);
        }
        let summary = sim_summary(Path::new(launch), &seconds.to_string(), &more, &path);
        let episodes = summary["tasks"][0]["episodes"].as_array().unwrap().clone();
        reached += episodes.iter().filter(|e| e["reached"] == true).count();
        total += episodes.len();
        assert_eq!(summary["inference_errors"].as_u64(), Some(0), "{summary}");
    }
    (reached, total)
}

/// The Wilson score interval of a success rate at 95% confidence (z = 1.96).
pub fn wilson_interval((successes, trials): (usize, usize)) -> (f64, f64) {
    let (k, n, z) = (successes as f64, trials as f64, 1.96f64);
    if trials == 0 {
        return (0.0, 1.0);
    }
    let p = k / n;
    let center = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// A camera-guided sim task over `seeds` x 12 episodes: the 95% lower confidence
/// bound of the success rate must reach `lower_bound`, and the same policy with
/// its camera masked (the negative control: it cannot see the target) must fall
/// below that bound with its upper one. Returns (seeing, blind).
pub fn assert_task_needs_the_camera(
    launch: &str,
    label: &str,
    seeds: std::ops::Range<u64>,
    lower_bound: f64,
) -> ((usize, usize), (usize, usize)) {
    let episodes = 12 * (seeds.end - seeds.start) as usize;
    let seeing = task_success(launch, label, seeds.clone(), 60, &[]);
    let blind = task_success(
        launch,
        &format!("{label}-blind"),
        seeds,
        60,
        &["streams.top.masked=true"],
    );
    let (seeing_low, _) = wilson_interval(seeing);
    let (_, blind_high) = wilson_interval(blind);
    eprintln!(
        "{label}: {seeing:?} reached (95% lower bound {seeing_low:.2}), without the camera \
         {blind:?} (upper bound {blind_high:.2})"
    );
    assert_eq!(seeing.1, episodes);
    assert!(
        seeing_low >= lower_bound,
        "{label} with the camera: {seeing:?}, lower bound {seeing_low:.2} < {lower_bound}"
    );
    assert!(
        blind_high < seeing_low,
        "{label} without the camera must not pass the same check: {blind:?} vs {seeing:?}"
    );
    (seeing, blind)
}

/// The pi0-like fixtures' inputs (`image` 32x32 in [-1, 1] with padding, `state`
/// padded to 8 with quantile statistics) computed from the raw observation by
/// policies/export/observation_reference.py (OpenCV / torch resizing, numpy
/// normalization), for the sampler references; they must equal what reflex fed
/// the model (`reflex_inputs`, its `--dump-inputs`) to float precision.
pub fn reference_inputs(obs: &Path, stats: &Path, out: &Path, reflex_inputs: &Path) -> PathBuf {
    let status = Command::new(parity_python())
        .arg(repo().join("policies/export/observation_reference.py"))
        .arg("--obs")
        .arg(obs)
        .arg("--out")
        .arg(out)
        .args(["--image", "image:32x32:minus_one_one:pad"])
        .arg("--state")
        .arg(format!("state:8:quantile:{}", stats.display()))
        .status()
        .expect("observation_reference.py");
    assert!(status.success(), "observation_reference.py failed");
    for name in ["image", "state"] {
        let file = format!("{name}.npy");
        let (theirs_shape, theirs) = reflex_runtime::npy::read_f64(&out.join(&file)).unwrap();
        let (ours_shape, ours) = reflex_runtime::npy::read_f64(&reflex_inputs.join(&file)).unwrap();
        assert_eq!(theirs_shape, ours_shape, "{name}");
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff < 1e-5,
            "input `{name}`: reflex and the reference differ by {diff:e}"
        );
    }
    out.to_path_buf()
}

/// A V-GPS `[[stages]]` table scoring segments with the value model `model`
/// (a file of policies/models/steering/) on the top camera and the joint
/// positions: the steering launch file's value function.
pub fn vgps_stage(model: &str) -> String {
    format!(
        r#"
[[stages]]
kind = "vgps"
model = "{}"
score = "segment"

[[stages.inputs]]
name = "image"
source = "camera.top"
shape = [1, 3, 32, 32]
image = {{ resize = [32, 32], layout = "nchw", range = "zero_one" }}

[[stages.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]
"#,
        repo()
            .join("policies/models/steering")
            .join(model)
            .display()
    )
}
