//! Bad launch files: each gives an error naming file, line, column and field, and
//! a non-zero exit.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The demo launch file with `edit` applied, written to a scratch file (model
/// paths made absolute so the file works from anywhere).
fn launch_with(name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = demo_launch_text();
    let text = text.replace(
        "../policies/models/",
        &format!("{}/policies/models/", repo().display()),
    );
    let path = scratch(name).join("launch.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn line_of(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in file")
        + 1
}

/// Runs `reflex check` and returns stderr, asserting failure.
fn check_fails(path: &Path) -> String {
    let out = reflex()
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "check passed unexpectedly");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn the_shipped_launch_file_checks_clean() {
    let out = run_ok(&["check", "launch/sim_arm.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("signature matches"), "{stdout}");
    assert!(
        stdout.contains(
            "top (image 96x96 at 30 Hz, from sim_arm `arm`; stale after 500 ms: paused inference)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "execution  replace {\"first_action\":0} at 10 Hz actions (position targets), replan after 3"
        ),
        "{stdout}"
    );
}

#[test]
fn a_typo_names_the_field_and_its_position() {
    let path = launch_with("typo", |t| {
        t.replacen("max_state_age_ms = 50.0", "max_state_age_msec = 50.0", 1)
    });
    let err = check_fails(&path);
    let line = line_of(&path, "max_state_age_msec");
    assert!(
        err.contains(&format!("{}:{line}:1", path.display())),
        "{err}"
    );
    assert!(
        err.contains("field `control.max_state_age_msec`") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_names_the_field_and_its_position() {
    let path = launch_with("type", |t| {
        t.replacen("rate_hz = 100.0", "rate_hz = \"fast\"", 1)
    });
    let err = check_fails(&path);
    let line = line_of(&path, "rate_hz = \"fast\"");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(err.contains("field `control.rate_hz`"), "{err}");
}

#[test]
fn an_unknown_driver_lists_the_known_ones() {
    let path = launch_with("driver", |t| {
        t.replace("kind = \"sim_arm\"", "kind = \"sim_ram\"")
    });
    let err = check_fails(&path);
    let line = line_of(&path, "kind = \"sim_ram\"");
    assert!(
        err.contains(&format!(
            "{}:{line}:1: field `drivers[0].kind`",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "unknown kind `sim_ram`; known kinds: `audio`, `gamepad_teleop`, `keyboard_teleop`, `opencv_camera`, `ros2_arm`, `serial_taxels`, `sim_arm`, `spacemouse_teleop`, `zenoh_arm`, `zenoh_stream` or `zenoh_teleop`"
        ),
        "{err}"
    );
}

#[test]
fn a_missing_model_file_is_reported_at_the_model_field() {
    let path = launch_with("model", |t| {
        t.replace("sim_reach.onnx", "no_such_model.onnx")
    });
    let err = check_fails(&path);
    let line = line_of(&path, "no_such_model.onnx");
    assert!(
        err.contains(&format!(
            "{}:{line}:1: field `policy.model`",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("model file not found"), "{err}");
}

#[test]
fn a_model_signature_mismatch_lists_expected_and_found() {
    let path = launch_with("signature", |t| {
        t.replace("sim_reach.onnx", "test/chunk_wrong_input.onnx")
    });
    let err = check_fails(&path);
    let line = line_of(&path, "[[policy.inputs]]");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(err.contains("input `state` is not in the model"), "{err}");
    assert!(
        err.contains("model input `joint_state` is not mapped"),
        "{err}"
    );
    assert!(
        err.contains("expected by the launch file") && err.contains("found in the model"),
        "{err}"
    );

    let path = launch_with("signature-output", |t| {
        t.replace("sim_reach.onnx", "test/chunk_wrong_output.onnx")
    });
    let err = check_fails(&path);
    assert!(
        err.contains("output `actions` has shape [1, 10, 4]"),
        "{err}"
    );
}

#[test]
fn a_bad_override_names_the_override() {
    let out = reflex()
        .args([
            "check",
            "launch/sim_arm.toml",
            "--set",
            "control.rate_hz=-5",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("(from --set control.rate_hz=-5)") && err.contains("control.rate_hz"),
        "{err}"
    );
}

/// Runs `reflex check launch/sim_arm.toml --set SPEC` (or on `launch`) and returns
/// stderr, asserting a clear error (exit 2, not a panic's 101).
fn check_set_fails(launch: &str, spec: &str) -> String {
    let out = reflex()
        .args(["check", launch, "--set", spec])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "--set {spec}: {stderr}");
    assert!(!stderr.contains("panicked"), "--set {spec}: {stderr}");
    stderr
}

/// Each of these passed `reflex check` and then made `reflex run` panic, hang or
/// run without protection; now `check` names the field.
#[test]
fn values_that_broke_run_are_rejected_by_check() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "control.startup_timeout_ms=nan",
            "control.startup_timeout_ms",
            "must be in",
        ),
        (
            "control.startup_timeout_ms=inf",
            "control.startup_timeout_ms",
            "must be in",
        ),
        (
            "control.startup_timeout_ms=-1",
            "control.startup_timeout_ms",
            "must be in",
        ),
        (
            "control.startup_timeout_ms=1e300",
            "control.startup_timeout_ms",
            "must be in",
        ),
        (
            "control.max_state_age_ms=inf",
            "control.max_state_age_ms",
            "must be in",
        ),
        (
            "safety.estop_after_stale_ms=inf",
            "safety.estop_after_stale_ms",
            "must be in",
        ),
        ("zenoh.status_hz=nan", "zenoh.status_hz", "must be in"),
        (
            "drivers[0].link_lengths=[nan, 0.3, 0.2]",
            "drivers[0].link_lengths[0]",
            "positive length",
        ),
        (
            "drivers[0].link_lengths=[0.4, -0.3, 0.2]",
            "drivers[0].link_lengths[1]",
            "positive length",
        ),
        (
            "drivers[0].physics_hz=1e12",
            "drivers[0].physics_hz",
            "at most 100000",
        ),
        (
            "drivers[0].camera.fps=0",
            "drivers[0].camera.fps",
            "must be in",
        ),
        (
            "drivers[0].camera.fps=nan",
            "drivers[0].camera.fps",
            "must be in",
        ),
        (
            "zenoh.key_prefix=\"\"",
            "zenoh.key_prefix",
            "not a valid zenoh key",
        ),
        (
            "zenoh.key_prefix=\"reflex/\"",
            "zenoh.key_prefix",
            "not a valid zenoh key",
        ),
        ("zenoh.key_prefix=\"**\"", "zenoh.key_prefix", "wildcard"),
        (
            "zenoh.listen=[\"garbage\"]",
            "zenoh.listen[0]",
            "not a zenoh endpoint",
        ),
        (
            "zenoh.listen=[\"tcp/127.0.0.1:99999\"]",
            "zenoh.listen[0]",
            "99999",
        ),
        (
            "zenoh.connect=[\"tcp/127.0.0.1:99999\"]",
            "zenoh.connect[0]",
            "99999",
        ),
        (
            "zenoh.config_file=\"no_such.json5\"",
            "zenoh.config_file",
            "not found",
        ),
        (
            "policy.intra_threads=2000",
            "policy.intra_threads",
            "1..=256",
        ),
        (
            "policy.actions.normalize={ mean = [nan, 0, 0], std = [1, 1, 1] }",
            "policy.actions.normalize.mean[0]",
            "finite",
        ),
        (
            "policy.actions.normalize={ mean = [0, 0, 0], std = [1, 0, 1] }",
            "policy.actions.normalize.std[1]",
            "positive",
        ),
        (
            "robot.joints[2].name=\"shoulder\"",
            "robot.joints[2].name",
            "already has an entry",
        ),
        (
            "robot.joints[1].name=\"\"",
            "robot.joints[1].name",
            "must not be empty",
        ),
        (
            "onnxruntime.library=\"/nonexistent/libonnxruntime.so\"",
            "onnxruntime.library",
            "library not found",
        ),
        ("control..rate_hz=50", "", "empty field name"),
        ("robot.joints[2]=5", "", "is a table"),
    ];
    for (spec, field, fragment) in cases {
        let err = check_set_fails("launch/sim_arm.toml", spec);
        assert!(
            err.contains(&format!("field `{field}`")) || field.is_empty(),
            "--set {spec}: {err}"
        );
        assert!(err.contains(fragment), "--set {spec}: {err}");
        assert!(
            err.contains(&format!("(from --set {spec})")),
            "--set {spec}: {err}"
        );
    }
}

#[test]
fn a_missing_zenoh_config_file_is_reported_at_its_line() {
    let path = launch_with("zenoh-config", |t| {
        t.replacen(
            "key_prefix = \"reflex\"",
            "key_prefix = \"reflex\"\nconfig_file = \"missing_zenoh.json5\"",
            1,
        )
    });
    let err = check_fails(&path);
    let line = line_of(&path, "missing_zenoh.json5");
    assert!(
        err.contains(&format!(
            "{}:{line}:1: field `zenoh.config_file`",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("zenoh config file not found"), "{err}");
}

#[test]
fn a_huge_launch_file_is_refused_before_parsing() {
    // 10 million array elements took 3.7 GB before; now the size is checked first.
    let path = launch_with("huge", |t| {
        let zeros = "0.0, ".repeat(300_000);
        t.replacen(
            "initial_position = [0.0, 0.6, 0.6]",
            &format!("initial_position = [{zeros}0.0, 0.6, 0.6]"),
            1,
        )
    });
    let err = check_fails(&path);
    assert!(err.contains("launch files are limited to 1 MiB"), "{err}");
}

#[test]
fn a_model_path_that_is_not_a_regular_file_says_so() {
    let dir = scratch("model-kinds");
    let fifo = dir.join("model.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, kind) in [
        ("/dev/zero".to_string(), "a character device"),
        (dir.display().to_string(), "a directory"),
        (fifo.display().to_string(), "a FIFO"),
    ] {
        let err = check_set_fails("launch/sim_arm.toml", &format!("policy.model=\"{path}\""));
        assert!(err.contains("field `policy.model`"), "{err}");
        assert!(
            err.contains(&format!("not a regular file (it is {kind})")),
            "{err}"
        );
        assert!(!err.contains("not found"), "{err}");
    }
}

#[test]
fn a_urdf_override_warns_once_and_says_looser() {
    let out = run_ok(&[
        "check",
        "launch/sim_arm.toml",
        "--set",
        "robot.joints[0].velocity=3.0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("LOOSER than the URDF").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("(`shoulder`): velocity 3 overrides 1.5"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("chain to `tool`; shoulder, elbow, wrist"),
        "{stdout}"
    );
}

#[test]
fn a_broken_urdf_is_reported_at_robot_urdf_naming_the_urdf() {
    let dir = scratch("broken-urdf");
    let urdf = dir.join("arm.urdf");
    std::fs::write(&urdf, "<robot name=\"x\"><link name=\"a\"></robot>").unwrap();
    let path = launch_with("broken-urdf-launch", |t| {
        t.replace(
            &format!("urdf = {:?}", repo().join("launch/sim_arm.urdf")),
            &format!("urdf = {urdf:?}"),
        )
    });
    let err = check_fails(&path);
    let line = line_of(&path, "urdf = ");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())) && err.contains("`robot.urdf`"),
        "{err}"
    );
    assert!(
        err.contains(&format!("URDF {} is not valid URDF XML", urdf.display())),
        "{err}"
    );
}

#[test]
fn a_urdf_joint_without_acceleration_is_named() {
    let path = launch_with("no-acceleration", |t| {
        t.replace("acceleration = 10.0", "jerk = 200.0")
    });
    let err = check_fails(&path);
    assert!(err.contains("`robot.joints[2].acceleration`"), "{err}");
    assert!(
        err.contains("joint `wrist` has no acceleration limit (URDF has none)"),
        "{err}"
    );
}
