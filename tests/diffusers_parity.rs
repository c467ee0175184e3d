//! Diffusion sampling against diffusers itself (DDIMScheduler, DDPMScheduler from
//! the parity venv that `make test` makes, scripts/parity_venv.sh): the same ONNX
//! network, the same observation (preprocessed from the raw observation by
//! policies/export/observation_reference.py, and checked equal to what reflex fed)
//! and the same noise, the initial sample and every step's, for several scheduler
//! configurations, and a diffusers `scheduler_config.json` read by reflex.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// B x H x D of the diffusion fixture.
const SAMPLE: [usize; 3] = [1, 10, 8];

/// Standard normal values (Box-Muller), `samples` of them of SAMPLE's size.
fn write_noise(path: &Path, samples: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let per: usize = SAMPLE.iter().product();
    let values: Vec<f32> = (0..samples * per)
        .map(|_| {
            let (u1, u2) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    let mut shape = vec![samples];
    shape.extend(SAMPLE);
    reflex_runtime::npy::write_f32(path, &shape, &values).unwrap();
}

struct Case {
    name: &'static str,
    /// The launch file's `schedule = { ... }` and `num_steps`.
    schedule: String,
    steps: usize,
    /// diffusers: the class and its kwargs (or `config`).
    diffusers: String,
    eta: f64,
    /// Samples of noise: 1 + steps for stochastic samplers.
    noise: usize,
}

fn run_case(dir: &Path, python: &Path, case: &Case) -> f32 {
    let text = std::fs::read_to_string(repo().join("launch/examples/diffusion_fixture.toml"))
        .unwrap()
        .replace(
            "num_steps = 8\nschedule = { kind = \"squared_cosine\", train_steps = 100, clip_sample = 1.0 }",
            &format!("num_steps = {}\nschedule = {}", case.steps, case.schedule),
        )
        .replace("../../policies/", &format!("{}/policies/", repo().display()));
    let dir = dir.join(case.name);
    std::fs::create_dir_all(&dir).unwrap();
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, text).unwrap();
    let (noise, ours, theirs, inputs) = (
        dir.join("noise.npy"),
        dir.join("reflex.npy"),
        dir.join("diffusers.npy"),
        dir.join("inputs"),
    );
    write_noise(&noise, case.noise, 7);
    run_ok(&[
        "infer",
        launch.to_str().unwrap(),
        "--obs",
        repo()
            .join("launch/examples/obs/obs.json")
            .to_str()
            .unwrap(),
        "--noise",
        noise.to_str().unwrap(),
        "--raw-out",
        ours.to_str().unwrap(),
        "--dump-inputs",
        inputs.to_str().unwrap(),
    ]);
    // diffusers starts from the raw observation, not from reflex's inputs.
    let reference = reference_inputs(
        &repo().join("launch/examples/obs/obs.json"),
        &fixture("flow_norm_stats.json"),
        &dir.join("reference_inputs"),
        &inputs,
    );
    let out = Command::new(python)
        .arg(repo().join("policies/export/diffusers_parity.py"))
        .args(["--model", fixture("diffusion_eps.onnx").to_str().unwrap()])
        .args(["--inputs", reference.to_str().unwrap()])
        .args(["--noise", noise.to_str().unwrap()])
        .args(["--scheduler", &case.diffusers])
        .args(["--steps", &case.steps.to_string()])
        .args(["--eta", &case.eta.to_string()])
        .args(["--out", theirs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (
        reflex_runtime::npy::read_f64(&ours).unwrap().1,
        reflex_runtime::npy::read_f64(&theirs).unwrap().1,
    );
    assert_eq!(a.len(), b.len(), "{}", case.name);
    // Relative to the sample's scale: without clipping, x0 = (x - sqrt(1 - ab) eps) /
    // sqrt(ab) of a random network reaches 1e5 early in a 1000-step schedule.
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    (diff / scale) as f32
}

#[test]
fn ddim_and_ddpm_match_diffusers() {
    let dir = scratch("diffusers-parity");
    let python = parity_python();
    // A diffusers scheduler_config.json, written by diffusers itself.
    let config_dir = dir.join("scheduler");
    let made = Command::new(&python)
        .args([
            "-c",
            "import sys, diffusers; diffusers.DDPMScheduler(num_train_timesteps=100, \
             beta_schedule='squaredcos_cap_v2', clip_sample=True, prediction_type='epsilon', \
             variance_type='fixed_small').save_config(sys.argv[1])",
            config_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = config_dir.join("scheduler_config.json");
    let cases = [
        Case {
            name: "ddim-cosine-leading-clip",
            schedule: r#"{ kind = "squaredcos_cap_v2", train_steps = 100, clip_sample = true }"#.into(),
            steps: 8,
            diffusers: r#"{"class": "DDIMScheduler", "num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2", "clip_sample": true}"#.into(),
            eta: 0.0,
            noise: 1,
        },
        Case {
            name: "ddim-linear-trailing-v",
            schedule: r#"{ kind = "linear", train_steps = 1000, prediction_type = "v_prediction", timestep_spacing = "trailing", set_alpha_to_one = false, clip_sample = false }"#.into(),
            steps: 10,
            diffusers: r#"{"class": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_spacing": "trailing", "set_alpha_to_one": false, "clip_sample": false}"#.into(),
            eta: 0.0,
            noise: 1,
        },
        Case {
            name: "ddim-scaled-linspace-sample-eta",
            schedule: r#"{ kind = "scaled_linear", train_steps = 1000, beta_start = 0.00085, beta_end = 0.012, prediction_type = "sample", timestep_spacing = "linspace", clip_sample = true, clip_sample_range = 2.0, eta = 1.0 }"#.into(),
            steps: 12,
            diffusers: r#"{"class": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "sample", "timestep_spacing": "linspace", "clip_sample": true, "clip_sample_range": 2.0}"#.into(),
            eta: 1.0,
            noise: 13,
        },
        Case {
            name: "ddpm-lerobot-default",
            schedule: r#"{ sampler = "ddpm", kind = "squaredcos_cap_v2", train_steps = 100, clip_sample = true }"#.into(),
            steps: 100,
            diffusers: r#"{"class": "DDPMScheduler", "num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2", "clip_sample": true}"#.into(),
            eta: 0.0,
            noise: 101,
        },
        Case {
            name: "ddpm-linear-fixed-large-offset",
            schedule: r#"{ sampler = "ddpm", kind = "linear", train_steps = 1000, variance_type = "fixed_large", steps_offset = 1, clip_sample = false }"#.into(),
            steps: 20,
            diffusers: r#"{"class": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear", "variance_type": "fixed_large", "steps_offset": 1, "clip_sample": false}"#.into(),
            eta: 0.0,
            noise: 21,
        },
        Case {
            name: "ddpm-from-scheduler-config",
            schedule: format!("{{ config = {:?} }}", config.display().to_string()),
            steps: 10,
            diffusers: format!(
                r#"{{"class": "DDPMScheduler", "config": {:?}}}"#,
                config.display().to_string()
            ),
            eta: 0.0,
            noise: 11,
        },
    ];
    let mut report = Vec::new();
    for case in &cases {
        let diff = run_case(&dir, &python, case);
        report.push(format!("{}: {diff:.2e}", case.name));
        assert!(
            diff < 1e-5,
            "{}: max |reflex - diffusers| / max(1, max |diffusers|) = {diff}",
            case.name
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// DDPM's step noise comes from the run's seed and the tick: two runs with one seed
/// write the same log byte for byte; another seed samples other chunks.
#[test]
fn a_ddpm_run_is_reproducible_from_its_seed() {
    let dir = scratch("ddpm-replay");
    let run = |name: &str, seed: &str| {
        let log = dir.join(name);
        run_ok(&[
            "run",
            "launch/examples/diffusion_fixture.toml",
            "--sim-clock",
            "--duration",
            "3",
            "--seed",
            seed,
            "--set",
            "zenoh.enabled=false",
            "--set",
            "policy.schedule.sampler=\"ddpm\"",
            "--set",
            "policy.num_steps=20",
            "--log",
            log.to_str().unwrap(),
        ]);
        log
    };
    let (a, b, other) = (run("a.log", "3"), run("b.log", "3"), run("c.log", "4"));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (ours, theirs) = (chunk_offsets(&a), chunk_offsets(&other));
    assert!(ours.len() >= 3, "{} chunks", ours.len());
    assert_ne!(ours, theirs, "another seed sampled the same chunks");
    let out = run_ok(&["replay", a.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("bit-identical"));
}
