//! Remote inference over zenoh: `reflex serve --protocol zenoh` runs the flow
//! policy with guided real-time chunking, and a robot whose policy is
//! `kind = "remote"` drives the simulated arm with it. Under the simulated clock
//! the remote run is the local run, command for command (the request carries
//! the tick, the delay and the committed actions); with the server killed and
//! restarted mid-run the arm holds, the outage is reported, and it resumes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reflex_runtime::log::{Record, read_log};

/// Kills a child process when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `reflex serve LAUNCH --protocol zenoh` on `port`, once it answers.
fn serve(launch: &str, port: u16) -> Reaped {
    let mut child = reflex()
        .args(["serve", launch, "--protocol", "zenoh", "--listen"])
        .arg(format!("tcp/127.0.0.1:{port}"))
        .args(["--set", "serve.status_interval_s=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn reflex serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("zenoh protocol on `reflex/policy`"), "{line}");
    Reaped(child)
}

/// The server's launch file: the flow policy with guided RTC.
fn server_launch() -> String {
    repo()
        .join("launch/sim_arm_flow_rtc.toml")
        .display()
        .to_string()
}

/// launch/sim_arm_remote.toml pointed at `port`, with `edits` (from, to) made.
fn robot_launch(dir: &Path, port: u16, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("launch/sim_arm_remote.toml"))
        .unwrap()
        .replace("tcp/127.0.0.1:7448", &format!("tcp/127.0.0.1:{port}"));
    for (from, to) in edits {
        assert!(text.contains(from), "no {from:?} in the launch file");
        text = text.replace(from, to);
    }
    let path = dir.join(format!("robot-{}.toml", edits.len() * 1000 + text.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// An applied chunk: the tick it was conditioned on, its actions.
type Applied = (u64, Vec<f32>);

/// The applied chunks and every tick's command.
fn chunks_and_commands(records: &[Record]) -> (Vec<Applied>, Vec<Vec<f64>>) {
    let mut chunks = Vec::new();
    let mut commands = Vec::new();
    for record in records {
        match record {
            Record::Chunk {
                accepted: true,
                chunk,
                ..
            } => chunks.push((chunk.conditioned_on_tick, chunk.actions.clone())),
            Record::Tick(tick) => commands.push(tick.command.positions().to_vec()),
            _ => {}
        }
    }
    (chunks, commands)
}

#[test]
fn a_remote_policy_runs_the_local_run_command_for_command() {
    let dir = scratch("remote-equal");
    let port = free_port();
    let _server = serve(&server_launch(), port);

    let local = sim_run_records(
        &repo().join("launch/sim_arm_flow_rtc.toml"),
        "3",
        &dir.join("local.log"),
    );
    let remote = sim_run_records(&robot_launch(&dir, port, &[]), "3", &dir.join("remote.log"));
    let (local_chunks, local_commands) = chunks_and_commands(&local);
    let (remote_chunks, remote_commands) = chunks_and_commands(&remote);
    assert!(local_chunks.len() >= 8, "{} chunks", local_chunks.len());
    // RTC's guidance and frozen prefix ran on the server: every chunk after
    // the first continued a plan the robot sent.
    assert_eq!(remote_chunks.len(), local_chunks.len());
    for ((tick, a), (local_tick, b)) in remote_chunks.iter().zip(&local_chunks) {
        assert_eq!(tick, local_tick);
        assert!(
            a == b,
            "chunk conditioned on tick {tick} differs: {a:?} vs {b:?}"
        );
    }
    assert_eq!(remote_commands.len(), local_commands.len());
    assert!(remote_commands == local_commands, "the commands differ");

    // JPEG images: smaller and lossy, so the chunks differ a little, and the
    // arm still reaches its target.
    let jpeg = robot_launch(
        &dir,
        port,
        &[("images = \"raw\"", "images = \"jpeg\"\njpeg_quality = 90")],
    );
    let summary_path = dir.join("jpeg.json");
    let summary = sim_summary(&jpeg, "3", &[], &summary_path);
    let log = dir.join("jpeg.log");
    let jpeg_records = sim_run_records(&jpeg, "3", &log);
    let (jpeg_chunks, _) = chunks_and_commands(&jpeg_records);
    assert_eq!(summary["inference_errors"], 0, "{summary}");
    assert_eq!(
        summary["tasks"][0]["episodes"][0]["reached"], true,
        "{summary}"
    );
    let largest = jpeg_chunks
        .iter()
        .zip(&local_chunks)
        .flat_map(|((_, a), (_, b))| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    assert!(
        largest > 0.0 && largest < 0.05,
        "JPEG chunks differ from raw ones by {largest} rad at most"
    );
}

#[test]
fn a_server_killed_mid_run_holds_the_arm_then_the_run_resumes() {
    let dir = scratch("remote-restart");
    let port = free_port();
    let server = serve(&server_launch(), port);
    let launch = robot_launch(&dir, port, &[]);
    let (log, summary_path) = (dir.join("run.log"), dir.join("summary.json"));
    let mut run = Reaped(
        reflex()
            .args(["run", launch.to_str().unwrap(), "--duration", "8"])
            .args(["--set", "zenoh.enabled=false", "--log"])
            .arg(&log)
            .arg("--summary-json")
            .arg(&summary_path)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(2500));
    // SIGKILL: no goodbye on the zenoh link; queries in flight time out.
    drop(server);
    std::thread::sleep(Duration::from_millis(1500));
    let _server = serve(&server_launch(), port);
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
    let records = read_log(&log).unwrap().records;
    let (chunks, commands) = chunks_and_commands(&records);
    // The arm held still while the server was gone: the longest run of ticks
    // with an unchanged command.
    let longest_still = commands
        .windows(2)
        .fold((0usize, 0usize), |(run, longest), pair| {
            let run = if pair[0] == pair[1] { run + 1 } else { 0 };
            (run, longest.max(run))
        })
        .1;
    assert!(
        longest_still >= 50,
        "the arm held {longest_still} ticks at most"
    );
    let before = chunks.iter().filter(|(tick, _)| *tick < 200).count();
    // The restart is 4 s after spawning, so past tick 450 of the run at the latest.
    let after = chunks.iter().filter(|(tick, _)| *tick > 450).count();
    assert!(before >= 5, "{before} chunks before the kill");
    assert!(after >= 5, "{after} chunks after the restart");
    for command in &commands {
        assert!(command.iter().all(|v| v.is_finite() && v.abs() <= 2.8));
    }
}

#[test]
fn remote_policy_errors_name_the_field() {
    let dir = scratch("remote-errors");
    let port = free_port();
    // Nobody serves: an error at load, not a robot that holds still.
    let error = run_fails(&robot_launch(&dir, port, &[]));
    assert!(
        error.contains("policy.connect") && error.contains("no reply on `reflex/policy/metadata`"),
        "{error}"
    );
    let _server = serve(&server_launch(), port);
    let edited = |from: &str, to: &str| run_fails(&robot_launch(&dir, port, &[(from, to)]));
    let error = edited("horizon = 10", "horizon = 20");
    assert!(
        error.contains("policy.horizon") && error.contains("the server's chunks have 10 actions"),
        "{error}"
    );
    let error = edited("rate_hz = 100.0", "rate_hz = 50.0");
    assert!(error.contains("runs at Some(100.0) Hz"), "{error}");
    let error = edited("target = \"position\"", "target = \"delta\"");
    assert!(error.contains("execution.target"), "{error}");
    let error = edited("key = \"reflex/policy\"", "key = \"reflex/*\"");
    assert!(error.contains("wildcard"), "{error}");
}

#[test]
fn two_robots_share_one_server() {
    let dir = scratch("remote-shared");
    let port = free_port();
    let _server = serve(&server_launch(), port);
    let launch = robot_launch(&dir, port, &[]);
    let robots: Vec<(Reaped, PathBuf)> = (0..2)
        .map(|i| {
            let summary = dir.join(format!("robot{i}.json"));
            let child = reflex()
                .args(["run", launch.to_str().unwrap(), "--duration", "4"])
                .args(["--set", "zenoh.enabled=false", "--summary-json"])
                .arg(&summary)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            (Reaped(child), summary)
        })
        .collect();
    for (mut robot, summary_path) in robots {
        assert!(robot.0.wait().unwrap().success(), "a robot's run failed");
        let summary = summary(&summary_path);
        assert_eq!(summary["inference_errors"], 0, "{summary}");
        assert_eq!(summary["estop"], false, "{summary}");
        assert!(
            summary["chunks_applied"].as_u64().unwrap() >= 10,
            "{summary}"
        );
    }
}
