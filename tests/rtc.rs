//! Guided real-time chunking against the paper's algorithm written in numpy
//! (policies/export/rtc_reference.py, float64, closed-form VJP) on a nonlinear
//! analytic velocity field, and against DDIM with ΠGDM guidance on a noise network
//! built on the same field: the exported VJP graphs match finite differences;
//! reflex's guided samplers (`reflex infer --previous`) equal the references; the
//! actions that run while the chunk is computed reproduce the previous plan; with
//! the guidance off (negative control) they do not.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use reflex_runtime::npy;

const H: usize = 6;
const D: usize = 3;
const STATE: [f64; 3] = [0.1, 0.5, -0.3];

/// The analytic test models: the flow field, or the diffusion noise network on it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Field {
    Flow,
    Diffusion,
}

impl Field {
    fn policy(self) -> String {
        let state = format!(
            r#"[[policy.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]

[policy.actions]
horizon = {H}
"#
        );
        match self {
            Field::Flow => format!(
                r#"[policy]
kind = "flow"
model = "{model}"
vjp_model = "{vjp}"
num_steps = 10

{state}"#,
                model = fixture("rtc_analytic.onnx").display(),
                vjp = fixture("rtc_analytic_vjp.onnx").display(),
            ),
            // The schedule the reference writes from Nichol & Dhariwal, 10 DDIM steps.
            Field::Diffusion => format!(
                r#"[policy]
kind = "diffusion"
model = "{model}"
vjp_model = "{vjp}"
num_steps = 10
schedule = {{ kind = "squared_cosine", train_steps = 100, clip_sample = false }}

{state}"#,
                model = fixture("rtc_analytic_eps.onnx").display(),
                vjp = fixture("rtc_analytic_eps_vjp.onnx").display(),
            ),
        }
    }

    fn sampler(self) -> &'static str {
        match self {
            Field::Flow => "flow",
            Field::Diffusion => "ddim",
        }
    }
}

fn launch(dir: &Path, field: Field, beta: f64) -> PathBuf {
    let policy = format!(
        "strategy = \"rtc\"\nschedule = \"exp\"\nmax_guidance_weight = {beta:?}\n\n{}",
        field.policy()
    );
    let path = dir.join(format!("rtc_{field:?}_{beta}.toml"));
    std::fs::write(&path, demo_with_policy(&policy, 2)).unwrap();
    path
}

fn python() -> Command {
    let mut command = Command::new(repo().join(".venv/bin/python"));
    command.current_dir(repo());
    command
}

/// Noise, the observation and a previous plan that the unguided sampler would
/// not produce (a smooth ramp, absolute positions = the model's space here).
fn inputs(dir: &Path) -> (PathBuf, PathBuf, Vec<f64>) {
    let noise: Vec<f32> = (0..H * D).map(|i| (i as f32 * 0.7).sin() * 1.3).collect();
    let noise_path = dir.join("noise.npy");
    npy::write_f32(&noise_path, &[1, H, D], &noise).unwrap();
    let plan: Vec<f64> = (0..H * D)
        .map(|i| 0.4 - 0.15 * (i / D) as f64 + 0.1 * (i % D) as f64)
        .collect();
    let obs = dir.join("obs.json");
    // The demo robot's camera (this policy does not look at it).
    npy::write_u8(&dir.join("top.npy"), &[8, 8, 3], &[0; 192]).unwrap();
    std::fs::write(
        &obs,
        format!(r#"{{"joint_positions": {STATE:?}, "images": {{"top": "top.npy"}}}}"#),
    )
    .unwrap();
    (noise_path, obs, plan)
}

fn reflex_guided(
    dir: &Path,
    field: Field,
    beta: f64,
    plan: &Path,
    d: usize,
    tag: &str,
) -> Vec<f64> {
    let (noise, obs, _) = inputs(dir);
    let out = dir.join(format!("{tag}.npy"));
    run_ok(&[
        "infer",
        launch(dir, field, beta).to_str().unwrap(),
        "--obs",
        obs.to_str().unwrap(),
        "--noise",
        noise.to_str().unwrap(),
        "--previous",
        plan.to_str().unwrap(),
        // 10 ticks per action: d actions.
        "--delay-ticks",
        &(10 * d).to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    npy::read_f64(&out).unwrap().1
}

fn reference(dir: &Path, field: Field, beta: f64, plan: &Path, d: usize) -> Vec<f64> {
    let (noise, _, _) = inputs(dir);
    let out = dir.join(format!("reference_{field:?}_{beta}_{d}.npy"));
    let state = STATE.map(|v| v.to_string()).join(",");
    let status = python()
        .args(["policies/export/rtc_reference.py", "--params"])
        .arg(fixture("rtc_analytic.npz"))
        .args(["--state", &state, "--noise"])
        .arg(&noise)
        .arg("--previous")
        .arg(plan)
        .args([
            "--d",
            &d.to_string(),
            "--s",
            "2",
            "--beta",
            &beta.to_string(),
            "--sampler",
            field.sampler(),
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    npy::read_f64(&out).unwrap().1
}

/// One observation and one chunk's noise for the trained sim flow policies
/// (96x96 camera, 3 joints, H = 10), and `reflex infer` on them.
struct SimFlowCase {
    dir: PathBuf,
    launch: &'static str,
    obs: PathBuf,
    noise: PathBuf,
}

impl SimFlowCase {
    fn new(dir: &Path, launch: &'static str, joints: [f64; 3], salt: f32) -> Self {
        let noise: Vec<f32> = (0..30).map(|i| (i as f32 * salt).cos()).collect();
        let noise_path = dir.join("noise.npy");
        npy::write_f32(&noise_path, &[1, 10, D], &noise).unwrap();
        let image: Vec<u8> = (0..96 * 96 * 3).map(|i| (i % 7 * 30) as u8).collect();
        npy::write_u8(&dir.join("top.npy"), &[96, 96, 3], &image).unwrap();
        let obs = dir.join("obs.json");
        std::fs::write(
            &obs,
            format!(r#"{{"joint_positions": {joints:?}, "images": {{"top": "top.npy"}}}}"#),
        )
        .unwrap();
        Self {
            dir: dir.to_path_buf(),
            launch,
            obs,
            noise: noise_path,
        }
    }

    /// The chunk [H * joints] of one inference, with `extra` arguments.
    fn infer(&self, tag: &str, extra: &[&str]) -> Vec<f64> {
        let out = self.dir.join(format!("{tag}.npy"));
        let mut args = vec![
            "infer",
            self.launch,
            "--obs",
            self.obs.to_str().unwrap(),
            "--noise",
            self.noise.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_ok(&args);
        npy::read_f64(&out).unwrap().1
    }
}

fn write_plan(path: &Path, plan: &[f64]) {
    let values: Vec<f32> = plan.iter().map(|&v| v as f32).collect();
    npy::write_f32(path, &[plan.len() / D, D], &values).unwrap();
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn the_exported_vjps_match_finite_differences() {
    for (model, sampler) in [
        ("rtc_analytic_vjp.onnx", "flow"),
        ("rtc_analytic_eps_vjp.onnx", "ddim"),
    ] {
        let out = python()
            .args(["policies/export/rtc_reference.py", "--params"])
            .arg(fixture("rtc_analytic.npz"))
            .args(["--sampler", sampler, "--check-vjp"])
            .arg(fixture(model))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{model}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn guided_sampling_equals_the_papers_algorithm_and_freezes_the_prefix() {
    let dir = scratch("rtc-guided");
    let (_, _, plan) = inputs(&dir);
    let plan_path = dir.join("plan.npy");
    write_plan(&plan_path, &plan);
    for d in [1, 2] {
        let ours = reflex_guided(
            &dir,
            Field::Flow,
            5.0,
            &plan_path,
            d,
            &format!("guided_{d}"),
        );
        let theirs = reference(&dir, Field::Flow, 5.0, &plan_path, d);
        let diff = max_diff(&ours, &theirs);
        assert!(
            diff < 1e-4,
            "d = {d}: reflex vs the paper's algorithm {diff}"
        );
        // The d actions that run while the chunk is computed continue the plan.
        let frozen = max_diff(&ours[..d * D], &plan[..d * D]);
        // (1.3-1.7 without guidance; 10 Euler steps at beta 5 leave ~0.08.)
        assert!(frozen < 0.1, "d = {d}: frozen prefix off by {frozen}");
    }
    // Negative control: without guidance the same noise ignores the plan.
    let free = reflex_guided(&dir, Field::Flow, 0.0, &plan_path, 2, "unguided");
    let theirs = reference(&dir, Field::Flow, 0.0, &plan_path, 2);
    assert!(max_diff(&free, &theirs) < 1e-4);
    let drift = max_diff(&free[..2 * D], &plan[..2 * D]);
    assert!(
        drift > 0.5,
        "unguided prefix should not match the plan: {drift}"
    );
}

#[test]
fn a_partial_plan_constrains_only_the_rows_it_has() {
    let dir = scratch("rtc-partial");
    let (_, _, plan) = inputs(&dir);
    // The executor's plan ends after 3 of the 6 actions.
    let short = dir.join("short.npy");
    write_plan(&short, &plan[..3 * D]);
    for field in [Field::Flow, Field::Diffusion] {
        let ours = reflex_guided(&dir, field, 5.0, &short, 2, &format!("short_{field:?}"));
        let theirs = reference(&dir, field, 5.0, &short, 2);
        assert!(max_diff(&ours, &theirs) < 1e-4, "{field:?}");
    }
}

/// DDIM guided by ΠGDM (the paper's guidance for a diffusion policy): reflex's
/// sampler equals the numpy one written from the DDIM, ΠGDM and classifier-
/// guidance papers; the frozen actions move onto the plan, the more so the
/// higher the clip; without guidance they do not.
#[test]
fn guided_ddim_equals_pigdm_written_from_the_papers_and_freezes_the_prefix() {
    let dir = scratch("rtc-guided-ddim");
    let (_, _, plan) = inputs(&dir);
    let plan_path = dir.join("plan.npy");
    write_plan(&plan_path, &plan);
    let field = Field::Diffusion;
    let mut gaps = Vec::new();
    for (beta, d) in [(5.0, 1), (5.0, 2), (20.0, 2)] {
        let ours = reflex_guided(
            &dir,
            field,
            beta,
            &plan_path,
            d,
            &format!("ddim_{beta}_{d}"),
        );
        let theirs = reference(&dir, field, beta, &plan_path, d);
        let diff = max_diff(&ours, &theirs);
        assert!(
            diff < 1e-4,
            "beta {beta}, d = {d}: reflex vs reference {diff}"
        );
        gaps.push(max_diff(&ours[..d * D], &plan[..d * D]));
    }
    // (1.0 without guidance; the clip at low noise leaves ~0.2 at beta 5, ~0.09 at 20.)
    assert!(gaps[0] < 0.3 && gaps[1] < 0.3, "{gaps:?}");
    assert!(gaps[2] < gaps[1] && gaps[2] < 0.12, "{gaps:?}");
    // Negative control.
    let free = reflex_guided(&dir, field, 0.0, &plan_path, 2, "ddim_unguided");
    let theirs = reference(&dir, field, 0.0, &plan_path, 2);
    assert!(max_diff(&free, &theirs) < 1e-4);
    let drift = max_diff(&free[..2 * D], &plan[..2 * D]);
    assert!(
        drift > 0.8,
        "unguided prefix should not match the plan: {drift}"
    );
}

/// Training-time RTC for a diffusion policy: the noise network takes the clean
/// prefix marked by `prefix_mask`; the DDIM sampler writes the plan's first d rows
/// into the sample before every step and at the end.
#[test]
fn a_diffusion_policy_trained_for_real_time_chunking_takes_the_prefix_as_it_is() {
    let dir = scratch("rtc-trained-ddim");
    let (_, _, plan) = inputs(&dir);
    let plan_path = dir.join("plan.npy");
    write_plan(&plan_path, &plan);
    let policy = Field::Diffusion
        .policy()
        .replace("rtc_analytic_eps.onnx", "rtc_analytic_eps_prefix.onnx")
        .replace("vjp_model", "# vjp_model");
    let path = dir.join("trained.toml");
    std::fs::write(
        &path,
        demo_with_policy(
            &format!("strategy = \"rtc\"\nmode = \"trained\"\n\n{policy}"),
            2,
        ),
    )
    .unwrap();
    let (noise, obs, _) = inputs(&dir);
    let infer = |tag: &str, delay_ticks: &str| {
        let out = dir.join(format!("{tag}.npy"));
        run_ok(&[
            "infer",
            path.to_str().unwrap(),
            "--obs",
            obs.to_str().unwrap(),
            "--noise",
            noise.to_str().unwrap(),
            "--previous",
            plan_path.to_str().unwrap(),
            "--delay-ticks",
            delay_ticks,
            "--out",
            out.to_str().unwrap(),
        ]);
        npy::read_f64(&out).unwrap().1
    };
    for d in [1, 2] {
        let chunk = infer(&format!("trained_{d}"), &(10 * d).to_string());
        let frozen = d * D;
        assert!(
            max_diff(&chunk[..frozen], &plan[..frozen]) < 1e-6,
            "d = {d}: the prefix is the plan's"
        );
        assert!(max_diff(&chunk[frozen..], &plan[frozen..]) > 0.05);
    }
    // No delay: nothing frozen (negative control).
    let free = infer("trained_0", "0");
    assert!(max_diff(&free[..D], &plan[..D]) > 0.05);
}

#[test]
fn rtc_launch_errors_name_the_field() {
    let dir = scratch("rtc-errors");
    let path = launch(&dir, Field::Flow, 5.0);
    let text = std::fs::read_to_string(&path).unwrap();
    let check = |text: &str, extra: &[&str]| {
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let mut args = vec!["check".to_string(), bad.to_str().unwrap().to_string()];
        for e in extra {
            args.push("--set".into());
            args.push(e.to_string());
        }
        let out = reflex().args(&args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check(&text.replace("vjp_model", "# vjp_model"), &[]);
    assert!(
        err.contains("policy.vjp_model") && err.contains("bad.toml:"),
        "{err}"
    );
    // d = 3 actions of delay cannot fit s = 2.
    let err = check(&text, &["control.sim_inference_ticks=30"]);
    assert!(
        err.contains("execution.replan_after") && err.contains("d <= s <= H - d"),
        "{err}"
    );
    let err = check(&text, &["execution.target=\"velocity\""]);
    assert!(err.contains("execution.target"), "{err}");
    let err = check(&text, &["execution.schedule=\"cosine\""]);
    assert!(err.contains("execution.schedule"), "{err}");
    let diffusion = std::fs::read_to_string(launch(&dir, Field::Diffusion, 5.0)).unwrap();
    let err = check(&diffusion.replace("vjp_model", "# vjp_model"), &[]);
    assert!(err.contains("policy.vjp_model"), "{err}");
    // A policy without a sampler cannot continue a plan.
    let chunk = demo_with_policy(
        &format!(
            "strategy = \"rtc\"\n\n{}",
            chunk_policy("chunk_state_hold.onnx", "", 10)
        ),
        2,
    );
    let err = check(&chunk, &[]);
    assert!(
        err.contains("execution.strategy") && err.contains("(`chunk`)"),
        "{err}"
    );
}

/// The trained sim flow policy predicts z-scored deltas from the joint positions
/// it sees: the plan it continues (absolute targets) must be taken back into that
/// space (minus the state, normalized) before it can constrain the sample.
#[test]
fn a_delta_policys_plan_is_re_anchored_and_normalized() {
    let dir = scratch("rtc-delta");
    let d = D;
    let case = SimFlowCase::new(&dir, "launch/sim_arm_flow_rtc.toml", [0.3, 0.9, 0.2], 1.1);
    let infer = |tag: &str, extra: &[&str]| case.infer(tag, extra);
    // Without a plan the sampler is the plain one; a plan 0.3 rad away from it.
    let free = infer("free", &[]);
    let plan: Vec<f64> = free.iter().map(|v| v + 0.3).collect();
    let plan_path = dir.join("plan.npy");
    write_plan(&plan_path, &plan);
    let previous = [
        "--previous",
        plan_path.to_str().unwrap(),
        "--delay-ticks",
        "20",
    ];
    let with_beta = |tag: &str, beta: &str| {
        let set = format!("execution.max_guidance_weight={beta}");
        let mut args = previous.to_vec();
        args.extend(["--set", set.as_str()]);
        infer(tag, &args)
    };
    // The trained field pulls back toward its own chunk: 10 steps at beta 5 cover
    // about half of a 0.3 rad gap (0.8 sigma of its deltas), beta 20 more. Every
    // value of the frozen actions moves toward the plan: taken into the model's
    // space without the state, the target would lie 0.8-2.4 sigma below instead.
    let guided = with_beta("guided", "5.0");
    for (g, f) in guided[..2 * d].iter().zip(&free) {
        let moved = g - f;
        assert!(
            (0.1..0.32).contains(&moved),
            "moved {moved} toward a plan 0.3 away"
        );
    }
    let firmer = with_beta("firmer", "20.0");
    let gap = |actions: &[f64]| max_diff(&actions[..2 * d], &plan[..2 * d]);
    assert!(
        gap(&firmer) < gap(&guided) && gap(&firmer) < 0.1,
        "{} {}",
        gap(&firmer),
        gap(&guided)
    );
    // Negative control: no guidance is the plain sampler.
    let unguided = with_beta("unguided", "0.0");
    assert!(
        max_diff(&unguided, &free) < 1e-6,
        "no guidance: the plain sampler"
    );
}

/// Training-time RTC: the model was trained with a clean prefix marked by its
/// `prefix_mask` input; the sampler writes the plan's first d rows there, so the
/// actions that run while the chunk is computed are the plan's exactly.
#[test]
fn a_model_trained_for_real_time_chunking_takes_the_prefix_as_it_is() {
    let dir = scratch("rtc-trained");
    let d = D;
    let case = SimFlowCase::new(
        &dir,
        "launch/sim_arm_flow_rtc_trained.toml",
        [0.2, 0.8, 0.4],
        0.9,
    );
    let infer = |tag: &str, extra: &[&str]| case.infer(tag, extra);
    let free = infer("free", &[]);
    let plan: Vec<f64> = free.iter().map(|v| v + 0.2).collect();
    let plan_path = dir.join("plan.npy");
    write_plan(&plan_path, &plan);
    for delay_actions in [1, 3] {
        let ticks = (10 * delay_actions).to_string();
        let previous = [
            "--previous",
            plan_path.to_str().unwrap(),
            "--delay-ticks",
            &ticks,
        ];
        let chunk = infer(&format!("trained_{delay_actions}"), &previous);
        let frozen = delay_actions * d;
        // Exact up to float32 normalization round trips.
        let gap = max_diff(&chunk[..frozen], &plan[..frozen]);
        assert!(
            gap < 1e-5,
            "d = {delay_actions}: the prefix is the plan's, off by {gap}"
        );
        // The rest is the model's own continuation, not the plan (negative control).
        assert!(max_diff(&chunk[frozen..], &plan[frozen..]) > 0.05);
    }
    // Without a plan nothing is frozen: the plain sampler.
    assert!(max_diff(&free, &plan) > 0.19);
}

#[test]
fn trained_mode_needs_a_model_with_a_prefix_mask() {
    let dir = scratch("rtc-trained-errors");
    let text = std::fs::read_to_string(repo().join("launch/sim_arm_flow_rtc_trained.toml"))
        .unwrap()
        .replace(
            "sim_reach_flow_rtc_expert.onnx",
            "sim_reach_flow_expert.onnx",
        )
        .replace(
            "sim_reach_flow_rtc_prefix.onnx",
            "sim_reach_flow_prefix.onnx",
        )
        .replace("sim_reach_flow_rtc_norm_stats", "sim_reach_flow_norm_stats")
        .replace(
            "../policies",
            &repo().join("policies").display().to_string(),
        );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = reflex()
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("input `prefix_mask` is not in the model"),
        "{err}"
    );
}

/// Guided real-time chunking of a diffusion policy in the loop: the run replays
/// bit for bit, and each new chunk's first action (the one that runs while the
/// next is computed: d = 1) continues the previous chunk's action due at the same
/// tick; without guidance (negative control) it does not.
#[test]
fn a_guided_diffusion_run_replays_and_continues_the_plan() {
    use reflex_runtime::log::{Record, read_log};
    let dir = scratch("rtc-ddim-run");
    let handover_gap = |beta: f64| {
        let log = dir.join(format!("run_{beta}.log"));
        run_ok(&[
            "run",
            launch(&dir, Field::Diffusion, beta).to_str().unwrap(),
            "--sim-clock",
            "--duration",
            "3",
            "--set",
            "zenoh.enabled=false",
            "--set",
            "control.sim_inference_ticks=10",
            "--log",
            log.to_str().unwrap(),
        ]);
        let replay = reflex()
            .args(["replay", log.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&replay.stdout);
        assert!(
            replay.status.success() && stdout.contains("bit-identical"),
            "{stdout}"
        );
        let chunks: Vec<_> = (read_log(&log).unwrap().records.into_iter())
            .filter_map(|r| match r {
                Record::Chunk {
                    accepted: true,
                    chunk,
                    ..
                } => Some(chunk),
                _ => None,
            })
            .collect();
        assert!(chunks.len() >= 10, "{} chunks", chunks.len());
        // Action i of a chunk is due 10 ticks (one action) after action i - 1.
        let mut gaps = Vec::new();
        for pair in chunks.windows(2) {
            let (old, new) = (&pair[0], &pair[1]);
            let offset = (new.conditioned_on_tick - old.conditioned_on_tick) as usize;
            assert_eq!(offset % 10, 0);
            let due = offset / 10;
            let first = new.actions[..D].iter().map(|&v| f64::from(v));
            let planned = old.actions[due * D..(due + 1) * D].iter();
            gaps.push(
                first
                    .zip(planned)
                    .map(|(a, &b)| (a - f64::from(b)).abs())
                    .fold(0.0, f64::max),
            );
        }
        gaps.iter().sum::<f64>() / gaps.len() as f64
    };
    let (guided, free) = (handover_gap(5.0), handover_gap(0.0));
    eprintln!("mean handover gap: guided {guided}, unguided {free}");
    assert!(
        guided < 0.4 * free,
        "mean handover gap: guided {guided} vs unguided {free}"
    );
}
