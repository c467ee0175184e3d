//! The steering demonstration as a task test (launch/sim_arm_steering.toml and the
//! committed models of `make train-steering`): over the same 100 recorded episodes
//! (same seed: the same targets in the same order), the weakened flow policy alone
//! succeeds sometimes, V-GPS with the value function trained on its rollouts and
//! DSRL's latent-noise policy succeed more often, and V-GPS with the negated value
//! (the negative control) less often. Success is the reward classifier's, read from
//! the run summary. benches/steering/run.py measures the same over 200 episodes.

mod common;

use std::path::Path;

use common::*;

const EPISODES: u64 = 100;

fn latent_noise(model: &str) -> String {
    format!(
        r#"
[policy.latent_noise]
model = "{}"
action_magnitude = 2.0
prefix_outputs = ["obs_features"]

[[policy.latent_noise.inputs]]
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

/// The success rate of `reflex run` on the steering launch file with `batch`
/// candidates and `extra` before its `[safety]` section.
fn success_rate(dir: &Path, name: &str, batch: usize, extra: &str) -> f64 {
    let text = repo_launch_text("sim_arm_steering.toml")
        .replacen("[policy]\n", &format!("[policy]\nbatch = {batch}\n"), 1)
        .replacen("\n[safety]", &format!("{extra}\n[safety]"), 1);
    let launch = dir.join(format!("{name}.toml"));
    std::fs::write(&launch, text).unwrap();
    let dataset = dir.join(name);
    let episodes = format!("recording.episodes={EPISODES}");
    let summary = sim_summary(
        &launch,
        "2000",
        &[
            "--seed",
            "0",
            "--record",
            dataset.to_str().unwrap(),
            "--set",
            &episodes,
        ],
        &dir.join(format!("{name}.json")),
    );
    let e = &summary["episodes"];
    assert_eq!(e["saved"], EPISODES, "{e}");
    let rate = e["successes"].as_u64().unwrap() as f64 / EPISODES as f64;
    eprintln!("{name}: {rate:.2}");
    rate
}

#[test]
fn value_guidance_and_latent_noise_improve_the_weak_policy_and_the_negated_value_hurts() {
    let dir = scratch("steering-demo");
    let base = success_rate(&dir, "base", 1, "");
    let vgps = success_rate(&dir, "vgps", 10, &vgps_stage("sim_reach_weak_value.onnx"));
    let negated = success_rate(
        &dir,
        "negated",
        10,
        &vgps_stage("sim_reach_weak_value_negated.onnx"),
    );
    let dsrl = success_rate(&dir, "dsrl", 1, &latent_noise("sim_reach_weak_latent.onnx"));
    // The base policy is weak on purpose (half its demonstrations reach for the
    // target's mirror image), yet not hopeless.
    assert!((0.25..=0.6).contains(&base), "base {base}");
    assert!(vgps >= base + 0.12, "V-GPS {vgps} vs base {base}");
    assert!(negated <= base - 0.15, "negated Q {negated} vs base {base}");
    assert!(dsrl >= base + 0.12, "DSRL {dsrl} vs base {base}");
}
