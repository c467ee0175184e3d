//! Run logs survive what ends a run badly: kill -9 mid-run, a hang-up, a signal
//! while waiting for the robot; `replay` and `calibrate` refuse edited headers,
//! NaN statistics and logs of different robots with clear errors.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reflex_runtime::control::replay as replay_records;
use reflex_runtime::launch::JointConfig;
use reflex_runtime::log::{
    LogEnd, LogHeader, LogReader, LogWriter, Record, TickRecord, parse_log, read_log,
};
use reflex_runtime::types::{JointCommand, JointState};
use reflex_zenoh::wire;
use zenoh::Wait;

/// Spawns `reflex` with stderr collected (and echoed) in the background.
fn spawn(args: &[String]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = reflex()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reflex");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[reflex] {line}");
            collected.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

/// Waits for the child to exit, killing it after `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits until the log's header is on disk (written when the log is created) and,
/// with `ticks`, until the recorder has flushed a tick.
fn wait_for_log(path: &Path, ticks: bool) {
    let start = Instant::now();
    loop {
        let ready = read_log(path)
            .is_ok_and(|log| !ticks || log.records.iter().any(|r| matches!(r, Record::Tick(_))));
        if ready {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never showed {}",
            path.display(),
            if ticks { "a tick" } else { "a header" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

fn replay(log: &Path) -> Output {
    reflex()
        .args(["replay", log.to_str().unwrap()])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[test]
fn kill_9_mid_run_leaves_a_log_that_replays_bit_for_bit_up_to_the_kill() {
    let dir = scratch("crash-kill9");
    let log = dir.join("run.log");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        "run".into(),
        "--set".into(),
        format!("zenoh.listen=[\"{endpoint}\"]"),
        "--log".into(),
        log.display().to_string(),
    ];
    let mut child = spawn_until(&args, "reflex: zenoh");
    // An independent subscriber notes when each command was published.
    let session = zenoh_peer(&endpoint);
    let received: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let subscriber = {
        let received = received.clone();
        session
            .declare_subscriber("reflex/sim_arm/joint_commands")
            .callback(move |sample| {
                if let Ok(command) = wire::decode_command(&sample.payload().to_bytes()) {
                    received.lock().unwrap().push((Instant::now(), command.seq));
                }
            })
            .wait()
            .unwrap()
    };
    let start = Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "no commands");
        std::thread::sleep(Duration::from_millis(10));
    }
    let delay = Duration::from_millis(1000 + random_u64() % 2000);
    eprintln!("killing reflex {delay:?} after its first command");
    std::thread::sleep(delay);
    let killed_at = Instant::now();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(subscriber);

    let published_200ms_before = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at + Duration::from_millis(200) <= killed_at)
        .map(|(_, seq)| *seq)
        .max()
        .expect("commands published before the kill");
    let contents = read_log(&log).unwrap();
    let LogEnd::Truncated { .. } = contents.report.end else {
        panic!("a killed run has no End record: {:?}", contents.report)
    };
    assert_eq!(contents.report.corrupt_count, 0, "{:?}", contents.report);
    let last_logged = contents
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Tick(t) => Some(t.command.seq),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert!(
        last_logged >= published_200ms_before,
        "the log ends at command {last_logged}, but command {published_200ms_before} \
         was published 200 ms before the kill"
    );

    let out = replay(&log);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("bit-identical"), "{stdout}");
    assert!(stdout.contains("without an End record"), "{stdout}");
}

/// SIGHUP and SIGQUIT end a run like SIGTERM: the arm is brought to rest, the
/// summary printed, the log closed.
#[test]
fn hangup_and_quit_end_a_run_cleanly() {
    let dir = scratch("crash-hup");
    for (name, sig) in [("hup", libc::SIGHUP), ("quit", libc::SIGQUIT)] {
        let log = dir.join(format!("{name}.log"));
        let args: Vec<String> = vec![
            "run".into(),
            "--set".into(),
            "zenoh.enabled=false".into(),
            "--log".into(),
            log.display().to_string(),
        ];
        let (mut child, _) = spawn(&args);
        // Ticks are reaching the file: the loop runs.
        wait_for_log(&log, true);
        signal(&child, sig);
        let status = wait_at_most(&mut child, Duration::from_secs(30)).expect("the run ended");
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
        assert!(status.success(), "{name}: {status:?}\n{stdout}");
        assert!(stdout.contains("reflex run summary"), "{name}: {stdout}");
        assert!(stdout.contains("interrupted"), "{name}: {stdout}");
        let contents = read_log(&log).unwrap();
        assert!(contents.report.is_clean(), "{name}: {:?}", contents.report);
        assert!(
            contents
                .records
                .iter()
                .any(|r| matches!(r, Record::Estop { .. })),
            "{name}: the stop is logged"
        );
        let out = replay(&log);
        assert!(out.status.success(), "{name}: {}", text(&out.stdout));
    }
}

#[test]
fn sigterm_while_waiting_for_the_first_state_ends_promptly_with_the_log_closed() {
    let dir = scratch("crash-startup");
    let log = dir.join("wait.log");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        "run".into(),
        "launch/zenoh_arm.toml".into(),
        "--set".into(),
        format!("zenoh.listen=[\"{endpoint}\"]"),
        "--set".into(),
        "control.startup_timeout_ms=600000".into(),
        "--log".into(),
        log.display().to_string(),
    ];
    let (mut child, stderr) = spawn(&args);
    // The log exists once start-up is past the model load; the robot never answers.
    wait_for_log(&log, false);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let status = wait_at_most(&mut child, Duration::from_secs(20))
        .expect("SIGTERM ended the wait for the robot (startup_timeout_ms is 10 minutes)");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    std::thread::sleep(Duration::from_millis(100)); // the stderr reader catches up
    let stderr = stderr.lock().unwrap().join("\n");
    assert!(
        stderr.contains("SIGTERM while waiting for the first joint state"),
        "{stderr}"
    );
    let contents = read_log(&log).unwrap();
    assert_eq!(
        contents.report.end,
        LogEnd::Complete { ticks: 0 },
        "{:?}",
        contents.report
    );
}

fn joint(name: &str) -> JointConfig {
    JointConfig {
        name: name.into(),
        position: [-2.0, 2.0],
        velocity: 1.0,
        acceleration: 5.0,
        jerk: None,
    }
}

fn header(joints: &[&str]) -> LogHeader {
    LogHeader {
        reflex_version: "test".into(),
        clock: "sim".into(),
        seed: 0,
        rate_hz: 100.0,
        joints: joints.iter().map(|n| joint(n)).collect(),
        max_state_age_ms: 50.0,
        estop_after_stale_ms: 200.0,
        horizon: 10,
        action_rate_hz: 10.0,
        replan_after: 5,
        interpolation: Default::default(),
        strategy: "replace".into(),
        strategy_params: serde_json::Value::Null,
        safety: Default::default(),
        urdf: None,
        tip_link: None,
        gripper: None,
        reset: None,
        launch: String::new(),
        models: Vec::new(),
    }
}

/// A log of ticks whose measured positions are `states` (commands: half of them).
fn write_log(path: &Path, joints: &[&str], states: &[Vec<f64>]) {
    let mut writer = LogWriter::new(Vec::new(), &header(joints)).unwrap();
    for (i, values) in states.iter().enumerate() {
        let mut state = JointState::empty(joints.len());
        let mut command = JointCommand::empty(joints.len());
        state.seq = i as u64 + 1;
        command.seq = i as u64 + 1;
        for (j, v) in values.iter().enumerate() {
            state.position[j] = *v;
            command.position[j] = v / 2.0;
        }
        writer
            .write(&Record::Tick(TickRecord {
                tick: i as u64,
                now_ns: i as u64 * 10_000_000,
                state,
                command,
                flags: 0,
            }))
            .unwrap();
    }
    writer
        .write(&Record::End {
            ticks: states.len() as u64,
        })
        .unwrap();
    std::fs::write(path, writer.into_inner()).unwrap();
}

fn norm_stats(logs: &[&PathBuf], out: &Path) -> Output {
    let mut args = vec!["calibrate".to_string(), "norm-stats".into()];
    args.extend(logs.iter().map(|p| p.display().to_string()));
    args.extend(["--out".into(), out.display().to_string()]);
    reflex().args(&args).output().unwrap()
}

#[test]
fn norm_stats_skip_non_finite_ticks_and_refuse_when_none_is_left() {
    let dir = scratch("crash-normstats");
    let log = dir.join("nan.log");
    let out = dir.join("norm_stats.json");
    write_log(
        &log,
        &["a", "b"],
        &[
            vec![0.0, 1.0],
            vec![f64::NAN, 1.0],
            vec![1.0, f64::INFINITY],
            vec![2.0, 3.0],
        ],
    );
    let run = norm_stats(&[&log], &out);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", text(&run.stderr));
    assert!(stdout.contains("skipped 2 ticks"), "{stdout}");
    let json = std::fs::read_to_string(&out).unwrap();
    assert!(!json.contains("null"), "{json}");
    // The file reflex writes is one reflex reads.
    let stats = reflex_calibration::NormStats::load(&out).unwrap();
    assert_eq!(
        stats.entries["state"].mean.as_deref(),
        Some(&[1.0f32, 2.0][..])
    );

    let all_nan = dir.join("all_nan.log");
    write_log(&all_nan, &["a", "b"], &vec![vec![f64::NAN, 0.0]; 3]);
    let refused = dir.join("refused.json");
    let run = norm_stats(&[&all_nan], &refused);
    let stderr = text(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("no ticks with finite joint values"),
        "{stderr}"
    );
    assert!(!refused.exists(), "nothing written");
}

#[test]
fn norm_stats_refuse_to_merge_logs_of_different_robots() {
    let dir = scratch("crash-mixed");
    let (arm, other, renamed) = (
        dir.join("arm.log"),
        dir.join("other.log"),
        dir.join("renamed.log"),
    );
    write_log(&arm, &["a", "b"], &[vec![0.0, 1.0]]);
    write_log(&other, &["a", "b", "c"], &[vec![0.0, 1.0, 2.0]]);
    write_log(&renamed, &["a", "x"], &[vec![0.0, 1.0]]);
    for second in [&other, &renamed] {
        let run = norm_stats(&[&arm, second], &dir.join("out.json"));
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{stderr}");
        for named in [&arm, second] {
            assert!(
                stderr.contains(&named.display().to_string()),
                "names {}: {stderr}",
                named.display()
            );
        }
        assert!(stderr.contains("different robots"), "{stderr}");
    }
    assert!(!dir.join("out.json").exists());
    let same = norm_stats(&[&arm, &arm], &dir.join("same.json"));
    assert!(same.status.success(), "{}", text(&same.stderr));
}

/// The header as an editor would leave it, framed by an encoder written from the
/// documented layout (independent of the writer), with a valid CRC.
fn forged_log(path: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let mut value = serde_json::to_value(header(&["a", "b"])).unwrap();
    edit(&mut value);
    let mut body = vec![0u8];
    body.extend_from_slice(&serde_json::to_vec(&value).unwrap());
    let length = (body.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&length);
    crc.update(&body);
    let mut bytes = b"REFLEXLG".to_vec();
    bytes.extend_from_slice(&reflex_runtime::log::VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0xF5, b'R', b'F', b'X']);
    bytes.extend_from_slice(&length);
    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
    bytes.extend_from_slice(&body);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn replay_and_calibrate_reject_edited_headers_with_a_clear_error() {
    let dir = scratch("crash-header");
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 6] = [
        ("`rate_hz`", |h| h["rate_hz"] = 0.0.into()),
        ("`joints[0].velocity`", |h| {
            h["joints"][0]["velocity"] = (-1.0).into()
        }),
        ("`joints[1].position`", |h| {
            h["joints"][1]["position"] = serde_json::json!([3.0, -3.0])
        }),
        ("need 1..=32 joints, found 40", |h| {
            let joint = h["joints"][0].clone();
            h["joints"] = serde_json::Value::Array(vec![joint; 40]);
        }),
        ("`horizon`", |h| h["horizon"] = (1u64 << 63).into()),
        ("expected f64", |h| {
            h["max_state_age_ms"] = serde_json::Value::Null
        }),
    ];
    // The forger is right: an unedited header replays (0 ticks, exit 1, no error).
    let good = dir.join("good.log");
    forged_log(&good, |_| {});
    let out = replay(&good);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no ticks"),
        "{}",
        text(&out.stdout)
    );

    for (i, (expected, edit)) in cases.into_iter().enumerate() {
        let log = dir.join(format!("edited{i}.log"));
        forged_log(&log, edit);
        let out = replay(&log);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}");
        assert!(
            stderr.contains("header") && stderr.contains(expected),
            "{expected}: {stderr}"
        );
        let out = norm_stats(&[&log], &dir.join("n.json"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// A real run's log cut at every byte: every cut that keeps the header reads the
/// whole records before the cut, and replays them bit for bit.
#[test]
fn a_real_log_cut_at_every_byte_replays_what_it_holds() {
    let dir = scratch("crash-every-byte");
    let log = dir.join("run.log");
    run_ok(&[
        "run",
        "--sim-clock",
        "--duration",
        "0.3",
        "--set",
        "zenoh.enabled=false",
        // A chunk every 10 ticks, so a short log holds several.
        "--set",
        "execution.replan_after=1",
        "--log",
        log.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&log).unwrap();
    let full = parse_log(&bytes).unwrap();
    assert!(full.report.is_clean(), "{:?}", full.report);
    let chunks = full
        .records
        .iter()
        .filter(|r| matches!(r, Record::Chunk { .. }))
        .count();
    assert!(chunks >= 2, "a log with chunks to replay: {chunks}");
    // Replay of the first k records, computed once per k.
    let mut replayed = vec![None; full.records.len() + 1];
    let mut readable = 0;
    for cut in 0..=bytes.len() {
        let Ok(mut reader) = LogReader::new(&bytes[..cut]) else {
            assert!(readable == 0, "cut at {cut}: a longer prefix was readable");
            continue;
        };
        readable += 1;
        let mut k = 0;
        while let Some(record) = reader.next_record() {
            assert_eq!(record, full.records[k], "cut at {cut}, record {k}");
            k += 1;
        }
        let report = reader.report();
        assert_eq!(report.corrupt_count, 0, "cut at {cut}");
        assert_eq!(cut == bytes.len(), report.is_clean(), "cut at {cut}");
        let mismatches = replayed[k].get_or_insert_with(|| {
            let report = replay_records(&full.header, &full.records[..k]);
            (report.mismatches, report.first)
        });
        assert_eq!(mismatches.0, 0, "cut at {cut}: {:?}", mismatches.1);
    }
    // Every cut past the header frame (the launch text is most of it) is readable.
    assert!(
        readable > bytes.len() / 2,
        "{readable} of {} cuts",
        bytes.len()
    );
}

#[test]
fn replay_says_where_a_cut_log_ends_and_refuses_devices() {
    let dir = scratch("crash-cut");
    let log = dir.join("short.log");
    let out = replay(Path::new("/dev/zero"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("character device"),
        "{}",
        text(&out.stderr)
    );

    // A real run's log cut in the middle of a frame.
    run_ok(&[
        "run",
        "--sim-clock",
        "--duration",
        "1",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.truncate(bytes.len() * 2 / 3);
    std::fs::write(&log, &bytes).unwrap();
    let out = replay(&log);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("bit-identical"), "{stdout}");
    assert!(stdout.contains("without an End record"), "{stdout}");
    // Cut in a frame's body or in its 12-byte header, depending on the sizes.
    assert!(
        stdout.contains("present before the end of the log") || stdout.contains("header bytes"),
        "{stdout}"
    );

    // A corrupt frame in the middle: reported, replay stops there.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    let out = replay(&log);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("corrupt frame at byte"), "{stdout}");
    assert!(
        stdout.contains("replay stopped at the corrupt frame"),
        "{stdout}"
    );
    assert!(!stdout.contains("DIFFERENT"), "{stdout}");
}

#[test]
fn a_log_path_that_is_not_a_regular_file_is_refused_before_the_run() {
    let run = Command::new(env!("CARGO_BIN_EXE_reflex"))
        .current_dir(repo())
        .args([
            "run",
            "--sim-clock",
            "--duration",
            "1",
            "--set",
            "zenoh.enabled=false",
            "--log",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}
