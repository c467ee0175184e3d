//! The runtime's part of launch files, with kinds made up for the test: the real
//! kinds' tables are tested in the crates that own them and in `tests/launch_files.rs`.

use super::*;
use crate::driver::{Driver, DriverError};
use crate::registry::{DriverKind, PolicyKind, SectionKind};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FakeArmConfig {
    name: String,
    #[serde(default)]
    camera: Option<String>,
}

#[derive(Debug)]
struct FakeArmSpec {
    config: FakeArmConfig,
    joints: usize,
}

impl DriverSpec for FakeArmSpec {
    fn kind(&self) -> &'static str {
        "fake_arm"
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        let mut streams = vec![StreamDecl::joint_state(&self.config.name, self.joints)];
        if let Some(camera) = &self.config.camera {
            streams.push(StreamDecl::image(camera, 8, 8, 10.0));
        }
        streams
    }
    fn is_arm(&self) -> bool {
        true
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Err(DriverError::failed(&self.config.name, "a test driver"))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct FakeArm;

impl DriverKind for FakeArm {
    fn kind(&self) -> &'static str {
        "fake_arm"
    }
    fn schema(&self) -> serde_json::Value {
        crate::registry::schema_of::<FakeArmConfig>()
    }
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: FakeArmConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        Ok(Arc::new(FakeArmSpec {
            config,
            joints: table.launch().config.robot.joints.len(),
        }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FakePolicyConfig {
    horizon: usize,
    #[serde(default)]
    camera: Option<String>,
}

#[derive(Debug)]
struct FakePolicySpec(FakePolicyConfig);

impl PolicySpec for FakePolicySpec {
    fn kind(&self) -> &'static str {
        "fake_policy"
    }
    fn horizon(&self) -> usize {
        self.0.horizon
    }
    fn model(&self) -> PathBuf {
        PathBuf::from("none")
    }
    fn load(&self, _launch: &Launch) -> Result<crate::policy::LoadedPolicy, LoadError> {
        Err("a test policy".into())
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

struct FakePolicy;

impl PolicyKind for FakePolicy {
    fn kind(&self) -> &'static str {
        "fake_policy"
    }
    fn schema(&self) -> serde_json::Value {
        crate::registry::schema_of::<FakePolicyConfig>()
    }
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let config: FakePolicyConfig = table.parse()?;
        if let Some(camera) = &config.camera
            && table.launch().camera(camera).is_none()
        {
            return Err(table.error_at(
                "camera",
                format!(
                    "no camera named `{camera}`; cameras: {}",
                    table.launch().camera_names().join(", ")
                ),
            ));
        }
        Ok(Arc::new(FakePolicySpec(config)))
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FakeSection {
    #[serde(default)]
    level: u32,
}

struct FakeSectionKind;

impl SectionKind for FakeSectionKind {
    fn section(&self) -> &'static str {
        "fake_section"
    }
    fn schema(&self) -> serde_json::Value {
        crate::registry::schema_of::<FakeSection>()
    }
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn Any + Send + Sync>, LaunchError> {
        let section: FakeSection = table.parse()?;
        if section.level > 3 {
            return Err(table.error_at("level", "must be at most 3"));
        }
        Ok(Arc::new(section))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .driver(FakeArm)
        .policy(FakePolicy)
        .section(FakeSectionKind);
    registry
}

const FILE: &str = r#"seed = 3

[robot]
name = "bot"

[[robot.joints]]
name = "j0"
position = [-1.0, 1.0]
velocity = 1.0
acceleration = 2.0

[control]
rate_hz = 100.0

[execution]
action_rate_hz = 10.0
replan_after = 4

[[drivers]]
kind = "fake_arm"
name = "arm"
camera = "top"

[policy]
kind = "fake_policy"
horizon = 8
camera = "top"
"#;

fn load(text: &str, overrides: &[&str]) -> Result<Launch, LaunchError> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Launch::from_text(
        text,
        "test.toml",
        PathBuf::from("."),
        &overrides,
        &registry(),
    )
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn kinds_receive_their_tables() {
    let launch = load(FILE, &[]).unwrap();
    assert_eq!(launch.config.seed, 3);
    assert_eq!(launch.drivers.len(), 1);
    assert_eq!(launch.drivers[0].name(), "arm");
    assert_eq!(launch.camera_names(), vec!["top".to_string()]);
    assert_eq!(launch.policy().horizon(), 8);
    assert_eq!(launch.policy().kind(), "fake_policy");
    let section = launch.section::<FakeSection>("fake_section").unwrap();
    assert_eq!(
        section.level, 0,
        "an absent section is checked as an empty table"
    );
    assert!(launch.section::<u32>("fake_section").is_none());
}

#[test]
fn a_kinds_errors_name_its_field_and_position() {
    let text = FILE.replace("horizon = 8", "horizon = 8\nhorizn = 2");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "policy.horizn");
    assert!(err.message.contains("unknown field `horizn`"), "{err}");
    assert!(
        err.message.contains("horizon"),
        "lists the known fields: {err}"
    );
    assert_eq!(
        (err.line, err.column),
        (line_of(&text, "horizn"), 1),
        "{err}"
    );

    let text = FILE.replace("name = \"arm\"", "name = 5");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "drivers[0].name");
    assert_eq!(err.line, line_of(&text, "name = 5"), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("test.toml:{}:", err.line)),
        "{err}"
    );

    let err = load(FILE, &["policy.camera=\"wrist\""]).unwrap_err();
    assert_eq!(err.field, "policy.camera");
    assert!(
        err.message
            .contains("no camera named `wrist`; cameras: top"),
        "{err}"
    );
    assert_eq!(
        err.from_override.as_deref(),
        Some("policy.camera=\"wrist\"")
    );

    let err = load(FILE, &["fake_section.level=9"]).unwrap_err();
    assert_eq!(err.field, "fake_section.level");
}

#[test]
fn unknown_kinds_list_the_known_ones() {
    let text = FILE.replace("kind = \"fake_arm\"", "kind = \"fake_ram\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "drivers[0].kind");
    assert!(
        err.message
            .contains("unknown kind `fake_ram`; known kinds: `fake_arm`"),
        "{err}"
    );
    assert_eq!(err.line, line_of(&text, "fake_ram"));

    let text = FILE.replace("kind = \"fake_policy\"\n", "");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "policy");
    assert!(
        err.message
            .contains("missing field `kind` (one of `fake_policy`)"),
        "{err}"
    );

    let text = format!("{FILE}\n[fake_sectoin]\nlevel = 1\n");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "fake_sectoin");
    assert!(
        err.message.contains("unknown field `fake_sectoin`"),
        "{err}"
    );
    assert!(
        err.message.contains("fake_section"),
        "names registered sections: {err}"
    );
}

#[test]
fn core_fields_keep_their_positions() {
    let text = FILE.replace("rate_hz = 100.0", "rate_hz = 100.0\nrat_hz = 5");
    let err = load(&text, &[]).unwrap_err();
    assert!(err.message.contains("unknown field `rat_hz`"), "{err}");
    assert_eq!(err.field, "control.rat_hz");
    assert_eq!(
        (err.line, err.column),
        (line_of(&text, "rat_hz = 5"), 1),
        "{err}"
    );
    let text = FILE.replace("rate_hz = 100.0", "rate_hz = \"fast\"");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "control.rate_hz");
    assert_eq!(err.line, line_of(&text, "\"fast\""), "{err}");
}

#[test]
fn the_old_format_is_explained() {
    let old = FILE
        .replace("[[drivers]]\nkind = \"fake_arm\"", "[[drivers.fake_arm]]")
        .replace("[policy]\nkind = \"fake_policy\"", "[policy.fake_policy]");
    let err = load(&old, &[]).unwrap_err();
    assert_eq!(err.field, "drivers");
    assert!(
        err.message
            .contains("`[[drivers.fake_arm]]` is the old format"),
        "{err}"
    );
    assert!(err.message.contains("kind = \"fake_arm\""), "{err}");
    assert!(err.message.contains("kind = \"fake_policy\""), "{err}");
    assert!(err.message.contains("[execution]"), "{err}");
    let old = FILE.replace("[policy]\nkind = \"fake_policy\"", "[policy.fake_policy]");
    let err = load(&old, &[]).unwrap_err();
    assert_eq!(err.field, "policy.fake_policy");
    assert!(
        err.message
            .contains("`[policy.fake_policy]` is the old format"),
        "{err}"
    );
}

#[test]
fn execution_is_checked_against_the_policy() {
    let err = load(FILE, &["execution.replan_after=9"]).unwrap_err();
    assert_eq!(err.field, "execution.replan_after");
    assert!(
        err.message.contains("1..=8 (the policy's horizon)"),
        "{err}"
    );
    let err = load(FILE, &["execution.action_rate_hz=200"]).unwrap_err();
    assert_eq!(err.field, "execution.action_rate_hz");
    assert!(load(FILE, &["execution.replan_after=8"]).is_ok());
}

#[test]
fn the_execution_strategy_checks_its_own_fields() {
    let launch = load(FILE, &[]).unwrap();
    assert_eq!(launch.executor().strategy, "replace");
    let launch = load(FILE, &["execution.first_action=4"]).unwrap();
    assert_eq!(launch.executor().params["first_action"], 4);
    let err = load(FILE, &["execution.first_action=5"]).unwrap_err();
    assert_eq!(err.field, "execution.first_action");
    assert!(
        err.message.contains("more than the policy's horizon 8"),
        "{err}"
    );
    let err = load(FILE, &["execution.strategy=\"bidirectional\""]).unwrap_err();
    assert_eq!(err.field, "execution.strategy");
    assert!(
        err.message.contains(
            "unknown strategy `bidirectional`; strategies: `aggregate`, `replace`, `rtc`, \
             `synchronous` or `temporal_ensemble`"
        ),
        "{err}"
    );
    // Each strategy checks its own fields, with the file's position.
    let launch = load(
        FILE,
        &[
            "execution.strategy=\"aggregate\"",
            "execution.aggregate_fn=\"conservative\"",
        ],
    )
    .unwrap();
    assert_eq!(launch.executor().params["aggregate_fn"], "conservative");
    assert_eq!(launch.executor().params["chunk_size_threshold"], 0.5);
    let err = load(
        FILE,
        &[
            "execution.strategy=\"aggregate\"",
            "execution.aggregate_fn=\"median\"",
        ],
    )
    .unwrap_err();
    assert_eq!(err.field, "execution.aggregate_fn");
    let err = load(
        FILE,
        &[
            "execution.strategy=\"aggregate\"",
            "execution.chunk_size_threshold=1.5",
        ],
    )
    .unwrap_err();
    assert_eq!(err.field, "execution.chunk_size_threshold");
    let err = load(
        FILE,
        &[
            "execution.strategy=\"temporal_ensemble\"",
            "execution.m=-1.0",
        ],
    )
    .unwrap_err();
    assert_eq!(err.field, "execution.m");
    let err = load(
        FILE,
        &[
            "execution.strategy=\"temporal_ensemble\"",
            "execution.max_in_flight=9",
        ],
    )
    .unwrap_err();
    assert_eq!(err.field, "execution.max_in_flight");
    let launch = load(FILE, &["execution.strategy=\"synchronous\""]).unwrap();
    assert_eq!(launch.executor().strategy, "synchronous");
    let err = load(FILE, &["execution.frist_action=1"]).unwrap_err();
    assert_eq!(err.field, "execution.frist_action");
    assert!(err.message.contains("unknown field"), "{err}");
}

#[test]
fn drivers_need_one_arm_and_unique_names() {
    let two = format!("{FILE}\n[[drivers]]\nkind = \"fake_arm\"\nname = \"arm\"\n");
    let err = load(&two, &[]).unwrap_err();
    assert_eq!(err.field, "drivers[1].name");
    assert!(err.message.contains("driver names must be unique"), "{err}");
    let two = format!("{FILE}\n[[drivers]]\nkind = \"fake_arm\"\nname = \"arm2\"\n");
    let err = load(&two, &[]).unwrap_err();
    assert_eq!(err.field, "drivers");
    assert!(
        err.message.contains("need exactly one arm driver, found 2"),
        "{err}"
    );
}

#[test]
fn overrides_reach_kind_tables_and_array_elements() {
    let launch = load(FILE, &["drivers[0].name=\"left\"", "seed=7"]).unwrap();
    assert_eq!(launch.drivers[0].name(), "left");
    assert_eq!(launch.config.seed, 7);
    let err = load(FILE, &["drivers[3].name=\"x\""]).unwrap_err();
    assert!(err.message.contains("no element [3]"), "{err}");
}

#[test]
fn the_schema_names_the_sections_and_the_registry_the_kinds() {
    let schema = json_schema().to_string();
    for section in [
        "robot",
        "control",
        "execution",
        "drivers",
        "policy",
        "safety",
    ] {
        assert!(schema.contains(section), "{section}");
    }
    let kinds = registry().kind_schemas();
    assert!(kinds["drivers"]["fake_arm"].is_object());
    assert!(kinds["policies"]["fake_policy"].is_object());
    assert!(kinds["sections"]["fake_section"].is_object());
}

#[test]
fn line_column_counts_from_one() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_column("é\nx", 3), (2, 1));
}

#[test]
fn recording_is_checked_with_positions() {
    let text = format!(
        "{FILE}\n[recording]\nfps = 10\ncameras = [\"top\"]\n\n[recording.reset]\njoint_positions = [0.5]\n"
    );
    let launch = load(&text, &[]).unwrap();
    assert_eq!(launch.recording_fps(), 10);
    // Every bad value names its field and where it is.
    for (set, field, says) in [
        (
            "recording.fps=1000",
            "recording.fps",
            "at most control.rate_hz",
        ),
        (
            "recording.cameras=[\"wrist\"]",
            "recording.cameras[0]",
            "no camera stream `wrist`",
        ),
        (
            "recording.reset.joint_positions=[2.0]",
            "recording.reset.joint_positions[0]",
            "must stay in [-1, 1]",
        ),
        (
            "recording.reset.joint_positions=[0.0, 0.0]",
            "recording.reset.joint_positions",
            "one position per joint",
        ),
        (
            "recording.reset.speed=-1",
            "recording.reset.speed",
            "must be in",
        ),
        (
            "recording.episode_time_s=nan",
            "recording.episode_time_s",
            "must be in",
        ),
        ("recording.episodes=0", "recording.episodes", "at least 1"),
    ] {
        let err = load(&text, &[set]).unwrap_err();
        assert_eq!(err.field, field, "{set}: {err}");
        assert!(err.message.contains(says), "{set}: {err}");
    }
    let text = text.replace("fps = 10", "fps = 10\nepisode = 3");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.field, "recording.episode");
    assert_eq!(err.line, line_of(&text, "episode = 3"), "{err}");
}
