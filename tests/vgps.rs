//! Value-guided policy steering (`[[stages]] kind = "vgps"`) on the simulated arm:
//! a flow policy samples K = 8 candidate chunks per inference; an analytic value
//! model (policies/export/make_steering_models.py: Q = -|action - (state + offset)|²)
//! scores them. Checked from the run log alone: every recorded Q equals the
//! formula on the recorded candidates and the logged state; argmax runs the best;
//! softmax selections follow softmax(Q / beta) over hundreds of draws; the run
//! replays bit for bit; a negated Q (negative control) steers away.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use reflex_runtime::log::{Record, read_log};

const K: usize = 8;
const H: usize = 6;
const D: usize = 3;
const OFFSET: [f64; 3] = [0.2, -0.1, 0.15];

fn launch(dir: &Path, name: &str, stage: &str, replan_after: usize) -> PathBuf {
    let stage = format!(
        r#"
[[stages]]
kind = "vgps"
{stage}

[[stages.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]
"#
    );
    let policy = analytic_flow_policy(K, &stage);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, demo_with_policy(&policy, replan_after)).unwrap();
    path
}

fn value(name: &str) -> String {
    format!("model = \"{}\"", fixture(name).display())
}

/// One scored chunk as the log holds it.
struct Scored {
    state: [f64; 3],
    scores: Vec<f64>,
    candidates: Vec<f64>,
    selected: usize,
    executed: Vec<f64>,
}

impl Scored {
    fn action(&self, k: usize, i: usize) -> &[f64] {
        &self.candidates[(k * H + i) * D..(k * H + i + 1) * D]
    }

    /// The value model's formula, written here from its definition.
    fn q(&self, k: usize, i: usize) -> f64 {
        let a = self.action(k, i);
        -(0..D)
            .map(|j| (a[j] - self.state[j] - OFFSET[j]).powi(2))
            .sum::<f64>()
    }
}

/// Runs `launch` under the simulated clock and reads every scored chunk back
/// (the run's summary is beside the log, `.json`).
fn run(launch: &Path, seconds: &str) -> (PathBuf, Vec<Scored>) {
    let log = launch.with_extension("log");
    let summary = launch.with_extension("json");
    let out = run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        seconds,
        "--set",
        "zenoh.enabled=false",
        "--set",
        "control.sim_inference_ticks=10",
        "--log",
        log.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    let printed =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(printed.contains("steering (vgps)"), "{printed}");
    let records = read_log(&log).unwrap().records;
    let mut states = BTreeMap::new();
    let mut chunks = BTreeMap::new();
    let mut scored = Vec::new();
    for record in records {
        match record {
            Record::Tick(t) => {
                let p = t.state.positions();
                states.insert(t.tick, [p[0], p[1], p[2]]);
            }
            Record::Chunk {
                accepted: true,
                chunk,
                ..
            } => {
                chunks.insert(chunk.id, chunk);
            }
            Record::Choice {
                chunk_id, choice, ..
            } => {
                let chunk = &chunks[&chunk_id];
                let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
                scored.push(Scored {
                    state: states[&chunk.conditioned_on_tick],
                    scores: f(&choice.scores),
                    candidates: f(&choice.candidates),
                    selected: choice.selected as usize,
                    executed: f(&chunk.actions),
                });
            }
            _ => {}
        }
    }
    (log, scored)
}

fn replays(log: &Path) {
    let out = reflex()
        .args(["replay", log.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("bit-identical"),
        "{stdout}"
    );
}

fn distance(s: &Scored, k: usize, i: usize) -> f64 {
    (-s.q(k, i)).sqrt()
}

/// Argmax: the recorded Q values are the value model's on the recorded
/// candidates, scored at the first action that runs (d = 1: one action passes
/// while the chunk is computed); the best one runs; it lands nearer the target
/// than what the base policy alone (candidate 0) would have run, and a negated Q
/// lands farther.
#[test]
fn argmax_runs_the_best_scored_candidate_and_replays() {
    let dir = scratch("vgps-argmax");
    let (log, scored) = run(&launch(&dir, "argmax", &value("value_reach.onnx"), 2), "4");
    replays(&log);
    assert!(scored.len() >= 15, "{} scored chunks", scored.len());
    // The summary counts what the log holds.
    let steering = &summary(&log.with_extension("json"))["steering"];
    assert_eq!(steering["scored"], scored.len() as u64);
    assert_eq!(steering["candidates"], K as u64);
    let not_first = scored.iter().filter(|s| s.selected != 0).count();
    assert_eq!(steering["not_first"], not_first as u64);
    let d = 1;
    let (mut chosen, mut base) = (0.0, 0.0);
    for s in &scored {
        assert_eq!(s.scores.len(), K);
        for k in 0..K {
            let diff = (s.scores[k] - s.q(k, d)).abs();
            assert!(
                diff < 1e-4 * (1.0 + s.q(k, d).abs()),
                "Q {} vs {}",
                s.scores[k],
                s.q(k, d)
            );
        }
        let best = (0..K).fold(0, |b, k| if s.scores[k] > s.scores[b] { k } else { b });
        assert_eq!(s.selected, best);
        assert_eq!(s.executed, s.candidates[best * H * D..(best + 1) * H * D]);
        chosen += distance(s, best, d);
        base += distance(s, 0, d);
    }
    let n = scored.len() as f64;
    assert!(
        chosen / n < 0.8 * base / n,
        "chosen {} vs base {}",
        chosen / n,
        base / n
    );
    // Negative control: the negated value model picks the farthest.
    let (_, worst) = run(
        &launch(&dir, "negated", &value("value_reach_negated.onnx"), 2),
        "4",
    );
    let far: f64 = worst
        .iter()
        .map(|s| distance(s, s.selected, d))
        .sum::<f64>()
        / worst.len() as f64;
    let base: f64 = worst.iter().map(|s| distance(s, 0, d)).sum::<f64>() / worst.len() as f64;
    assert!(far > 1.2 * base, "negated {far} vs base {base}");
}

/// softmax(Q / beta) with the run's seeded generator: over ~300 chunks, how
/// often the best, second and third candidates ran matches the probabilities the
/// recorded Q values give them (within 4 standard deviations); the same test
/// rejects argmax's selections (it would fail if selection ignored beta).
#[test]
fn softmax_selections_follow_the_softmax_of_q() {
    let dir = scratch("vgps-softmax");
    let beta = 0.2;
    let stage = format!(
        "{}\nselect = \"softmax\"\ntemperature = {beta}",
        value("value_reach.onnx")
    );
    let (log, scored) = run(&launch(&dir, "softmax", &stage, 1), "30");
    replays(&log);
    assert!(scored.len() >= 250, "{} scored chunks", scored.len());
    let by_rank = |selected: &dyn Fn(&Scored) -> usize| {
        let (mut observed, mut expected, mut variance) = ([0.0f64; 3], [0.0f64; 3], [0.0f64; 3]);
        for s in &scored {
            let top = s.scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.scores.iter().map(|q| ((q - top) / beta).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut order: Vec<usize> = (0..K).collect();
            order.sort_by(|&a, &b| s.scores[b].total_cmp(&s.scores[a]));
            for rank in 0..3 {
                let p = w[order[rank]] / total;
                expected[rank] += p;
                variance[rank] += p * (1.0 - p);
                observed[rank] += f64::from(u8::from(selected(s) == order[rank]));
            }
        }
        (0..3)
            .map(|r| (observed[r] - expected[r]).abs() / variance[r].sqrt().max(1.0))
            .fold(0.0, f64::max)
    };
    let z = by_rank(&|s| s.selected);
    eprintln!("softmax z {z}");
    assert!(z < 4.0, "softmax selections off by {z} standard deviations");
    // The second-best must have run sometimes: beta matters.
    assert!(scored.iter().any(|s| {
        let best = (0..K).fold(0, |b, k| if s.scores[k] > s.scores[b] { k } else { b });
        s.selected != best
    }));
    let argmax = by_rank(&|s| (0..K).fold(0, |b, k| if s.scores[k] > s.scores[b] { k } else { b }));
    eprintln!("argmax z {argmax}");
    assert!(
        argmax > 4.0,
        "the test cannot tell argmax from softmax ({argmax})"
    );
}

/// A value model that cannot take what the stage feeds it is refused at load,
/// at the stage's `model` field with both signatures; so is a bad temperature.
#[test]
fn mismatched_value_models_are_clear_errors_at_the_stage() {
    let dir = scratch("vgps-errors");
    // Scoring a segment needs [K, s, 3]; this model takes one action.
    let stage = format!("{}\nscore = \"segment\"", value("value_reach.onnx"));
    let path = launch(&dir, "segment", &stage, 2);
    let err = run_fails(&path);
    assert!(
        err.contains("segment.toml:") && err.contains("stages[0].model"),
        "{err}"
    );
    // `reflex check` refuses it the same way.
    let checked = reflex()
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stderr).contains("stages[0].model"));
    assert!(
        err.contains("input `action`") && err.contains("[8, 2, 3]"),
        "{err}"
    );
    // The segment model takes it.
    let stage = format!("{}\nscore = \"segment\"", value("value_reach_segment.onnx"));
    let (_, scored) = run(&launch(&dir, "segment_ok", &stage, 2), "2");
    assert!(!scored.is_empty());
    let err = run_fails(&launch(
        &dir,
        "q_name",
        &format!("{}\nq_output = \"value\"", value("value_reach.onnx")),
        2,
    ));
    assert!(err.contains("output `value` is not in the model"), "{err}");
    let err = run_fails(&launch(
        &dir,
        "temperature",
        &format!("{}\ntemperature = 0.0", value("value_reach.onnx")),
        2,
    ));
    assert!(err.contains("stages[0].temperature"), "{err}");
}

/// launch/sim_arm_fast.toml (the FAST policy of the simulated arm) sampling at
/// `temperature` with `batch` candidates, absolute paths, `more` appended.
fn fast_launch(dir: &Path, name: &str, batch: usize, temperature: f64, more: &str) -> PathBuf {
    let text = repo_launch_text("sim_arm_fast.toml").replace(
        "temperature = 0.0",
        &format!("temperature = {temperature:?}\nbatch = {batch}"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("{text}\n{more}")).unwrap();
    path
}

/// FAST candidates for V-GPS: the prefix runs once, K sequences decode with their
/// own seeded sampling streams, candidate 0 is what the policy alone samples (the
/// first chunk of a run without candidates), the candidates differ, the best Q
/// runs; greedy decoding with K > 1 is refused at `policy.batch`.
#[test]
fn fast_candidates_are_seeded_temperature_samples() {
    let dir = scratch("vgps-fast");
    let stage = format!(
        "\n[[stages]]\nkind = \"vgps\"\n{}\n\n[[stages.inputs]]\nname = \"state\"\n\
         source = \"state.joint_positions\"\nshape = [1, 3]\n",
        value("value_reach.onnx")
    );
    let logged = |launch: &Path| sim_run_records(launch, "2", &launch.with_extension("log"));
    // The sim FAST policy's logits are +-10 (one-hot): at temperature 2 a token
    // other than the best comes once in ~90 draws, so about a third of the
    // sequences differ somewhere.
    let steered = logged(&fast_launch(&dir, "steered", 4, 2.0, &stage));
    let plain = logged(&fast_launch(&dir, "plain", 1, 2.0, ""));
    let choices: Vec<_> = (steered.iter())
        .filter_map(|r| match r {
            Record::Choice { choice, .. } => Some(choice.clone()),
            _ => None,
        })
        .collect();
    assert!(choices.len() > 5, "{} scored chunks", choices.len());
    let per = choices[0].candidates.len() / 4;
    let mut differ = 0;
    for c in &choices {
        assert_eq!(c.scores.len(), 4);
        let best = (0..4)
            .max_by(|&a, &b| c.scores[a].total_cmp(&c.scores[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(c.selected as usize, best, "{:?}", c.scores);
        differ += usize::from(
            (1..4).any(|k| c.candidates[k * per..(k + 1) * per] != c.candidates[..per]),
        );
    }
    eprintln!(
        "{differ} of {} scored chunks had differing candidates",
        choices.len()
    );
    assert!(
        differ * 3 > choices.len(),
        "{differ} of {} differ",
        choices.len()
    );
    let first_plain = (plain.iter())
        .find_map(|r| match r {
            Record::Chunk {
                accepted: true,
                chunk,
                ..
            } => Some(chunk.actions.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(choices[0].candidates[..per], first_plain[..]);

    let err = run_fails(&fast_launch(&dir, "greedy", 4, 0.0, &stage));
    assert!(
        err.contains("policy.batch") && err.contains("temperature > 0"),
        "{err}"
    );
}
