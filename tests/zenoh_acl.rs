//! Operator authority over zenoh with access control (issue 9): a CA and client
//! certificates made in the test, the shipped `launch/examples/zenoh_acl.json5` with
//! its certificate paths replaced, the real binary, and mTLS peers (over QUIC) named `robot`,
//! `operator` and `intruder` by their certificates.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use reflex_runtime::JointCommand;
use reflex_runtime::types::JointState;
use reflex_zenoh::wire;
use serde_json::Value;
use zenoh::Wait;

const EXAMPLE: &str = "launch/examples/zenoh_acl.json5";
/// Where the example expects its certificates.
const PLACEHOLDER_DIR: &str = "/etc/reflex/tls/";

/// Writes `ca.pem` and, for reflex and each client, `<name>.pem` and `<name>.key`
/// (certificates signed by the CA, with `name` as their common name).
fn write_certificates(dir: &Path, clients: &[&str]) {
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "reflex test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let server = (
        "reflex",
        vec!["127.0.0.1".to_string(), "localhost".to_string()],
    );
    let clients = clients.iter().map(|name| (*name, Vec::new()));
    for (name, alt_names) in std::iter::once(server).chain(clients) {
        let mut params = CertificateParams::new(alt_names).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// The shipped example config with its certificates in `dir`.
fn write_acl_config(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(repo().join(EXAMPLE)).unwrap();
    assert!(
        example.contains(PLACEHOLDER_DIR),
        "{EXAMPLE} names its certificates"
    );
    let config = example.replace(PLACEHOLDER_DIR, &format!("{}/", dir.display()));
    let path = dir.join("zenoh_acl.json5");
    std::fs::write(&path, config).unwrap();
    path
}

/// A zenoh peer that connects to `endpoint` (QUIC) with the client certificate `name`.
fn mtls_peer(endpoint: &str, certs: &Path, name: &str) -> zenoh::Session {
    let quoted = |path: PathBuf| serde_json::to_string(&path.display().to_string()).unwrap();
    let mut config = zenoh::Config::default();
    for (key, value) in [
        ("mode", "\"peer\"".to_string()),
        ("listen/endpoints", "[]".to_string()),
        ("connect/endpoints", format!("[\"{endpoint}\"]")),
        ("scouting/multicast/enabled", "false".to_string()),
        (
            "transport/link/tls/root_ca_certificate",
            quoted(certs.join("ca.pem")),
        ),
        (
            "transport/link/tls/connect_certificate",
            quoted(certs.join(format!("{name}.pem"))),
        ),
        (
            "transport/link/tls/connect_private_key",
            quoted(certs.join(format!("{name}.key"))),
        ),
        ("transport/link/tls/enable_mtls", "true".to_string()),
    ] {
        config.insert_json5(key, &value).unwrap();
    }
    zenoh::open(config).wait().expect("mTLS zenoh session")
}

/// Publishes joint states at `position` every 5 ms, sequence numbers from `first_seq`.
struct StatePublisher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatePublisher {
    fn start(session: &zenoh::Session, position: [f64; 3], first_seq: u64) -> Self {
        let publisher = session
            .declare_publisher("reflex/zarm/joint_states")
            .wait()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut state = JointState::empty(3);
                state.epoch = 1;
                state.seq = first_seq;
                state.position[..3].copy_from_slice(&position);
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    state.seq += 1;
                    wire::encode_state(&state, wire::unix_ns(), &mut buf);
                    let _ = publisher.put(buf.clone()).wait();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StatePublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keeps what a subscriber hears, decoded by `decode`.
fn listen<T: Send + 'static>(
    session: &zenoh::Session,
    key: &str,
    decode: impl Fn(&[u8]) -> T + Send + Sync + 'static,
) -> (Arc<Mutex<Vec<T>>>, zenoh::pubsub::Subscriber<()>) {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let subscriber = {
        let heard = heard.clone();
        session
            .declare_subscriber(key)
            .callback(move |s| heard.lock().unwrap().push(decode(&s.payload().to_bytes())))
            .wait()
            .unwrap()
    };
    (heard, subscriber)
}

/// Waits until the newest status satisfies `done`; panics naming `what` after 10 s.
fn wait_for_status(status: &Mutex<Vec<Value>>, what: &str, done: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let latest = status.lock().unwrap().last().cloned();
        if latest.as_ref().is_some_and(&done) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}; last status: {latest:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `reflex run LAUNCH` for 10 s with the ACL config, re-arm over zenoh on,
/// status at 20 Hz, and `more` arguments; its endpoint and the child.
fn start_acl_run(dir: &Path, launch: &str, more: &[&str]) -> (String, Child) {
    write_certificates(dir, &["operator", "robot", "intruder"]);
    let acl = write_acl_config(dir);
    let port = free_port();
    // QUIC, not `tls/`: zenoh-link-tls 1.10 races on its stream (eclipse-zenoh/zenoh#2557).
    let endpoint = format!("quic/127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "run",
        launch,
        "--duration",
        "10",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--set",
        &format!("zenoh.config_file={}", serde_json::to_string(&acl).unwrap()),
        "--set",
        "safety.operator.zenoh_rearm=true",
        "--set",
        "zenoh.status_hz=20",
        // What is tested is who may do what; a starved state publisher on a loaded
        // machine must not latch the stop by staleness.
        "--set",
        "safety.estop_after_stale_ms=2000",
    ]
    .map(String::from)
    .to_vec();
    args.extend(more.iter().map(|a| a.to_string()));
    let mut run = reflex();
    run.env("XDG_RUNTIME_DIR", dir);
    let child = spawn_until_with(run, &args, "reflex: zenoh");
    (endpoint, child)
}

#[test]
fn with_the_acl_only_the_operator_rearms_and_only_the_robot_drives() {
    let dir = scratch("zenoh-acl");
    let summary_path = dir.join("summary.json");
    let (endpoint, mut child) = start_acl_run(
        &dir,
        "launch/zenoh_arm.toml",
        &["--summary-json", summary_path.to_str().unwrap()],
    );

    // The robot publishes where it is and listens to the commands.
    let robot = mtls_peer(&endpoint, &dir, "robot");
    let (commands, _commands_sub) = listen(&robot, "reflex/zarm/joint_commands", |b| {
        wire::decode_command(b).expect("wire format")
    });
    let robot_states = StatePublisher::start(&robot, [0.1, 0.2, 0.3], 0);
    // The intruder holds a valid certificate from the same CA, but the ACL names
    // it nowhere. Its states lie about joint 0 with newer sequence numbers: were
    // they taken, the robot's own would be refused as old and the command would
    // follow joint 0 to 1.5.
    let intruder = mtls_peer(&endpoint, &dir, "intruder");
    let intruder_states = StatePublisher::start(&intruder, [1.5, 0.2, 0.3], 1_000_000);
    let operator = mtls_peer(&endpoint, &dir, "operator");
    let (status, _status_sub) = listen(&operator, "reflex/zarm/status", |b| {
        serde_json::from_slice::<Value>(b).expect("status JSON")
    });

    wait_for_status(&status, "the run to start", |s| {
        s["tick"].as_u64() > Some(50) && s["estop"] == false
    });
    // Stop is open to everyone: the intruder's stop works (which also shows its
    // session is connected and heard).
    intruder
        .put("reflex/zarm/control/estop", "estop")
        .wait()
        .unwrap();
    wait_for_status(&status, "the intruder's stop to latch", |s| {
        s["estop"] == true
    });
    for _ in 0..20 {
        intruder.put("reflex/zarm/control", "rearm").wait().unwrap();
        intruder
            .put("reflex/zarm/control", "resume")
            .wait()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    {
        let latest = status.lock().unwrap().last().cloned().unwrap();
        assert_eq!(latest["estop"], true, "intruder re-armed: {latest}");
        assert_eq!(latest["hold"], false, "intruder re-armed: {latest}");
        // Not even refused: the requests never reached the safety filter.
        assert!(latest["last_refusal"].is_null(), "{latest}");
    }
    operator.put("reflex/zarm/control", "rearm").wait().unwrap();
    wait_for_status(&status, "the operator's re-arm", |s| {
        s["estop"] == false && s["hold"] == true
    });
    operator
        .put("reflex/zarm/control", "resume")
        .wait()
        .unwrap();
    wait_for_status(&status, "the operator's resume", |s| {
        s["estop"] == false && s["hold"] == false
    });

    assert!(child.wait().unwrap().success());
    drop((robot_states, intruder_states));
    let summary = summary(&dir.join("summary.json"));
    assert_eq!(summary["final_state"], "running", "{summary}");
    assert_eq!(summary["estop_latches"], 1, "{summary}");
    assert_eq!(summary["refusals"], 0, "{summary}");
    assert_eq!(summary["invalid_states"], 0, "{summary}");
    let commands: Vec<JointCommand> = commands.lock().unwrap().clone();
    assert!(commands.len() > 100, "{} commands heard", commands.len());
    for c in &commands {
        assert!(
            (c.position[0] - 0.1).abs() < 1e-6,
            "the command followed a state that was not the robot's: {c:?}"
        );
    }
}

/// Steering switches under re-arm's authority: with `zenoh_rearm` and the ACL,
/// the operator's `steer vgps off` on `control` stops V-GPS from the next
/// inference; the intruder's (the ACL names it nowhere) never arrives.
#[test]
fn only_the_operator_switches_steering_over_zenoh() {
    let dir = scratch("zenoh-steer");
    // The zenoh arm driven by a flow policy sampling 4 candidates, V-GPS picking.
    let arm = std::fs::read_to_string(repo().join("launch/zenoh_arm.toml")).unwrap();
    let policy_at = arm.find("\n[policy]").unwrap();
    let safety_at = arm.find("\n[safety]").unwrap();
    let stage = format!(
        "\n[[stages]]\nkind = \"vgps\"\nmodel = \"{}\"\n\n[[stages.inputs]]\nname = \"state\"\n\
         source = \"state.joint_positions\"\nshape = [1, 3]\n",
        fixture("value_reach.onnx").display()
    );
    let text = format!(
        "{}\n{}{stage}{}",
        &arm[..policy_at],
        analytic_flow_policy(4, ""),
        &arm[safety_at..]
    );
    let launch = dir.join("zenoh_steer.toml");
    std::fs::write(&launch, text).unwrap();
    // A chunk every action period: ten scored chunks a second.
    let (endpoint, mut child) = start_acl_run(
        &dir,
        launch.to_str().unwrap(),
        &["--set", "execution.replan_after=1"],
    );
    let robot = mtls_peer(&endpoint, &dir, "robot");
    let robot_states = StatePublisher::start(&robot, [0.1, 0.2, 0.3], 0);
    let intruder = mtls_peer(&endpoint, &dir, "intruder");
    let operator = mtls_peer(&endpoint, &dir, "operator");
    let (status, _status_sub) = listen(&operator, "reflex/zarm/status", |b| {
        serde_json::from_slice::<Value>(b).expect("status JSON")
    });
    let scored = |status: &Mutex<Vec<Value>>| {
        let latest = status.lock().unwrap().last().cloned().unwrap();
        latest["steering"]["scored"].as_u64().unwrap()
    };
    wait_for_status(&status, "V-GPS to score chunks", |s| {
        s["steering"]["scored"].as_u64() > Some(3)
    });
    for _ in 0..10 {
        intruder
            .put("reflex/zarm/control", "steer vgps off")
            .wait()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = scored(&status);
    std::thread::sleep(Duration::from_millis(1500));
    let after = scored(&status);
    assert!(
        after >= before + 5,
        "the intruder switched V-GPS off: {before} -> {after}"
    );

    operator
        .put("reflex/zarm/control", "steer vgps off")
        .wait()
        .unwrap();
    // One chunk may already be in flight.
    std::thread::sleep(Duration::from_millis(1000));
    let off = scored(&status);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        scored(&status) <= off + 1,
        "V-GPS still scores after the operator's off"
    );
    operator
        .put("reflex/zarm/control", "steer vgps on")
        .wait()
        .unwrap();
    wait_for_status(&status, "V-GPS back on", |s| {
        s["steering"]["scored"].as_u64() > Some(off + 3)
    });
    assert!(child.wait().unwrap().success());
    drop(robot_states);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Puts `model` on the policy's model key with `attachment` (None: without one).
fn push_model(session: &zenoh::Session, model: &[u8], attachment: Option<String>) {
    let put = session.put("reflex/zarm/models/policy", model.to_vec());
    match attachment {
        Some(a) => put.attachment(a).wait().unwrap(),
        None => put.wait().unwrap(),
    }
}

/// Waits for the `n`th result message (1-based) and returns it.
fn wait_for_result(results: &Mutex<Vec<Value>>, n: usize, what: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(result) = results.lock().unwrap().get(n - 1) {
            return result.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no result for {what} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pushed_models_are_checked_and_only_a_good_one_from_the_learner_is_swapped_in() {
    let dir = scratch("zenoh-models");
    write_certificates(&dir, &["operator", "robot", "learner", "intruder"]);
    let acl = write_acl_config(&dir);
    let endpoint = format!("quic/127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "run",
        "launch/zenoh_arm.toml",
        "--duration",
        "14",
        "--set",
        &format!("zenoh.listen=[\"{endpoint}\"]"),
        "--set",
        &format!("zenoh.config_file={}", serde_json::to_string(&acl).unwrap()),
        "--set",
        "zenoh.model_updates=true",
        "--set",
        "zenoh.max_model_bytes=65536",
        "--set",
        "zenoh.status_hz=20",
        "--set",
        "safety.estop_after_stale_ms=2000",
        "--summary-json",
        dir.join("summary.json").to_str().unwrap(),
        "--log",
        dir.join("run.log").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let mut run = reflex();
    run.env("XDG_RUNTIME_DIR", &dir);
    let mut child = spawn_until_with(run, &args, "accepting policy models");

    let robot = mtls_peer(&endpoint, &dir, "robot");
    let (commands, _commands_sub) = listen(&robot, "reflex/zarm/joint_commands", |b| {
        wire::decode_command(b).expect("wire format")
    });
    let robot_states = StatePublisher::start(&robot, [0.1, 0.2, 0.3], 0);
    let (status, _status_sub) = listen(&robot, "reflex/zarm/status", |b| {
        serde_json::from_slice::<Value>(b).expect("status JSON")
    });
    let learner = mtls_peer(&endpoint, &dir, "learner");
    let (results, _results_sub) = listen(&learner, "reflex/zarm/models/policy/result", |b| {
        serde_json::from_slice::<Value>(b).expect("result JSON")
    });
    let intruder = mtls_peer(&endpoint, &dir, "intruder");
    wait_for_status(&status, "the run to start", |s| {
        s["tick"].as_u64() > Some(50) && s["model_version"] == 0
    });

    let good = std::fs::read(repo().join("policies/models/test/chunk_state_offset.onnx")).unwrap();
    let wrong_input =
        std::fs::read(repo().join("policies/models/test/chunk_wrong_input.onnx")).unwrap();
    let hash = |bytes: &[u8]| Some(format!("{{\"sha256\": \"{}\"}}", sha256_hex(bytes)));
    let garbage = b"this is not an ONNX model".to_vec();
    let oversized = vec![7u8; 70_000];
    let refused: [(&str, &[u8], Option<String>, &str); 5] = [
        (
            "an oversized push",
            &oversized,
            hash(&oversized),
            "over zenoh.max_model_bytes",
        ),
        ("garbage", &garbage, hash(&garbage), ""),
        (
            "a wrong hash",
            &good,
            hash(&garbage),
            "content hash mismatch",
        ),
        ("no hash", &good, None, "no content hash"),
        (
            "a model with another signature",
            &wrong_input,
            hash(&wrong_input),
            "state",
        ),
    ];
    for (n, (what, bytes, attachment, says)) in refused.into_iter().enumerate() {
        push_model(&learner, bytes, attachment);
        let result = wait_for_result(&results, n + 1, what);
        assert_eq!(result["accepted"], false, "{what}: {result}");
        let error = result["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty() && error.contains(says),
            "{what}: {result}"
        );
    }
    // A certificate the ACL does not name for models: its push never arrives.
    push_model(&intruder, &good, hash(&good));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        results.lock().unwrap().len(),
        5,
        "the intruder's push was heard"
    );
    {
        let latest = status.lock().unwrap().last().cloned().unwrap();
        assert_eq!(latest["model_version"], 0, "{latest}");
        assert_eq!(latest["estop"], false, "{latest}");
    }
    let before_swap = commands.lock().unwrap().len();

    push_model(&learner, &good, hash(&good));
    let result = wait_for_result(&results, 6, "the good model");
    assert_eq!(result["accepted"], true, "{result}");
    assert_eq!(result["version"], 1, "{result}");
    assert_eq!(result["sha256"], sha256_hex(&good), "{result}");
    wait_for_status(&status, "the swap", |s| s["model_version"] == 1);
    std::thread::sleep(Duration::from_millis(1000));

    assert!(child.wait().unwrap().success());
    drop(robot_states);
    let summary = summary(&dir.join("summary.json"));
    assert_eq!(summary["final_state"], "running", "{summary}");
    assert_eq!(summary["model_version"], 1, "{summary}");
    assert_eq!(summary["model_swaps"], 1, "{summary}");
    assert_eq!(summary["model_updates"]["accepted"], 1, "{summary}");
    assert_eq!(summary["model_updates"]["refused"], 5, "{summary}");
    assert_eq!(summary["estop_latches"], 0, "{summary}");
    let commands: Vec<JointCommand> = commands.lock().unwrap().clone();
    // The launch file's model held the state until the swap...
    for c in &commands[..before_swap] {
        assert!((c.position[0] - 0.1).abs() < 1e-6, "{c:?}");
    }
    // ...then the pushed one moved joint 0 by its offset, without a jump (the
    // safety filter's velocity limit: 1 rad/s at 100 Hz).
    for pair in commands.windows(2) {
        assert!((pair[1].position[0] - pair[0].position[0]).abs() <= 0.01 + 1e-9);
    }
    let last = commands.last().unwrap();
    assert!((last.position[0] - 0.15).abs() < 1e-5, "{last:?}");
    // The swap is in the log (each chunk's model version): replay flushes where
    // the run did.
    let replay = reflex()
        .args(["replay", dir.join("run.log").to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{said}");
    assert!(said.contains("bit-identical"), "{said}");
}

#[test]
fn zenoh_rearm_needs_access_control_and_authentication_in_the_config_file() {
    let dir = scratch("zenoh-acl-check");
    let check = |config: &str| {
        let path = dir.join("zenoh.json5");
        std::fs::write(&path, config).unwrap();
        let out = reflex()
            .args(["check", "launch/zenoh_arm.toml"])
            .args(["--set", "safety.operator.zenoh_rearm=true"])
            .args([
                "--set",
                &format!(
                    "zenoh.config_file={}",
                    serde_json::to_string(&path).unwrap()
                ),
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("{}");
    assert!(!ok);
    assert!(err.contains("safety.operator.zenoh_rearm"), "{err}");
    assert!(err.contains("access_control.enabled: true"), "{err}");
    assert!(err.contains("enable_mtls"), "{err}");
    assert!(err.contains("usrpwd"), "{err}");

    // An ACL whose default is "allow" cannot keep `control` for the operator.
    let (ok, err) = check(
        r#"{ access_control: { enabled: true, default_permission: "allow" },
             transport: { auth: { usrpwd: { dictionary_file: "/etc/reflex/users.txt" } } } }"#,
    );
    assert!(!ok);
    assert!(err.contains("default_permission"), "{err}");
    assert!(!err.contains("usrpwd"), "authentication is there: {err}");

    // Access control without any authentication: anyone could claim a name.
    let (ok, err) = check(r#"{ access_control: { enabled: true, default_permission: "deny" } }"#);
    assert!(!ok);
    assert!(err.contains("enable_mtls"), "{err}");
    assert!(!err.contains("access_control.enabled"), "{err}");

    // The shipped example passes as it is (user/password would too).
    let example = std::fs::read_to_string(repo().join(EXAMPLE)).unwrap();
    let (ok, err) = check(&example);
    assert!(ok, "{err}");
    let (ok, err) = check(
        r#"{ access_control: { enabled: true, default_permission: "deny" },
             transport: { auth: { usrpwd: { dictionary_file: "/etc/reflex/users.txt" } } } }"#,
    );
    assert!(ok, "{err}");

    // A config file that does not exist is named.
    let out = reflex()
        .args(["check", "launch/zenoh_arm.toml"])
        .args(["--set", "safety.operator.zenoh_rearm=true"])
        .args(["--set", "zenoh.config_file=\"no/such/zenoh.json5\""])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("zenoh.config_file") && err.contains("no/such/zenoh.json5"),
        "{err}"
    );
}
