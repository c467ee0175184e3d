//! The real tick, measured where it runs: `reflex run` on the demo launch file at
//! 1 kHz of wall clock, with everything a deployment has switched on (the status
//! line and its zenoh publisher, the run log's recorder, per-tick histograms, the
//! camera, the inference worker with the demo policy). Reports the loop's own
//! measurements from `--summary-json`: the tick's compute time and period jitter
//! p50 / p99 / max, overruns and skipped periods; writes `target/real_tick.md`.
//! (`runtime/benches/tick.rs` times `TickCore::step` alone, the filter core.)
//!
//!     cargo bench --bench real_tick            # 10 s
//!     cargo bench --bench real_tick -- 30      # seconds

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    // `cargo test --benches` runs benches in test mode: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if quick { 1.0 } else { 10.0 });
    let dir = repo().join("target/bench-real-tick");
    std::fs::create_dir_all(&dir).expect("target/bench-real-tick");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let launch = std::fs::read_to_string(repo().join("launch/sim_arm.toml"))
        .expect("launch/sim_arm.toml")
        .replace(
            "urdf = \"sim_arm.urdf\"",
            &format!("urdf = {:?}", repo().join("launch/sim_arm.urdf")),
        )
        .replace(
            "../policies/models/",
            &format!("{}/policies/models/", repo().display()),
        )
        .replace(
            "listen = [\"tcp/127.0.0.1:7447\"]",
            &format!("listen = [\"tcp/127.0.0.1:{port}\"]"),
        );
    let launch_path = dir.join("launch.toml");
    std::fs::write(&launch_path, launch).expect("launch file");
    let summary = dir.join("summary.json");
    let status = Command::new(env!("CARGO_BIN_EXE_reflex"))
        .arg("run")
        .arg(&launch_path)
        .args(["--duration", &seconds.to_string()])
        .args(["--set", "control.rate_hz=1000"])
        .arg("--log")
        .arg(dir.join("run.log"))
        .arg("--summary-json")
        .arg(&summary)
        .status()
        .expect("reflex run");
    assert!(status.success(), "reflex run failed");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("summary JSON");
    let row = |name: &str, key: &str| {
        let p = &s[key];
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} |\n",
            p["p50_us"].as_f64().unwrap_or(f64::NAN),
            p["p99_us"].as_f64().unwrap_or(f64::NAN),
            p["max_us"].as_f64().unwrap_or(f64::NAN)
        )
    };
    let mut table =
        String::from("| per tick, 1 kHz | p50 (us) | p99 (us) | max (us) |\n|---|---|---|---|\n");
    table += &row(
        "compute (state, executor, safety, publish, record)",
        "compute",
    );
    table += &row("period jitter", "jitter");
    let _ = writeln!(
        table,
        "\n{} ticks in {seconds} s, {} overruns, {} skipped periods, {} chunks applied",
        s["ticks"], s["overruns"], s["skipped_periods"], s["chunks_applied"]
    );
    println!("{table}");
    let _ = std::fs::write(repo().join("target/real_tick.md"), &table);
}
