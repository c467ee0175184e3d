//! V-GPS latency: one inference of the steering demonstration's flow policy
//! (launch/sim_arm_steering.toml, split: prefix once, 10 expert steps) sampling K
//! candidates in one batched call, then its trained value model (camera + state +
//! the executed segment, policies/models/steering/sim_reach_weak_value.onnx)
//! scoring all K in one batched call (`[[stages]] kind = "vgps"`), for K = 1, 4,
//! 10, 32, 50, against one plain sample (K = 1, no stage). Medians, one intra-op
//! thread, the same observation throughout.
//!
//! `cargo bench -p reflex-policies --bench vgps` prints a Markdown table and writes
//! it to target/vgps_bench.md. `-- --test` runs a few iterations only.

use std::path::Path;
use std::time::Instant;

use reflex_runtime::launch::Launch;
use reflex_runtime::stage::Candidates;
use reflex_runtime::types::{Image, JointState, Observation};

fn registry() -> reflex_runtime::registry::Registry {
    let mut registry = reflex_runtime::registry::Registry::new();
    reflex_drivers::register(&mut registry);
    reflex_policies::register(&mut registry);
    reflex_zenoh::register(&mut registry);
    registry
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median ms of one inference (all K candidates, then the stages).
fn measure(launch: &Launch, repeat: usize) -> f64 {
    let mut policy = launch.policy().load(launch).expect("policy").policy;
    let mut stages = launch.chunk_stages().expect("stages");
    let mut image = Image::black(96, 96);
    for (i, p) in image.rgb.iter_mut().enumerate() {
        *p = (i % 251) as u8;
    }
    let mut joints = JointState::empty(3);
    joints.position[..3].copy_from_slice(&[0.1, 0.5, -0.3]);
    let mut obs = Observation {
        images: vec![image],
        ..Observation::of_joints(7, joints)
    };
    let mut candidates = Candidates::zeros(
        policy.candidates().max(1),
        policy.horizon(),
        policy.action_dim(),
    );
    let mut times = Vec::with_capacity(repeat);
    for i in 0..repeat + 5 {
        obs.tick = i as u64;
        let started = Instant::now();
        policy
            .infer_candidates(&obs, &mut candidates)
            .expect("sample");
        for stage in &mut stages {
            stage.apply(&obs, &mut candidates).expect("stage");
        }
        if i >= 5 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(&mut times)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let repeat = if quick { 3 } else { 60 };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base_file = repo.join("launch/sim_arm_steering.toml");
    let text = std::fs::read_to_string(&base_file).expect("launch file");
    // The steered launch file beside the original, so its relative paths hold.
    let steered_file = repo.join("launch/.vgps_bench.toml");
    std::fs::write(
        &steered_file,
        format!(
            "{text}\n[[stages]]\nkind = \"vgps\"\n\
             model = \"../policies/models/steering/sim_reach_weak_value.onnx\"\n\
             score = \"segment\"\n\n[[stages.inputs]]\nname = \"image\"\nsource = \"camera.top\"\n\
             shape = [1, 3, 32, 32]\n\
             image = {{ resize = [32, 32], layout = \"nchw\", range = \"zero_one\" }}\n\n\
             [[stages.inputs]]\nname = \"state\"\nsource = \"state.joint_positions\"\nshape = [1, 3]\n"
        ),
    )
    .expect("write launch file");
    let load = |file: &Path, k: usize| {
        let overrides = vec![
            format!("policy.batch={k}"),
            "policy.intra_threads=1".to_string(),
        ];
        Launch::from_file(file, &overrides, &registry()).expect("launch")
    };
    let one = measure(&load(&base_file, 1), repeat);
    let mut table =
        String::from("| K | sample K + score K (ms) | relative to one sample |\n|---|---|---|\n");
    table += &format!("| 1, no stage | {one:.2} | 1.00 |\n");
    for k in [1, 4, 10, 32, 50] {
        let ms = measure(&load(&steered_file, k), repeat);
        table += &format!("| {k} | {ms:.2} | {:.2} |\n", ms / one);
    }
    let _ = std::fs::remove_file(&steered_file);
    print!("{table}");
    let out = repo.join("target/vgps_bench.md");
    std::fs::write(&out, &table).expect("write table");
    println!("written to {}", out.display());
}
