//! DSRL's latent-noise policy (`[policy.latent_noise]`) steering the analytic flow
//! policy: a latent policy with a fixed output makes the chunk the sampler makes
//! from that noise directly (`reflex infer --noise`); the bound holds; the noise
//! is logged with every chunk and the run replays bit for bit; with V-GPS on, the
//! first candidate starts from w and the log says which one ran; the latent
//! policy reads the prefix graph's outputs; a sampler that
//! is not a function of its initial noise (DDPM) and a latent model of the wrong
//! shape are refused at their fields.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use reflex_runtime::log::{Record, read_log};
use reflex_runtime::npy;
use sha2::Digest;

const H: usize = 6;
const D: usize = 3;

fn policy(latent: &str, batch: usize) -> String {
    analytic_flow_policy(batch, latent)
}

fn latent(model: &str, magnitude: f64) -> String {
    format!(
        r#"
[policy.latent_noise]
model = "{}"
action_magnitude = {magnitude:?}

[[policy.latent_noise.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]
"#,
        fixture(model).display()
    )
}

/// A `vgps` stage with the analytic value model, reading the joint positions.
fn analytic_vgps_stage() -> String {
    format!(
        "\n[[stages]]\nkind = \"vgps\"\nmodel = \"{}\"\n\n[[stages.inputs]]\nname = \"state\"\n\
         source = \"state.joint_positions\"\nshape = [1, 3]\n",
        fixture("value_reach.onnx").display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, demo_with_policy(text, 2)).unwrap();
    path
}

/// w = 1.5 tanh(sin(0.9 i) 1.2), what latent_fixed.onnx squashes to.
fn fixed_w(magnitude: f32) -> Vec<f32> {
    // The latent as numpy computes it (float64, then float32).
    (0..H * D)
        .map(|i| magnitude * (((0.9 * i as f64).sin() * 1.2) as f32).tanh())
        .collect()
}

fn infer(launch: &Path, obs: &Path, out: &Path, noise: Option<&Path>) -> Vec<f64> {
    let mut args = vec![
        "infer",
        launch.to_str().unwrap(),
        "--obs",
        obs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(noise) = noise {
        args.extend(["--noise", noise.to_str().unwrap()]);
    }
    run_ok(&args);
    npy::read_f64(out).unwrap().1
}

#[test]
fn a_fixed_latent_gives_the_chunk_the_sampler_makes_from_it() {
    let dir = scratch("dsrl-fixed");
    npy::write_u8(&dir.join("top.npy"), &[8, 8, 3], &[0; 192]).unwrap();
    let obs = dir.join("obs.json");
    std::fs::write(
        &obs,
        r#"{"joint_positions": [0.1, 0.5, -0.3], "images": {"top": "top.npy"}}"#,
    )
    .unwrap();
    let steered = write(
        &dir,
        "steered",
        &policy(&latent("latent_fixed.onnx", 1.5), 1),
    );
    let plain = write(&dir, "plain", &policy("", 1));
    let w = fixed_w(1.5);
    let w_path = dir.join("w.npy");
    npy::write_f32(&w_path, &[1, H, D], &w).unwrap();
    let ours = infer(&steered, &obs, &dir.join("steered.npy"), None);
    let direct = infer(&plain, &obs, &dir.join("direct.npy"), Some(&w_path));
    let diff = ours
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-5, "DSRL chunk vs the sampler on w: {diff}");
    // Negative control: the run's own seeded noise gives another chunk.
    let seeded = infer(&plain, &obs, &dir.join("seeded.npy"), None);
    assert!(seeded.iter().zip(&ours).any(|(a, b)| (a - b).abs() > 0.05));
}

/// In a run: every chunk's noise is logged, is the latent policy's w within the
/// bound (a latent of 10 squashes to the bound, not past it), and the run
/// replays bit for bit.
#[test]
fn the_bound_holds_and_the_noise_is_logged_with_every_chunk() {
    let dir = scratch("dsrl-run");
    let launch = write(&dir, "large", &policy(&latent("latent_large.onnx", 0.8), 1));
    let log = dir.join("large.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "3",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let replay = reflex()
        .args(["replay", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&replay.stdout).contains("bit-identical"));
    let records = read_log(&log).unwrap().records;
    let chunks = records
        .iter()
        .filter(|r| matches!(r, Record::Chunk { .. }))
        .count();
    let noises: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Noise {
                from_latent,
                values,
                ..
            } => Some((*from_latent, values.clone())),
            _ => None,
        })
        .collect();
    assert!(chunks > 5);
    assert_eq!(noises.len(), chunks, "one noise record per chunk");
    let expected: Vec<f32> = [10.0f32, -10.0, 3.0].map(|v| 0.8 * v.tanh()).to_vec();
    for (from_latent, values) in &noises {
        assert!(from_latent);
        assert_eq!(values.len(), H * D);
        // One latent action, repeated over the horizon, within the bound.
        for row in values.chunks(D) {
            assert_eq!(row, &expected[..]);
        }
        assert!(values.iter().all(|v| v.abs() <= 0.8));
    }
}

/// DSRL and V-GPS together: the first candidate starts from w, the rest from
/// seeded noise; the logged noise is the executed candidate's, marked w only
/// when V-GPS chose the first.
#[test]
fn with_vgps_the_first_candidate_is_ws_and_the_log_says_which_ran() {
    let dir = scratch("dsrl-vgps");
    let text = policy(&latent("latent_fixed.onnx", 1.5), 4) + &analytic_vgps_stage();
    let launch = write(&dir, "both", &text);
    let log = dir.join("both.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "4",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let w = fixed_w(1.5);
    let records = read_log(&log).unwrap().records;
    let mut pairs = 0;
    let (mut latent_ran, mut seeded_ran) = (0, 0);
    for pair in records.windows(2) {
        // The Choice record, then the Noise record, after each chunk.
        if let (
            Record::Choice { choice, .. },
            Record::Noise {
                from_latent,
                values,
                ..
            },
        ) = (&pair[0], &pair[1])
        {
            pairs += 1;
            assert_eq!(*from_latent, choice.selected == 0);
            let gap = values
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert_eq!(gap < 1e-5, *from_latent, "noise vs w: {gap}");
            if *from_latent {
                latent_ran += 1;
            } else {
                seeded_ran += 1;
            }
        }
    }
    assert!(pairs > 10, "{pairs}");
    assert!(latent_ran + seeded_ran == pairs);

    // The versions behind every step: each model file the run loaded, by the
    // field naming it, with its SHA-256 (hashed here independently).
    let header = read_log(&log).unwrap().header;
    let fields: Vec<&str> = header.models.iter().map(|m| m.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "policy.latent_noise.model",
            "policy.model",
            "stages[0].model"
        ],
        "{:?}",
        header.models
    );
    for model in &header.models {
        let bytes = std::fs::read(&model.path).unwrap();
        let digest: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(model.sha256, digest, "{}", model.field);
        assert_eq!(model.bytes, bytes.len() as u64);
    }
    assert!(header.models[0].path.ends_with("latent_fixed.onnx"));
    assert!(header.models[2].path.ends_with("value_reach.onnx"));
}

#[test]
fn latent_noise_errors_name_the_field() {
    let dir = scratch("dsrl-errors");
    // A model whose output is not noise for this chunk.
    let err = run_fails(&write(
        &dir,
        "shape",
        &policy(&latent("value_reach.onnx", 1.0), 1),
    ));
    assert!(
        err.contains("policy.latent_noise.model") && err.contains("shape.toml:"),
        "{err}"
    );
    assert!(err.contains("output `noise` is not in the model"), "{err}");
    let err = run_fails(&write(
        &dir,
        "magnitude",
        &policy(&latent("latent_fixed.onnx", 0.0), 1),
    ));
    assert!(
        err.contains("policy.latent_noise.action_magnitude"),
        "{err}"
    );
    // DDPM adds noise at every step: the chunk is not a function of w.
    let diffusion = format!(
        r#"[policy]
kind = "diffusion"
model = "{model}"
num_steps = 10
schedule = {{ kind = "squared_cosine", train_steps = 100, sampler = "ddpm" }}

[[policy.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]

[policy.actions]
horizon = {H}
{latent}"#,
        model = fixture("rtc_analytic_eps.onnx").display(),
        latent = latent("latent_fixed.onnx", 1.0)
    );
    let err = run_fails(&write(&dir, "ddpm", &diffusion));
    assert!(
        err.contains("policy.latent_noise") && err.contains("DDIM"),
        "{err}"
    );
}

/// launch/sim_arm_flow.toml (the trained split flow policy) with `latent` added to
/// its `[policy]` and absolute model paths, in `dir`.
fn flow_with_latent(dir: &Path, name: &str, latent: &str) -> PathBuf {
    let text = repo_launch_text("sim_arm_flow.toml").replacen(
        "\n[safety]",
        &format!("{latent}\n[safety]"),
        1,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The noise of every chunk of a 2 s simulated run with its log.
fn logged_noise(launch: &Path, log: &Path) -> Vec<Vec<f32>> {
    (sim_run_records(launch, "2", log).into_iter())
        .filter_map(|r| match r {
            Record::Noise {
                from_latent: true,
                values,
                ..
            } => Some(values),
            _ => None,
        })
        .collect()
}

/// DSRL feeds pi0's prefix token to its latent policy: `prefix_outputs` hands the
/// latent model outputs of the policy's prefix graph, computed once per chunk.
/// A latent model reading `obs_features` from the prefix gives exactly the noise
/// of the same model with the prefix graph copied in, reading the observation
/// (mapped and z-scored as the policy maps it); names the prefix graph lacks, and
/// a policy without a prefix graph, are refused at their fields.
#[test]
fn a_latent_policy_reads_the_prefix_graphs_outputs() {
    let dir = scratch("dsrl-prefix");
    let stats: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("policies/models/sim_reach_flow_norm_stats.json")).unwrap(),
    )
    .unwrap();
    let state = &stats["norm_stats"]["state"];
    let from_prefix = flow_with_latent(
        &dir,
        "from_prefix",
        &format!(
            "\n[policy.latent_noise]\nmodel = \"{}\"\nprefix_outputs = [\"obs_features\"]\n",
            fixture("latent_features.onnx").display()
        ),
    );
    let embedded = flow_with_latent(
        &dir,
        "embedded",
        &format!(
            r#"
[policy.latent_noise]
model = "{}"

[[policy.latent_noise.inputs]]
name = "image"
source = "camera.top"
shape = [1, 3, 32, 32]
image = {{ resize = [32, 32], layout = "nchw", range = "zero_one" }}

[[policy.latent_noise.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]
normalize = {{ mean = {}, std = {} }}
"#,
            fixture("latent_features_embedded.onnx").display(),
            state["mean"],
            state["std"]
        ),
    );
    let fed = logged_noise(&from_prefix, &dir.join("from_prefix.log"));
    let recomputed = logged_noise(&embedded, &dir.join("embedded.log"));
    assert!(fed.len() > 5, "{} chunks", fed.len());
    assert_eq!(fed, recomputed);
    // Not a constant: the features move the noise from chunk to chunk.
    assert!(fed.windows(2).any(|w| w[0] != w[1]));
    assert!(fed[0].iter().any(|v| v.abs() > 1e-3));

    let wrong = flow_with_latent(
        &dir,
        "wrong",
        &format!(
            "\n[policy.latent_noise]\nmodel = \"{}\"\nprefix_outputs = [\"prefix_token\"]\n",
            fixture("latent_features.onnx").display()
        ),
    );
    let err = run_fails(&wrong);
    assert!(
        err.contains("policy.latent_noise.model")
            && err.contains("`prefix_token` is not an output of the policy's prefix graph")
            && err.contains("obs_features"),
        "{err}"
    );
    let no_prefix = write(
        &dir,
        "no_prefix",
        &policy(
            &format!(
                "\n[policy.latent_noise]\nmodel = \"{}\"\nprefix_outputs = [\"obs_features\"]\n",
                fixture("latent_features.onnx").display()
            ),
            1,
        ),
    );
    let err = run_fails(&no_prefix);
    assert!(
        err.contains("latent_noise.prefix_outputs") && err.contains("prefix_model"),
        "{err}"
    );
}

/// `reflex steer vgps off` / `reflex steer dsrl off` over the control socket of a
/// running loop: chunks before carry a Choice and a w Noise record, chunks after
/// carry neither (the first candidate runs, from seeded noise).
#[test]
fn steering_switches_off_at_run_time() {
    let dir = scratch("dsrl-switch");
    let launch = write(
        &dir,
        "switch",
        &(policy(&latent("latent_fixed.onnx", 1.5), 4) + &analytic_vgps_stage()),
    );
    let log = dir.join("switch.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut command = reflex();
    command.env("XDG_RUNTIME_DIR", &dir);
    let mut child = spawn_until_with(command, &args, "wall clock");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for method in ["vgps", "dsrl"] {
        let answer = reflex()
            .env("XDG_RUNTIME_DIR", &dir)
            .args(["steer", "--robot", "sim_arm", method, "off"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&answer.stdout);
        assert!(text.contains("ok: ") && text.contains("off"), "{text}");
    }
    assert!(child.wait().unwrap().success());
    // Per chunk, in order: did a Choice and a Noise record follow it?
    let records = read_log(&log).unwrap().records;
    let mut steered = Vec::new();
    for (i, record) in records.iter().enumerate() {
        if let Record::Chunk { .. } = record {
            let after = &records[i + 1..];
            let next = after
                .iter()
                .position(|r| matches!(r, Record::Chunk { .. } | Record::Tick(_)))
                .unwrap_or(after.len());
            let choice = after[..next]
                .iter()
                .any(|r| matches!(r, Record::Choice { .. }));
            let noise = after[..next]
                .iter()
                .any(|r| matches!(r, Record::Noise { .. }));
            steered.push((choice, noise));
        }
    }
    // V-GPS went off first, then DSRL; neither came back.
    let vgps_off = steered
        .iter()
        .position(|&(c, _)| !c)
        .expect("chunks after the switch");
    let dsrl_off = steered
        .iter()
        .position(|&(_, n)| !n)
        .expect("chunks after the switch");
    assert!(vgps_off > 3 && dsrl_off >= vgps_off, "{steered:?}");
    assert!(steered[..vgps_off].iter().all(|&(c, n)| c && n));
    assert!(steered[vgps_off..].iter().all(|&(c, _)| !c), "{steered:?}");
    assert!(steered[dsrl_off..].iter().all(|&(_, n)| !n), "{steered:?}");
}
