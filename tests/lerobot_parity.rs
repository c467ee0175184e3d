//! LeRobot itself against reflex, over whole episodes (LeRobot 0.4.4 from the
//! parity venv that `make test` makes, scripts/parity_venv.sh).
//!
//! For ACT and Diffusion Policy (DDIM-10 and LeRobot's default DDPM-100): LeRobot's
//! own config classes build a random-initialized policy with dataset statistics,
//! saved as a LeRobot user has it (config.json, model.safetensors, processor
//! files; policies/export/lerobot_fixture.py). `import_lerobot.py` turns that
//! directory into ONNX graphs and a launch file for the simulated arm, which must
//! pass `reflex check`. Then the same episode of raw observations (joint
//! positions and uint8 camera frames) runs through LeRobot's preprocessor,
//! `select_action` and postprocessor step by step (lerobot_episode.py), and
//! through `reflex infer --episode` with the same noise: every executed action
//! must match within 1e-4. Observation history (`n_obs_steps = 2`), the execution
//! offset (`n_obs_steps - 1`) and re-planning every `n_action_steps` are all in
//! play; each case has a negative control that gets one of them wrong and must
//! fail the same check.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const TOLERANCE: f32 = 1e-4;
const STEPS: usize = 40;

fn python(py: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg(repo().join("policies/export").join(script))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("parity venv python");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_actions(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let (shape, values) = reflex_runtime::npy::read_f64(path).unwrap();
    (shape, values.iter().map(|&v| v as f32).collect())
}

/// The largest difference between two episodes' actions.
fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A LeRobot policy directory, imported, and LeRobot's actions over an episode.
struct Imported {
    dir: PathBuf,
    launch: PathBuf,
    episode: PathBuf,
    lerobot: Vec<f32>,
    noise: Option<PathBuf>,
}

fn import(name: &str, fixture_args: &[&str], import_args: &[&str], diffusion: bool) -> Imported {
    let py = parity_python();
    let dir = scratch(&format!("lerobot-{name}"));
    let policy = dir.join("pretrained_model");
    let out = dir.join("imported");
    let dataset = dir.join("dataset");
    let mut args = vec![
        "--out",
        policy.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
    ];
    args.extend_from_slice(fixture_args);
    python(&py, "lerobot_fixture.py", &args);
    let robot = repo().join("launch/sim_arm.toml");
    let mut args = vec![
        policy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--robot",
        robot.to_str().unwrap(),
    ];
    args.extend_from_slice(import_args);
    python(&py, "import_lerobot.py", &args);
    let launch = out.join("launch.toml");
    run_ok(&["check", launch.to_str().unwrap()]);

    let episode = dir.join("episode.npz");
    let actions = dir.join("lerobot.npy");
    python(
        &py,
        "lerobot_episode.py",
        &[
            policy.to_str().unwrap(),
            "--episode",
            episode.to_str().unwrap(),
            "--make-episode",
            &STEPS.to_string(),
            "--seed",
            "3",
            "--out",
            actions.to_str().unwrap(),
        ],
    );
    let (shape, lerobot) = read_actions(&actions);
    assert_eq!(shape, vec![STEPS, 3]);
    let noise = diffusion.then(|| dir.join("lerobot_noise.npy"));
    if let Some(noise) = &noise {
        assert!(
            noise.exists(),
            "lerobot_episode.py wrote no {}",
            noise.display()
        );
    }
    Imported {
        dir,
        launch,
        episode,
        lerobot,
        noise,
    }
}

impl Imported {
    /// reflex's actions over the episode, with launch-file overrides.
    fn reflex(&self, overrides: &[&str]) -> Vec<f32> {
        let out = self.dir.join("reflex.npy");
        let mut args = vec![
            "infer".to_string(),
            self.launch.display().to_string(),
            "--episode".into(),
            self.episode.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if let Some(noise) = &self.noise {
            args.extend(["--noise".into(), noise.display().to_string()]);
        }
        for o in overrides {
            args.extend(["--set".into(), o.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&args);
        let (shape, actions) = read_actions(&out);
        assert_eq!(shape, vec![STEPS, 3]);
        actions
    }

    fn assert_matches(&self, name: &str) -> f32 {
        let diff = max_difference(&self.reflex(&[]), &self.lerobot);
        assert!(
            diff <= TOLERANCE,
            "{name}: reflex and LeRobot differ by {diff:e} over {STEPS} steps"
        );
        eprintln!("{name}: max |reflex - LeRobot| = {diff:e} over {STEPS} steps");
        diff
    }

    fn assert_control_fails(&self, name: &str, overrides: &[&str]) {
        let diff = max_difference(&self.reflex(overrides), &self.lerobot);
        assert!(
            diff > 100.0 * TOLERANCE,
            "{name} with {overrides:?} still matches LeRobot ({diff:e}): the check cannot fail"
        );
    }
}

#[test]
fn act_matches_lerobot_over_an_episode() {
    let act = import("act", &["--kind", "act"], &[], false);
    act.assert_matches("ACT");
    // The same statistics as the dataset's meta/stats.json (LeRobot's own writer;
    // image entries [3, 1, 1]) instead of the normalizer's safetensors.
    let stats = act.dir.join("dataset/meta/stats.json");
    let from_dataset = act.reflex(&[&format!("policy.norm_stats.file={}", stats.display())]);
    let diff = max_difference(&from_dataset, &act.lerobot);
    assert!(diff <= TOLERANCE, "ACT with meta/stats.json: {diff:e}");
    // The imported launch file runs the simulated arm as it is.
    let summary = sim_summary(&act.launch, "2", &[], &act.dir.join("run.json"));
    assert!(
        summary["chunks_applied"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert_eq!(summary["inference_errors"].as_u64(), Some(0), "{summary}");
    // `reflex inspect` reads the modes from LeRobot's config.json next to it.
    let report = run_ok(&[
        "inspect",
        act.dir.join("imported/act.onnx").to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(report.contains("state_mode = \"mean_std\""), "{report}");
    assert!(
        report.contains("normalizer_processor.safetensors"),
        "{report}"
    );
    // Re-planning one action early shifts every later chunk.
    act.assert_control_fails("ACT", &["execution.replan_after=4"]);
}

#[test]
fn diffusion_policy_ddim_matches_lerobot_over_an_episode() {
    // Weights as external data (one `<graph>.onnx.data` per graph), as a model past
    // protobuf's 2 GB needs them.
    let dp = import(
        "dp-ddim",
        &["--kind", "diffusion", "--sampler", "ddim", "--steps", "10"],
        &["--external-data"],
        true,
    );
    assert!(dp.dir.join("imported/dp_step.onnx.data").exists());
    dp.assert_matches("Diffusion Policy, DDIM-10");
    // DP normalizes state and actions with MIN_MAX, images with MEAN_STD.
    let report = run_ok(&[
        "inspect",
        dp.dir.join("imported/dp_step.onnx").to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(report.contains("actions_mode = \"min_max\""), "{report}");
    assert!(report.contains("image_mode = \"mean_std\""), "{report}");
    // Executing from action 0 instead of n_obs_steps - 1: one action period late.
    dp.assert_control_fails("DP", &["execution.first_action=0"]);
}

#[test]
fn diffusion_policy_ddpm_matches_lerobot_over_an_episode() {
    let dp = import(
        "dp-ddpm",
        &["--kind", "diffusion", "--sampler", "ddpm"],
        &[],
        true,
    );
    dp.assert_matches("Diffusion Policy, DDPM-100");
    // DDPM's 99 in-step draws must be LeRobot's too: with only the initial noise
    // given, reflex draws its own (seeded) and the episode must no longer match.
    let noise = dp.noise.as_ref().unwrap();
    let (shape, values) = reflex_runtime::npy::read_f64(noise).unwrap();
    assert_eq!(
        shape.len(),
        5,
        "noise layout [chunks, 1 + draws, 1, H, D]: {shape:?}"
    );
    assert!(shape[1] > 1, "DDPM draws noise in its steps: {shape:?}");
    let per_draw: usize = shape[2..].iter().product();
    let initial: Vec<f32> = values
        .chunks(shape[1] * per_draw)
        .flat_map(|chunk| chunk[..per_draw].iter().map(|&v| v as f32))
        .collect();
    let initial_only = Imported {
        noise: Some(dp.dir.join("initial_noise.npy")),
        ..dp
    };
    let mut initial_shape = shape.clone();
    initial_shape[1] = 1;
    reflex_runtime::npy::write_f32(
        initial_only.noise.as_ref().unwrap(),
        &initial_shape,
        &initial,
    )
    .unwrap();
    initial_only.assert_control_fails("DP, DDPM without LeRobot's step noise", &[]);
}
