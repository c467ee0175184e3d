//! Launch files as users write them, checked with every registered kind: error
//! positions and fields, overrides, URDF merging and the kinds' own checks.

use std::path::PathBuf;

use reflex::EMBEDDED_SIM_ARM;
use reflex_runtime::launch::{Launch, LaunchError, line_column};

/// `text` with its relative paths resolved against `dir`.
fn from_text_in(text: &str, dir: PathBuf, overrides: &[String]) -> Result<Launch, LaunchError> {
    Launch::from_text(text, "t.toml", dir, overrides, &reflex::registry())
}

fn load(text: &str, overrides: &[&str]) -> Result<Launch, LaunchError> {
    let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/launch"));
    reflex::launch_from_text(text, &base, overrides)
}

#[test]
fn embedded_launch_file_is_valid() {
    let launch = reflex::embedded_launch(&[]).expect("embedded launch file");
    assert_eq!(launch.config.robot.name, "sim_arm");
    assert_eq!(launch.camera_names(), vec!["top".to_string()]);
}

#[test]
fn typo_names_line_column_and_field() {
    let text = EMBEDDED_SIM_ARM.replace("rate_hz = 100.0", "rate_hz = 100.0\nrat_hz = 5");
    let err = load(&text, &[]).unwrap_err();
    assert!(err.message.contains("unknown field `rat_hz`"), "{err}");
    assert_eq!(err.field, "control.rat_hz");
    let line = text.lines().position(|l| l.starts_with("rat_hz")).unwrap() + 1;
    assert_eq!((err.line, err.column), (line, 1), "{err}");
}

#[test]
fn wrong_type_names_the_field() {
    let text = EMBEDDED_SIM_ARM.replace("rate_hz = 100.0", "rate_hz = \"fast\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "control.rate_hz");
    let line = text.lines().position(|l| l.starts_with("rate_hz")).unwrap() + 1;
    assert_eq!(err.line, line, "{err}");
    assert!(
        err.to_string().starts_with(&format!("test.toml:{line}:")),
        "{err}"
    );
}

#[test]
fn unknown_driver_kind_is_reported() {
    let text = EMBEDDED_SIM_ARM.replace("kind = \"sim_arm\"", "kind = \"sim_ram\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "drivers[0].kind");
    assert!(err.message.contains("unknown kind `sim_ram`"), "{err}");
    assert!(
        err.message.contains(
            "`sim_arm`, `spacemouse_teleop`, `zenoh_arm`, `zenoh_stream` or `zenoh_teleop`"
        ),
        "lists the known kinds: {err}"
    );
    assert!(err.line > 0);
    // The same with the file's old format gets the new one explained.
    let old = EMBEDDED_SIM_ARM.replace("[[drivers]]\nkind = \"sim_arm\"", "[[drivers.sim_arm]]");
    let err = load(&old, &[]).unwrap_err();
    assert!(err.message.contains("is the old format"), "{err}");
}

#[test]
fn semantic_errors_point_at_the_field() {
    let text = EMBEDDED_SIM_ARM.replace("source = \"camera.top\"", "source = \"camera.wrist\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "policy.inputs[0].source");
    assert!(err.message.contains("no camera named `wrist`"), "{err}");
    let line = text
        .lines()
        .position(|l| l.contains("camera.wrist"))
        .unwrap()
        + 1;
    assert_eq!(err.line, line, "{err}");
}

#[test]
fn missing_model_file_is_reported() {
    let err = load(EMBEDDED_SIM_ARM, &["policy.model=\"nope.onnx\""]).unwrap_err();
    assert_eq!(err.field, "policy.model");
    assert!(err.message.contains("model file not found"), "{err}");
    assert_eq!(
        err.from_override.as_deref(),
        Some("policy.model=\"nope.onnx\"")
    );
}

#[test]
fn overrides_change_fields() {
    let launch = load(
        EMBEDDED_SIM_ARM,
        &["control.rate_hz=250", "seed=7", "zenoh.enabled=false"],
    )
    .unwrap();
    assert_eq!(launch.config.control.rate_hz, 250.0);
    assert_eq!(launch.config.seed, 7);
    assert!(!reflex_zenoh::config(&launch).enabled);
    let launch = load(EMBEDDED_SIM_ARM, &["robot.joints[0].velocity=0.5"]).unwrap();
    assert_eq!(launch.config.robot.joints[0].velocity, 0.5);
}

#[test]
fn exactly_one_policy_kind() {
    // A second kind's table inside `[policy]` is a field the first kind lacks.
    let both = format!(
        "{EMBEDDED_SIM_ARM}\n[policy.fast]\nprefix_model = \"p.onnx\"\nmodel = \"s.onnx\"\n"
    );
    let err = load(&both, &[]).unwrap_err();
    assert_eq!(err.field, "policy.fast");
    assert!(err.message.contains("unknown field `fast`"), "{err}");
    // A second `[policy]` table is a TOML error.
    let twice = format!("{EMBEDDED_SIM_ARM}\n[policy]\nkind = \"fast\"\n");
    let err = load(&twice, &[]).unwrap_err();
    assert!(err.line > 0, "{err}");
}

#[test]
fn generative_tables_are_validated_at_their_fields() {
    let flow = include_str!("../launch/sim_arm_flow.toml");
    assert!(load(flow, &[]).is_ok());
    let err = load(flow, &["policy.num_steps=0"]).unwrap_err();
    assert_eq!(err.field, "policy.num_steps");
    let err = load(flow, &["policy.actions.dim=2"]).unwrap_err();
    assert!(
        err.message
            .contains("must cover the robot's 3 action columns"),
        "{err}"
    );
    let err = load(flow, &["policy.inputs[1].shape=[1, 2]"]).unwrap_err();
    assert_eq!(err.field, "policy.inputs[1].shape");
    assert!(load(flow, &["policy.inputs[1].shape=[1, 32]"]).is_ok());
    let err = load(flow, &["policy.norm_stats.mode=\"mean\""]).unwrap_err();
    assert_eq!(err.field, "policy.norm_stats.mode");
    let diffusion = include_str!("../launch/examples/diffusion_fixture.toml");
    let examples = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/launch/examples"));
    let load =
        |text: &str, overrides: &[&str]| reflex::launch_from_text(text, &examples, overrides);
    assert!(load(diffusion, &[]).is_ok());
    let err = load(diffusion, &["policy.schedule.train_steps=4"]).unwrap_err();
    assert_eq!(err.field, "policy.schedule.train_steps");
    let err = load(diffusion, &["policy.schedule.kind=\"cosine\""]).unwrap_err();
    assert!(err.message.contains("squared_cosine"), "{err}");
    // A mask needs the camera it describes.
    let masked = format!(
        "{diffusion}\n[[policy.inputs]]\nname = \"m\"\nsource = \"camera_mask.wrist\"\ndtype = \"bool\"\nshape = [1]\n"
    );
    let err = load(&masked, &[]).unwrap_err();
    assert!(err.message.contains("no `camera.wrist` input"), "{err}");
}

#[test]
fn invalid_limits_are_rejected() {
    let err = load(EMBEDDED_SIM_ARM, &["robot.joints[1].position=[1.0, -1.0]"]).unwrap_err();
    assert_eq!(err.field, "robot.joints[1].position");
}

/// A scratch directory holding `files`, for launch files that name a URDF.
fn scratch_with(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reflex-launch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

const SIM_URDF: &str = include_str!("../launch/sim_arm.urdf");

/// The embedded launch file's `[robot]` section replaced by `robot`.
fn with_robot(robot: &str) -> String {
    let start = EMBEDDED_SIM_ARM.find("[robot]").unwrap();
    let end = EMBEDDED_SIM_ARM.find("[control]").unwrap();
    format!(
        "{}{robot}\n{}",
        &EMBEDDED_SIM_ARM[..start],
        &EMBEDDED_SIM_ARM[end..]
    )
}

#[test]
fn the_demo_reads_its_joints_from_the_urdf() {
    let launch = reflex::embedded_launch(&[]).unwrap();
    assert!(launch.config.robot.urdf.is_some());
    let joints = &launch.config.robot.joints;
    let names: Vec<_> = joints.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["shoulder", "elbow", "wrist"]);
    assert_eq!(joints[2].position, [-2.8, 2.8]);
    assert_eq!(joints[2].velocity, 2.0, "from the URDF");
    assert_eq!(joints[2].acceleration, 10.0, "from the launch file");
    assert!(launch.warnings.is_empty(), "{:?}", launch.warnings);
    let model = launch.robot_model.as_ref().unwrap();
    assert_eq!(model.chain.link_name(model.tip), "tool");
    assert_eq!(model.joints[0].effort, Some(100.0));
}

#[test]
fn launch_values_override_the_urdf_with_a_warning() {
    let launch = load(
        EMBEDDED_SIM_ARM,
        &[
            "robot.joints[0].velocity=1.0",
            "robot.joints[1].position=[-3.0, 2.0]",
            "robot.joints[2].jerk=50.0",
        ],
    )
    .unwrap();
    assert_eq!(launch.config.robot.joints[0].velocity, 1.0);
    assert_eq!(launch.config.robot.joints[1].position, [-3.0, 2.0]);
    assert_eq!(launch.config.robot.joints[2].jerk, Some(50.0));
    let w = &launch.warnings;
    assert_eq!(
        w.len(),
        2,
        "jerk is not in the URDF, so not an override: {w:?}"
    );
    assert!(
        w[0].contains("`shoulder`") && w[0].contains("stricter"),
        "{w:?}"
    );
    assert!(w[1].contains("`elbow`") && w[1].contains("LOOSER"), "{w:?}");
    assert!(w[1].contains("sim_arm.urdf"), "{w:?}");
    // A looser velocity is called looser.
    let launch = load(EMBEDDED_SIM_ARM, &["robot.joints[2].velocity=3.0"]).unwrap();
    assert!(
        launch.warnings[0].contains("LOOSER"),
        "{:?}",
        launch.warnings
    );
}

#[test]
fn a_joint_without_acceleration_is_named() {
    let text = with_robot(
        "[robot]\nname = \"sim_arm\"\nurdf = \"sim_arm.urdf\"\n\n[[robot.joints]]\nname = \"shoulder\"\nacceleration = 8.0\n",
    );
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "robot.urdf");
    assert!(
        err.message
            .contains("joint `elbow` has no acceleration limit"),
        "{err}"
    );
    assert!(err.message.contains("name = \"elbow\""), "{err}");
    assert!(err.line > 0, "{err}");
    // With an entry for the joint, the error points at that entry.
    let text = EMBEDDED_SIM_ARM.replace("acceleration = 10.0", "jerk = 100.0");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "robot.joints[2].acceleration");
    assert!(err.message.contains("joint `wrist`"), "{err}");
    let line = text
        .lines()
        .position(|l| l.contains("jerk = 100.0"))
        .unwrap();
    assert_eq!(err.line, line - 1, "at the entry: {err}");
}

#[test]
fn entries_must_name_urdf_joints_once() {
    let text = EMBEDDED_SIM_ARM.replace("name = \"wrist\"", "name = \"wirst\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "robot.joints[2].name");
    assert!(err.message.contains("no joint `wirst`"), "{err}");
    assert!(err.message.contains("shoulder, elbow, wrist"), "{err}");
    let text = EMBEDDED_SIM_ARM.replace("name = \"wrist\"", "name = \"elbow\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "robot.joints[2].name");
    assert!(
        err.message
            .contains("already has an entry (robot.joints[1])"),
        "{err}"
    );
}

#[test]
fn bad_urdf_values_point_at_the_urdf_or_the_override() {
    let bad = SIM_URDF.replace("velocity=\"2.0\"", "velocity=\"-2.0\"");
    let dir = scratch_with("bad-velocity", &[("sim_arm.urdf", &bad)]);
    let text = EMBEDDED_SIM_ARM.replace(
        "../policies",
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
    );
    let err = from_text_in(&text, dir.clone(), &[]).unwrap_err();
    assert_eq!(err.field, "robot.urdf");
    assert!(
        err.message.contains("joint `wrist`") && err.message.contains("velocity"),
        "{err}"
    );
    // An override fixes it, and a bad override is blamed on the launch file.
    let fixed = ["robot.joints[2].velocity=1.0".to_string()];
    let launch = from_text_in(&text, dir.clone(), &fixed).unwrap();
    assert!(
        launch.warnings[0].contains("not a valid limit"),
        "{:?}",
        launch.warnings
    );
    let worse = ["robot.joints[2].velocity=nan".to_string()];
    let err = from_text_in(&text, dir, &worse).unwrap_err();
    assert_eq!(err.field, "robot.joints[2].velocity");
    // A continuous joint needs position limits from the launch file.
    let continuous = SIM_URDF.replace(
        "<joint name=\"elbow\" type=\"revolute\">",
        "<joint name=\"elbow\" type=\"continuous\">",
    );
    let dir = scratch_with("continuous", &[("sim_arm.urdf", &continuous)]);
    let err = from_text_in(&text, dir.clone(), &[]).unwrap_err();
    assert_eq!(err.field, "robot.joints[1].position");
    assert!(err.message.contains("continuous"), "{err}");
    let limited = ["robot.joints[1].position=[-3.0, 3.0]".to_string()];
    assert!(from_text_in(&text, dir, &limited).is_ok());
}

#[test]
fn an_unreadable_or_broken_urdf_names_the_file() {
    let err = load(EMBEDDED_SIM_ARM, &["robot.urdf=\"missing.urdf\""]).unwrap_err();
    assert_eq!(err.field, "robot.urdf");
    assert!(err.message.contains("missing.urdf"), "{err}");
    let dir = scratch_with(
        "broken",
        &[("sim_arm.urdf", "<robot name='x'><link name='a'>")],
    );
    let text = EMBEDDED_SIM_ARM.replace(
        "../policies",
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
    );
    let err = from_text_in(&text, dir.clone(), &[]).unwrap_err();
    assert_eq!(err.field, "robot.urdf");
    let file = dir.join("sim_arm.urdf").display().to_string();
    assert!(err.message.contains(&file), "{err}");
    assert!(err.message.contains("not valid URDF XML"), "{err}");
    let line = text.lines().position(|l| l.starts_with("urdf =")).unwrap() + 1;
    assert_eq!(err.line, line, "{err}");
    let err = load(EMBEDDED_SIM_ARM, &["robot.tip_link=\"hand2\""]).unwrap_err();
    assert_eq!(err.field, "robot.tip_link");
    assert!(err.message.contains("no link `hand2`"), "{err}");
}

#[test]
fn without_a_urdf_entries_give_every_limit() {
    let flow = include_str!("../launch/sim_arm_flow.toml");
    let launch = load(flow, &[]).unwrap();
    assert!(launch.robot_model.is_none());
    assert_eq!(launch.config.robot.joints.len(), 3);
    let text = flow.replacen("velocity = 1.5\n", "", 1);
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "robot.joints[0]");
    assert!(err.message.contains("missing field `velocity`"), "{err}");
    let err = load(flow, &["robot.tip_link=\"tool\""]).unwrap_err();
    assert_eq!(err.field, "robot.tip_link");
}

#[test]
fn a_workspace_box_is_resolved_and_validated() {
    let boxed = format!(
        "{EMBEDDED_SIM_ARM}\n[safety.workspace]\nlink = \"tool\"\nmin = [-1.0, -1.0, -0.1]\nmax = [1.0, 1.0, 0.1]\n"
    );
    let launch = load(&boxed, &[]).unwrap();
    let ws = launch.workspace.unwrap();
    let chain = &launch.robot_model.as_ref().unwrap().chain;
    assert!(ws.contains(chain, &[0.0, 0.6, 0.6]));
    let err = load(&boxed, &["safety.workspace.max=[1.0, 1.0, -0.2]"]).unwrap_err();
    assert_eq!(err.field, "safety.workspace.max");
    assert!(err.message.contains("on z"), "{err}");
    let err = load(&boxed, &["safety.workspace.min=[nan, 0, 0]"]).unwrap_err();
    assert_eq!(err.field, "safety.workspace.min");
    let err = load(&boxed, &["safety.workspace.link=\"gripper\""]).unwrap_err();
    assert_eq!(err.field, "safety.workspace.link");
    assert!(err.message.contains("no link `gripper`"), "{err}");
    let flow = include_str!("../launch/sim_arm_flow.toml");
    let err = load(
        &format!("{flow}\n[safety.workspace]\nlink = \"tool\"\nmin = [0, 0, 0]\nmax = [1, 1, 1]\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.field, "safety.workspace");
    assert!(err.message.contains("needs robot.urdf"), "{err}");
}

#[test]
fn a_seven_joint_urdf_gives_seven_joints_in_chain_order() {
    let robot = format!(
        "[robot]\nname = \"panda\"\nurdf = \"{}/tests/fixtures/arm7.urdf\"\n{}",
        env!("CARGO_MANIFEST_DIR"),
        (1..=7)
            .map(|j| format!(
                "\n[[robot.joints]]\nname = \"panda_joint{}\"\nacceleration = 10.0\n",
                8 - j
            ))
            .collect::<String>()
    );
    let text = with_robot(&robot).replace("shape = [1, 3]", "shape = [1, 7]");
    let start = text.find("[[drivers]]").unwrap();
    let end = text.find("[execution]").unwrap();
    let arm = "[[drivers]]\nkind = \"zenoh_arm\"\nname = \"arm\"\n\n";
    let text = format!("{}{arm}{}", &text[..start], &text[end..]).replace(
        "source = \"camera.top\"",
        "source = \"camera.top\"\noptional = true",
    );
    let launch = load(&text, &[]).unwrap();
    let joints = &launch.config.robot.joints;
    let names: Vec<_> = joints.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        (1..=7)
            .map(|j| format!("panda_joint{j}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(joints[3].position, [-3.0718, -0.0698]);
    assert_eq!(joints[6].velocity, 2.61);
    let model = launch.robot_model.as_ref().unwrap();
    assert_eq!(model.chain.link_name(model.tip), "panda_hand_tcp");
}

#[test]
fn schema_names_the_sections() {
    let schema = reflex_runtime::launch::json_schema_with(&reflex::registry()).to_string();
    for section in [
        "robot",
        "drivers",
        "policy",
        "zenoh",
        "execution",
        "onnxruntime",
        "driver_sim_arm",
        "policy_flow",
        "link_lengths",
        "num_steps",
    ] {
        assert!(schema.contains(section), "{section}");
    }
}

/// Each override must be refused with an error at `field`.
fn rejected_at(overrides: &[&str], field: &str) -> LaunchError {
    let err = match load(EMBEDDED_SIM_ARM, overrides) {
        Ok(_) => panic!("{overrides:?} was accepted"),
        Err(err) => err,
    };
    assert_eq!(err.field, field, "{overrides:?}: {err}");
    err
}

#[test]
fn durations_must_be_finite_positive_and_bounded() {
    for value in ["nan", "inf", "-1", "0", "1e300", "-inf"] {
        for field in [
            "control.startup_timeout_ms",
            "control.max_state_age_ms",
            "safety.estop_after_stale_ms",
        ] {
            let err = rejected_at(&[&format!("{field}={value}")], field);
            assert!(err.message.contains("must be in (0, "), "{err}");
        }
    }
    assert!(load(EMBEDDED_SIM_ARM, &["control.startup_timeout_ms=10000"]).is_ok());
    for value in ["nan", "inf", "0", "1000"] {
        rejected_at(&[&format!("zenoh.status_hz={value}")], "zenoh.status_hz");
    }
    rejected_at(&["control.spin_us=1000000000"], "control.spin_us");
    rejected_at(
        &["control.sim_inference_ticks=18446744073709551615"],
        "control.sim_inference_ticks",
    );
}

#[test]
fn sim_arm_values_are_checked() {
    for (value, bad) in [
        ("[nan, 0.3, 0.2]", 0),
        ("[0.4, -0.3, 0.2]", 1),
        ("[0.4, 0.3, 0.0]", 2),
        ("[0.4, 0.3, inf]", 2),
    ] {
        let err = rejected_at(
            &[&format!("drivers[0].link_lengths={value}")],
            &format!("drivers[0].link_lengths[{bad}]"),
        );
        assert!(err.message.contains("positive length"), "{err}");
    }
    for value in ["1e12", "nan", "inf", "50"] {
        let err = rejected_at(
            &[&format!("drivers[0].physics_hz={value}")],
            "drivers[0].physics_hz",
        );
        assert!(err.message.contains("at most 100000"), "{err}");
    }
    for value in ["0", "nan", "inf", "-30"] {
        rejected_at(
            &[&format!("drivers[0].camera.fps={value}")],
            "drivers[0].camera.fps",
        );
    }
    rejected_at(
        &["drivers[0].initial_position=[nan, 0.6, 0.6]"],
        "drivers[0].initial_position[0]",
    );
    rejected_at(
        &["drivers[0].episode_seconds=inf"],
        "drivers[0].episode_seconds",
    );
    rejected_at(&["drivers[0].damping=nan"], "drivers[0].damping");
}

#[test]
fn joint_names_are_unique_and_not_empty() {
    let err = rejected_at(&["robot.joints[2].name=\"elbow\""], "robot.joints[2].name");
    // With a URDF the merge finds the duplicate first.
    assert!(
        err.message.contains("already the name of robot.joints[1]")
            || err
                .message
                .contains("already has an entry (robot.joints[1])"),
        "{err}"
    );
    rejected_at(&["robot.joints[0].name=\"\""], "robot.joints[0].name");
    // A NUL in a driver name used to panic when its thread was named.
    rejected_at(&["drivers[0].name=\"arm\\u0000\""], "drivers[0].name");
    rejected_at(&["robot.joints[1].name=\"a\\nb\""], "robot.joints[1].name");
}

#[test]
fn key_prefixes_must_be_exact_zenoh_keys() {
    for prefix in [
        "", "reflex/", "/reflex", "**", "a/*", "a//b", "a$*", "a?b", "a#b",
    ] {
        let err = rejected_at(
            &[&format!("zenoh.key_prefix=\"{prefix}\"")],
            "zenoh.key_prefix",
        );
        assert!(
            err.message.contains("zenoh key expression") || err.message.contains("wildcard"),
            "{prefix}: {err}"
        );
    }
    assert!(load(EMBEDDED_SIM_ARM, &["zenoh.key_prefix=\"lab/reflex\""]).is_ok());
    let zenoh_arm = include_str!("../launch/zenoh_arm.toml");
    assert!(load(zenoh_arm, &[]).is_ok());
    for (field, key) in [
        ("command_key", "robots/**"),
        ("state_key", "robot/*/states"),
    ] {
        let set = format!("drivers[0].{field}=\"{key}\"");
        let err = load(zenoh_arm, &[&set]).unwrap_err();
        assert_eq!(err.field, format!("drivers[0].{field}"), "{err}");
        assert!(err.message.contains("wildcard"), "{err}");
    }
    let set = "drivers[0].command_key=\"robot/joint_commands\"";
    assert!(load(zenoh_arm, &[set]).is_ok());
}

#[test]
fn endpoints_are_parsed_like_zenoh() {
    for (value, fragment) in [
        ("[\"garbage\"]", "not a zenoh endpoint"),
        ("[\"tcp/127.0.0.1:99999\"]", "port `99999`"),
        ("[\"tcp/127.0.0.1\"]", "host:port"),
        ("[\"tcp/:7447\"]", "no host"),
        // zenoh-link-tls 1.10 races on its rustls stream (eclipse-zenoh/zenoh#2557).
        ("[\"tls/127.0.0.1:7447\"]", "use `quic/127.0.0.1:7447`"),
    ] {
        let err = rejected_at(&[&format!("zenoh.listen={value}")], "zenoh.listen[0]");
        assert!(err.message.contains(fragment), "{value}: {err}");
    }
    let err = rejected_at(
        &["zenoh.connect=[\"tcp/127.0.0.1:7447\", \"udp/[::1]:70000\"]"],
        "zenoh.connect[1]",
    );
    assert!(err.message.contains("70000"), "{err}");
    assert!(
        load(
            EMBEDDED_SIM_ARM,
            &["zenoh.connect=[\"tcp/[::1]:7447\", \"quic/robot.local:7447\", \"unixsock-stream//tmp/z.sock\"]"]
        )
        .is_ok()
    );
}

#[test]
fn model_updates_need_access_control_and_a_sane_cap() {
    let err = rejected_at(&["zenoh.model_updates=true"], "zenoh.model_updates");
    assert!(
        err.message
            .contains("model updates over zenoh needs zenoh access control"),
        "{err}"
    );
    let err = rejected_at(
        &["zenoh.model_updates=true", "zenoh.max_model_bytes=0"],
        "zenoh.max_model_bytes",
    );
    assert!(err.message.contains("1..="), "{err}");
    // Off, the cap is not judged.
    assert!(load(EMBEDDED_SIM_ARM, &["zenoh.max_model_bytes=0"]).is_ok());
}

#[test]
fn an_end_effector_teleop_device_needs_the_robots_urdf() {
    let device =
        "\n[[drivers]]\nkind = \"zenoh_teleop\"\nname = \"mouse\"\nframe = \"end_effector\"\n";
    let zenoh_arm = include_str!("../launch/zenoh_arm.toml");
    let err = load(&format!("{zenoh_arm}{device}"), &[]).unwrap_err();
    assert_eq!(err.field, "drivers[1].frame", "{err}");
    assert!(err.message.contains("robot.urdf"), "{err}");
    // The demo has a URDF: accepted.
    assert!(load(&format!("{EMBEDDED_SIM_ARM}{device}"), &[]).is_ok());
}

#[test]
fn a_missing_zenoh_config_file_is_reported_at_the_field() {
    let text = format!("{EMBEDDED_SIM_ARM}config_file = \"no_such_zenoh.json5\"\n");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "zenoh.config_file", "{err}");
    assert!(err.message.contains("zenoh config file not found"), "{err}");
    let line = text
        .lines()
        .position(|l| l.starts_with("config_file"))
        .unwrap()
        + 1;
    assert_eq!(err.line, line, "{err}");
    // A directory is not a config file either.
    let err = rejected_at(&["zenoh.config_file=\"/\""], "zenoh.config_file");
    assert!(err.message.contains("not a regular file"), "{err}");
}

#[test]
fn onnxruntime_settings_are_checked() {
    let err = rejected_at(&["policy.intra_threads=2000"], "policy.intra_threads");
    assert!(err.message.contains("1..=256"), "{err}");
    rejected_at(&["policy.intra_threads=0"], "policy.intra_threads");
    let err = rejected_at(
        &["onnxruntime.library=\"/nonexistent/libonnxruntime.so\""],
        "onnxruntime.library",
    );
    assert!(err.message.contains("library not found"), "{err}");
    rejected_at(
        &["onnxruntime.library=\"/dev/zero\""],
        "onnxruntime.library",
    );
    rejected_at(&["onnxruntime.device_id=-1"], "onnxruntime.device_id");
}

#[test]
fn normalization_must_be_finite_with_positive_std() {
    let norm = |mean: &str, std: &str| {
        format!("policy.actions.normalize={{ mean = {mean}, std = {std} }}")
    };
    assert!(load(EMBEDDED_SIM_ARM, &[&norm("[0, 0, 0]", "[1, 1, 1]")]).is_ok());
    for (mean, std, field) in [
        ("[nan, 0, 0]", "[1, 1, 1]", "mean[0]"),
        ("[0, inf, 0]", "[1, 1, 1]", "mean[1]"),
        ("[0, 0, 0]", "[1, 1, nan]", "std[2]"),
        ("[0, 0, 0]", "[1, 0, 1]", "std[1]"),
        ("[0, 0, 0]", "[1, -1, 1]", "std[1]"),
    ] {
        rejected_at(
            &[&norm(mean, std)],
            &format!("policy.actions.normalize.{field}"),
        );
    }
}

#[test]
fn sizes_are_bounded() {
    rejected_at(
        &["policy.actions.horizon=100000000"],
        "policy.actions.horizon",
    );
    rejected_at(
        &["policy.inputs[1].shape=[1, 1000000000000]"],
        "policy.inputs[1].shape",
    );
    rejected_at(
        &["policy.inputs[0].image.resize=[100000, 100000]"],
        "policy.inputs[0].image.resize",
    );
    let flow = include_str!("../launch/sim_arm_flow.toml");
    let err = load(flow, &["policy.actions.dim=10000000000000000"]).unwrap_err();
    assert_eq!(err.field, "policy.actions.dim", "{err}");
}

#[test]
fn launch_files_over_the_cap_are_refused_before_parsing() {
    let mut text = String::from(EMBEDDED_SIM_ARM);
    text.push_str("# ");
    text.push_str(&"x".repeat(reflex_runtime::launch::MAX_LAUNCH_BYTES as usize));
    let err = load(&text, &[]).unwrap_err();
    assert!(err.message.contains("limited to 1 MiB"), "{err}");
    let dir = std::env::temp_dir().join(format!("reflex-launch-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.toml");
    std::fs::write(&path, &text).unwrap();
    let err = Launch::from_file(&path, &[], &reflex::registry()).unwrap_err();
    assert!(err.message.contains("limited to 1 MiB"), "{err}");
    let err =
        Launch::from_file(std::path::Path::new("/dev/zero"), &[], &reflex::registry()).unwrap_err();
    assert!(err.message.contains("not a regular file"), "{err}");
}

#[test]
fn overrides_reach_array_elements() {
    let launch = load(EMBEDDED_SIM_ARM, &["drivers[0].link_lengths[1]=0.35"]).unwrap();
    let arm = &(launch.drivers[0].as_any())
        .downcast_ref::<reflex_drivers::sim_arm::SimArmSpec>()
        .unwrap()
        .config;
    assert_eq!(arm.link_lengths, [0.4, 0.35, 0.2]);
    // A whole `[[robot.joints]]` element from an inline table.
    let launch = load(
        EMBEDDED_SIM_ARM,
        &["robot.joints[2]={ name = \"wrist\", position = [-1.0, 1.0], velocity = 1.0, acceleration = 4.0 }"],
    )
    .unwrap();
    assert_eq!(launch.config.robot.joints.len(), 3);
    assert_eq!(launch.config.robot.joints[2].name, "wrist");
    assert_eq!(launch.config.robot.joints[2].position, [-1.0, 1.0]);
    // A plain value cannot replace a table element: it used to delete the joint.
    let err = load(EMBEDDED_SIM_ARM, &["robot.joints[2]=5"]).unwrap_err();
    assert!(err.message.contains("is a table"), "{err}");
    assert_eq!(err.from_override.as_deref(), Some("robot.joints[2]=5"));
    let err = load(EMBEDDED_SIM_ARM, &["robot.joints[3].velocity=1"]).unwrap_err();
    assert!(
        err.message.contains("no element [3], the array has 3"),
        "{err}"
    );
    let err = load(EMBEDDED_SIM_ARM, &["drivers[0].link_lengths[7]=1"]).unwrap_err();
    assert!(err.message.contains("no element [7]"), "{err}");
}

#[test]
fn malformed_override_keys_are_errors() {
    for spec in [
        "control..rate_hz=50",
        ".control.rate_hz=50",
        "control.rate_hz.=50",
        "=50",
        "robot.joints[x].velocity=1",
        "robot.joints[1.velocity=1",
        "robot.joints[1]x.velocity=1",
        "control.rate hz=50",
    ] {
        let err = match load(EMBEDDED_SIM_ARM, &[spec]) {
            Ok(_) => panic!("`{spec}` was accepted"),
            Err(err) => err,
        };
        assert_eq!(err.from_override.as_deref(), Some(spec), "{err}");
    }
}

#[test]
fn line_column_counts_from_one() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
}

#[test]
fn sources_name_declared_streams() {
    let named = EMBEDDED_SIM_ARM
        .replace("source = \"camera.top\"", "source = \"top.image\"")
        .replace(
            "source = \"state.joint_positions\"",
            "source = \"arm.position\"",
        );
    let launch = load(&named, &[]).unwrap();
    let legacy = load(EMBEDDED_SIM_ARM, &[]).unwrap();
    let inputs = |l: &Launch| {
        reflex_policies::config::inputs_of(l.policy())
            .unwrap()
            .iter()
            .map(|i| i.source.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(inputs(&launch), inputs(&legacy), "both forms resolve alike");
    let err = load(&named, &["policy.inputs[0].source=\"wrist.image\""]).unwrap_err();
    assert_eq!(err.field, "policy.inputs[0].source");
    assert!(
        err.message
            .contains("no stream named `wrist`; streams: arm, top"),
        "{err}"
    );
    let err = load(&named, &["policy.inputs[0].source=\"top.depth\""]).unwrap_err();
    assert!(
        err.message.contains("its fields are `image` and `present`"),
        "{err}"
    );
    let err = load(&named, &["policy.inputs[1].source=\"arm.effort\""]).unwrap_err();
    assert!(
        err.message
            .contains("its fields are `position` and `velocity`"),
        "{err}"
    );
    let err = load(&named, &["drivers[0].camera.name=\"prompt\""]).unwrap_err();
    assert!(
        err.message.contains("a stream may not be named `prompt`"),
        "{err}"
    );
}
