//! reflex's URDF forward kinematics against yourdfpy (an independent URDF library,
//! `policies/export/urdf_fk_reference.py`) on random configurations of the shipped
//! URDFs: the simulated arm, the 7-joint Panda-like fixture and an awkward chain
//! (general rpy origins, oblique axes, prismatic and continuous joints, fixed
//! joints between movable ones). Every link the chain places is compared: position
//! to 1e-9 m and rotation matrix entries to 1e-9.

mod common;

use std::process::Command;

use common::*;
use reflex_runtime::robot_model::{JointKind, RobotModel};
use serde_json::{Value, json};

/// splitmix64: a seeded, dependency-free source of test configurations.
struct Random(u64);

impl Random {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Compares every placed link on `configs` random configurations; returns the
/// largest position error, m.
fn cross_check(urdf: &str, configs: usize, seed: u64) -> f64 {
    let path = repo().join(urdf);
    let model = RobotModel::from_file(&path, None).expect("URDF loads");
    let links: Vec<String> = model.chain.link_names().map(str::to_string).collect();
    let mut random = Random(seed);
    let qs: Vec<Vec<f64>> = (0..configs)
        .map(|_| {
            model
                .joints
                .iter()
                .map(|j| match (j.kind, j.position) {
                    (JointKind::Continuous, _) | (_, None) => random.uniform(-7.0, 7.0),
                    (_, Some([lo, hi])) => random.uniform(lo, hi),
                })
                .collect()
        })
        .collect();
    let request = json!({
        "urdf": path,
        "links": links,
        "configs": qs.iter().map(|q| {
            model.joints.iter().zip(q).map(|(j, v)| (j.name.clone(), json!(v))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
    });
    let file = scratch(&format!("urdf-crosscheck-{seed}")).join("request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("policies/export/urdf_fk_reference.py"))
        .arg("--request")
        .arg(&file)
        .output()
        .expect("run the yourdfpy reference (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let actuated: Vec<&str> = reference["actuated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = model.joints.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(ours, actuated, "{urdf}: the same joints, in chain order");

    let mut worst = 0.0f64;
    for (c, (q, poses)) in qs
        .iter()
        .zip(reference["poses"].as_array().unwrap())
        .enumerate()
    {
        for (name, pose) in links.iter().zip(poses.as_array().unwrap()) {
            let link = model.chain.link_id(name).unwrap();
            let ours = model.chain.link_pose(q, link).to_homogeneous();
            for r in 0..3 {
                for k in 0..4 {
                    let theirs = pose[r][k].as_f64().unwrap();
                    let error = (ours[(r, k)] - theirs).abs();
                    assert!(
                        error < 1e-9,
                        "{urdf} config {c} {q:?}, link `{name}` [{r}][{k}]: reflex {}, yourdfpy {theirs}",
                        ours[(r, k)]
                    );
                    if k == 3 {
                        worst = worst.max(error);
                    }
                }
            }
        }
    }
    worst
}

#[test]
fn forward_kinematics_match_yourdfpy_on_random_configurations() {
    for (urdf, seed) in [
        ("launch/sim_arm.urdf", 1),
        ("tests/fixtures/arm7.urdf", 2),
        ("tests/fixtures/odd_axes.urdf", 3),
    ] {
        let worst = cross_check(urdf, 300, seed);
        eprintln!("{urdf}: largest position difference {worst:.2e} m");
    }
}

#[test]
fn the_comparison_can_fail() {
    // Negative control: the same check on a URDF with one origin moved by 1 µm
    // must see the difference (reflex reads the edited file, yourdfpy too, so
    // compare reflex on the edited file with yourdfpy on the original).
    let original = repo().join("tests/fixtures/arm7.urdf");
    let text = std::fs::read_to_string(&original).unwrap();
    let edited = text.replace("xyz=\"0 0 0.107\"", "xyz=\"0 0 0.107001\"");
    assert_ne!(text, edited);
    let model = RobotModel::from_urdf(&edited, "edited", None).unwrap();
    let tcp = model.chain.link_id("panda_hand_tcp").unwrap();
    let q = [0.0; 7];
    let request = json!({"urdf": original, "links": ["panda_hand_tcp"], "configs": [
        model.joints.iter().map(|j| (j.name.clone(), json!(0.0))).collect::<serde_json::Map<_, _>>()
    ]});
    let file = scratch("urdf-crosscheck-negative").join("request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("policies/export/urdf_fk_reference.py"))
        .arg("--request")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).unwrap();
    let z = reference["poses"][0][0][2][3].as_f64().unwrap();
    let ours = model.chain.link_position(&q, tcp);
    assert!((ours[2] - z).abs() > 1e-9, "a 1 µm change goes unseen");
}
