//! Flow-matching and DDIM sampling, reflex vs the Python onnxruntime loop
//! (`policies/export/sampler_reference.py bench`) on the same graphs, inputs, noise
//! and step counts, one intra-op thread each, in one run. Also reports:
//! - reflex's overhead beyond ONNX Runtime's own compute (time outside the graph
//!   runs, measured around every run in the same inferences);
//! - the split-cache speed-up: prefix once + expert steps vs the full velocity
//!   graph at every step.
//!
//! `cargo bench -p reflex-policies --bench sampler` prints a Markdown table and
//! writes it to target/sampler_bench.md. `-- --test` runs a few iterations only.

use std::path::{Path, PathBuf};
use std::process::Command;

use reflex_runtime::launch::Launch;
use reflex_runtime::types::{Image, JointState, Observation};

struct Case {
    name: &'static str,
    /// A launch file of the repo to load instead of the pi0-like fixture table.
    launch: Option<&'static str>,
    /// Where `model` and `prefix` are, relative to the repo.
    dir: &'static str,
    kind: &'static str,
    model: &'static str,
    prefix: Option<&'static str>,
    steps: usize,
}

const CASES: [Case; 4] = [
    Case {
        name: "flow, single graph",
        launch: None,
        dir: "policies/models/test",
        kind: "flow",
        model: "flow_velocity.onnx",
        prefix: None,
        steps: 10,
    },
    Case {
        name: "flow, split (prefix + expert)",
        launch: None,
        dir: "policies/models/test",
        kind: "flow",
        model: "flow_expert.onnx",
        prefix: Some("flow_prefix.onnx"),
        steps: 10,
    },
    Case {
        name: "diffusion, DDIM",
        launch: None,
        dir: "policies/models/test",
        kind: "diffusion",
        model: "diffusion_eps.onnx",
        prefix: None,
        steps: 8,
    },
    Case {
        name: "trained sim flow (launch/sim_arm_flow.toml), split",
        launch: Some("launch/sim_arm_flow.toml"),
        dir: "policies/models",
        kind: "flow",
        model: "sim_reach_flow_expert.onnx",
        prefix: Some("sim_reach_flow_prefix.onnx"),
        steps: 10,
    },
];

/// The kinds a launch file of these benches uses.
fn registry() -> reflex_runtime::registry::Registry {
    let mut registry = reflex_runtime::registry::Registry::new();
    reflex_drivers::register(&mut registry);
    reflex_policies::register(&mut registry);
    reflex_zenoh::register(&mut registry);
    registry
}

fn launch_for(repo: &Path, case: &Case) -> Launch {
    if let Some(file) = case.launch {
        return Launch::from_file(&repo.join(file), &[], &registry()).expect("launch");
    }
    let fixtures = repo.join(case.dir);
    let text = std::fs::read_to_string(repo.join("launch/sim_arm.toml")).unwrap();
    let (start, stop) = (
        text.find("[execution]").unwrap(),
        text.find("[safety]").unwrap(),
    );
    let kind = case.kind;
    let mut table = format!(
        "[execution]\naction_rate_hz = 10.0\nreplan_after = 5\n\n[policy]\nkind = \"{kind}\"\nmodel = {:?}\nnum_steps = {}\n",
        fixtures.join(case.model),
        case.steps
    );
    if let Some(prefix) = case.prefix {
        table += &format!("prefix_model = {:?}\n", fixtures.join(prefix));
    }
    if kind == "diffusion" {
        table += "schedule = { kind = \"squared_cosine\", train_steps = 100, clip_sample = 1.0 }\n";
    }
    table += "\n[[policy.inputs]]\nname = \"image\"\nsource = \"camera.top\"\nshape = [1, 3, 32, 32]\n\
         image = { resize = [32, 32], range = \"minus_one_one\" }\n\n\
         [[policy.inputs]]\nname = \"state\"\nsource = \"state.joint_positions\"\nshape = [1, 8]\n\n\
         [policy.actions]\nhorizon = 10\ndim = 8\n\n";
    let text = format!("{}{table}{}", &text[..start], &text[stop..]);
    Launch::from_text(&text, "bench", repo.join("launch"), &[], &registry()).expect("launch")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Measured {
    reflex_us: f64,
    graph_us: f64,
    preprocess_us: f64,
    overhead_us: f64,
    python_us: Option<f64>,
}

fn measure(repo: &Path, case: &Case, repeat: usize, scratch: &Path) -> Measured {
    let launch = launch_for(repo, case);
    let mut policy = reflex_policies::generative::load_generative(&launch)
        .expect("policy")
        .expect("a flow or diffusion policy");
    let mut image = Image::black(96, 96);
    for (i, p) in image.rgb.iter_mut().enumerate() {
        *p = (i % 251) as u8;
    }
    let mut joints = JointState::empty(3);
    joints.position[..3].copy_from_slice(&[0.1, 0.5, -0.3]);
    let obs = Observation {
        images: vec![image],
        ..Observation::of_joints(7, joints)
    };
    let (mut total, mut graph) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
    let (mut preprocess, mut overhead) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
    // Both loops start from the same noise: sampling cost can depend on the values
    // (denormals), so the comparison must not.
    let noise_values: Vec<f32> = (0..policy.noise_len())
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 3.4)
        .collect();
    for _ in 0..repeat.min(20) {
        policy.set_next_noise(noise_values.clone()).unwrap();
        policy.sample(&obs).expect("sample"); // warm caches
    }
    for _ in 0..repeat {
        policy.set_next_noise(noise_values.clone()).unwrap();
        policy.sample(&obs).expect("sample");
        total.push(policy.last_timing.total_ns as f64 / 1e3);
        graph.push(policy.last_timing.graph_ns as f64 / 1e3);
        preprocess.push(policy.last_timing.preprocess_ns as f64 / 1e3);
        overhead.push(policy.last_timing.sampler_overhead_ns() as f64 / 1e3);
    }
    // The same inputs and noise for the Python loop.
    let inputs = scratch.join(format!("{}_inputs", case.model));
    std::fs::create_dir_all(&inputs).unwrap();
    for input in policy.model_inputs() {
        let path = inputs.join(format!("{}.npy", input.name));
        reflex_runtime::npy::write_f32(&path, &input.shape, &input.values).unwrap();
    }
    let noise = scratch.join("noise.npy");
    reflex_runtime::npy::write_f32(&noise, &[1, 10, policy.model_dim()], &noise_values).unwrap();
    let mut python = Command::new(repo.join(".venv/bin/python"));
    python
        .arg(repo.join("policies/export/sampler_reference.py"))
        .args([
            "bench",
            "--kind",
            if case.kind == "flow" { "flow" } else { "ddim" },
        ])
        .arg("--model")
        .arg(repo.join(case.dir).join(case.model))
        .arg("--inputs")
        .arg(&inputs)
        .arg("--noise")
        .arg(&noise)
        .args([
            "--steps",
            &case.steps.to_string(),
            "--repeat",
            &repeat.to_string(),
        ]);
    if let Some(prefix) = case.prefix {
        python.arg("--prefix").arg(repo.join(case.dir).join(prefix));
    }
    if case.kind == "diffusion" {
        python.args([
            "--schedule",
            "squared_cosine",
            "--train-steps",
            "100",
            "--clip-sample",
            "1.0",
        ]);
    }
    let python_us = python
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["median_us"].as_f64());
    Measured {
        reflex_us: median(&mut total),
        graph_us: median(&mut graph),
        preprocess_us: median(&mut preprocess),
        overhead_us: median(&mut overhead),
        python_us,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let repeat = if quick { 5 } else { 1000 };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("reflex-sampler-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut report = String::from(
        "| sampler | steps | reflex median per chunk (us) | ONNX Runtime (us) | preprocessing (us) | sampler overhead | Python ORT loop (us) | speed-up |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut medians = Vec::new();
    for case in &CASES {
        let m = measure(&repo, case, repeat, &scratch);
        // The sampler's own time (noise, binding, Euler/DDIM updates) against
        // ONNX Runtime's; preprocessing happens once per chunk, outside the loop.
        let overhead = m.overhead_us / m.graph_us * 100.0;
        let (python, ratio) = match m.python_us {
            Some(p) => (format!("{p:.1}"), format!("{:.2}x", p / m.reflex_us)),
            None => ("n/a (no .venv)".into(), "-".into()),
        };
        report += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {overhead:.1}% | {python} | {ratio} |\n",
            case.name, case.steps, m.reflex_us, m.graph_us, m.preprocess_us
        );
        medians.push(m.reflex_us);
    }
    report += &format!(
        "\nSplit-cache speed-up (full velocity graph every step / prefix once + expert steps): {:.2}x\n",
        medians[0] / medians[1]
    );
    print!("{report}");
    let _ = std::fs::write(repo.join("target/sampler_bench.md"), &report);
    let _ = std::fs::remove_dir_all(&scratch);
}
