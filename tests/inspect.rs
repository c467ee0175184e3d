//! `reflex inspect`: the report names the model's ports and versions, and its
//! launch-file snippet, with the camera filled in, passes `reflex check`.

mod common;

use common::*;

#[test]
fn the_inspect_snippet_is_a_working_launch_file_section() {
    let model = repo().join("policies/models/sim_reach.onnx");
    let out = run_ok(&["inspect", model.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("IR version 13, opsets: ai.onnx 17"),
        "{report}"
    );
    assert!(report.contains("image: float32 [1, 3, 32, 32]"), "{report}");
    assert!(report.contains("actions: float32 [1, 10, 3]"), "{report}");

    let snippet = &report[report.find("[execution]").unwrap()..];
    let launch = demo_launch_text();
    let (start, end) = (
        launch.find("[execution]").unwrap(),
        launch.find("[safety]").unwrap(),
    );
    let text = format!(
        "{}{}\n{}",
        &launch[..start],
        snippet.replace("camera.CAMERA", "camera.top"),
        &launch[end..]
    );
    let path = scratch("inspect").join("from_snippet.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_ok(&["check", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature matches"));
}

#[test]
fn flow_and_diffusion_models_get_sampler_snippets_that_check() {
    for (model, kind) in [
        ("flow_velocity.onnx", "flow"),
        ("diffusion_eps.onnx", "diffusion"),
    ] {
        let out = run_ok(&["inspect", fixture(model).to_str().unwrap()]);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let table = format!("[policy]\nkind = \"{kind}\"");
        assert!(report.contains(&table), "{report}");
        let snippet = &report[report.find("[execution]").expect(&report)..];
        assert!(!snippet.contains("name = \"noisy_actions\""), "{snippet}");
        assert!(snippet.contains("horizon = 10\ndim = 8"), "{snippet}");
        let launch = demo_launch_text();
        let (start, end) = (
            launch.find("[execution]").unwrap(),
            launch.find("[safety]").unwrap(),
        );
        let text = format!(
            "{}{}\n{}",
            &launch[..start],
            snippet.replace("camera.CAMERA", "camera.top"),
            &launch[end..]
        );
        let path = scratch(&format!("inspect-{kind}")).join("from_snippet.toml");
        std::fs::write(&path, text).unwrap();
        let out = run_ok(&["check", path.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("signature matches"));
    }
}

#[test]
fn inspecting_a_file_that_is_not_a_model_is_a_clear_error() {
    let out = reflex().args(["inspect", "README.md"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot load model README.md"));
}
