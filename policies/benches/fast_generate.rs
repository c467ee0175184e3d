//! The autoregressive loop of the `fast` policy (prefix once, then one decoder
//! step per token with the cache handed back) on the tiny test model, reflex vs a
//! Python onnxruntime loop over the same graphs, one intra-op thread each, in one run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use reflex_policies::fast_policy::FastPolicy;
use reflex_runtime::launch::Launch;
use reflex_runtime::types::{JointState, Observation};

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let repeat = if quick { 10 } else { 2000 };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = repo.join("policies/models/test");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures.join("fast_fixture.json")).expect("fast fixture"),
    )
    .unwrap();
    let end = meta["end_token"].as_u64().unwrap();
    let text = std::fs::read_to_string(repo.join("launch/sim_arm.toml")).unwrap();
    let (start, stop) = (
        text.find("[execution]").unwrap(),
        text.find("[safety]").unwrap(),
    );
    let path = |name: &str| -> PathBuf { fixtures.join(name) };
    let fast = format!(
        "[execution]\naction_rate_hz = 10.0\nreplan_after = 5\n\n[policy]\nkind = \"fast\"\nprefix_model = {:?}\nmodel = {:?}\ntokenizer = {:?}\nend_token = {end}\n\n[[policy.inputs]]\nname = \"state\"\nsource = \"state.joint_positions\"\nshape = [1, 3]\n\n",
        path("fast_prefix.onnx"),
        path("fast_step.onnx"),
        path("fast_10x3"),
    );
    let launch_text = format!("{}{fast}{}", &text[..start], &text[stop..]);
    let mut registry = reflex_runtime::registry::Registry::new();
    reflex_drivers::register(&mut registry);
    reflex_policies::register(&mut registry);
    reflex_zenoh::register(&mut registry);
    let launch = Launch::from_text(&launch_text, "bench", repo.join("launch"), &[], &registry)
        .expect("launch");
    let config = launch
        .policy()
        .as_any()
        .downcast_ref::<reflex_policies::config::FastPolicyConfig>()
        .expect("a fast policy");
    let mut policy = FastPolicy::load(&launch, config).expect("policy");
    let obs = Observation::of_joints(1, JointState::empty(3));
    let mut times = Vec::with_capacity(repeat);
    let mut tokens = 0;
    for _ in 0..repeat {
        let started = Instant::now();
        tokens = policy.generate(&obs).expect("generate").len();
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let ours = times[times.len() / 2];
    let out = Command::new(repo.join(".venv/bin/python"))
        .arg(repo.join("policies/export/fast_reference.py"))
        .args([
            "generate",
            "--prefix",
            path("fast_prefix.onnx").to_str().unwrap(),
        ])
        .args([
            "--step",
            path("fast_step.onnx").to_str().unwrap(),
            "--end",
            &end.to_string(),
            "--joints",
            "3",
        ])
        .args(["--repeat", &repeat.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
    // prefix + one step per token
    let runs = tokens as f64 + 1.0;
    println!(
        "| loop | tokens | median per chunk (us) | graph runs/s | speed-up |\n|---|---|---|---|---|"
    );
    println!(
        "| reflex | {tokens} | {ours:.1} | {:.0} | |",
        runs / ours * 1e6
    );
    match out.and_then(|v| v["median_us"].as_f64()) {
        Some(theirs) => println!(
            "| Python onnxruntime | {tokens} | {theirs:.1} | {:.0} | {:.1}x |",
            runs / theirs * 1e6,
            theirs / ours
        ),
        None => println!("| Python onnxruntime | | (unavailable: run make setup) | | |"),
    }
}
