//! The kind registry: how drivers, policies and launch-file sections plug into the
//! runtime without the runtime knowing any of them.
//!
//! A launch file names kinds (`[[drivers]] kind = "<driver>"`, `[policy] kind =
//! "<policy>"`); each kind is registered once by the crate that implements it and
//! receives its table as a [`KindTable`]: it deserializes its own typed config,
//! reports errors at `file:line:col: field` through the table, resolves paths, and
//! returns a checked spec. `reflex check` and `reflex run` go through the same
//! checks, so a launch file `check` accepts cannot fail `run` at start-up.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::driver::{Driver, DriverError};
use crate::executor::{Executor, ExecutorParams};
use crate::launch::{Launch, LaunchError};
use crate::policy::LoadedPolicy;
use crate::stage::ChunkStage;
use crate::stream::StreamDecl;

/// A table of the launch file handed to the kind that owns it.
pub struct KindTable<'a> {
    launch: &'a Launch,
    /// Where the table is in the file (`drivers[1]`, `policy`, `onnxruntime`).
    at: String,
    table: toml::Table,
}

impl<'a> KindTable<'a> {
    pub fn new(launch: &'a Launch, at: impl Into<String>, table: toml::Table) -> Self {
        Self {
            launch,
            at: at.into(),
            table,
        }
    }

    /// The launch file as checked so far: robot, control, execution, safety, the
    /// sections and (for policies) the drivers and their streams.
    pub fn launch(&self) -> &'a Launch {
        self.launch
    }

    /// The table's path in the file, e.g. `drivers[1]`.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// The full path of one of the table's fields (`inputs[0].shape` ->
    /// `policy.inputs[0].shape`).
    pub fn field(&self, field: &str) -> String {
        match (self.at.is_empty(), field.is_empty()) {
            (_, true) => self.at.clone(),
            (true, false) => field.to_string(),
            (false, false) if field.starts_with('[') => format!("{}{field}", self.at),
            (false, false) => format!("{}.{field}", self.at),
        }
    }

    /// Deserializes the table into the kind's typed config; errors name the field
    /// and its position, and unknown fields list the known ones (use
    /// `#[serde(deny_unknown_fields)]`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, LaunchError> {
        let value = toml::Value::Table(self.table.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            self.error_at(&path, e.into_inner().message().to_string())
        })
    }

    /// An error about one of the table's fields (`""`: the table itself).
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> LaunchError {
        self.launch.error_at(&self.field(field), message)
    }

    /// Resolves a path from the launch file against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.launch.resolve(path)
    }

    /// Checks that a file the table names exists, is a regular file and is at most
    /// `limit` bytes; returns its resolved path. `what` reads like "model file".
    pub fn check_file(
        &self,
        field: &str,
        path: &Path,
        what: &str,
        limit: u64,
    ) -> Result<PathBuf, LaunchError> {
        let resolved = self.resolve(path);
        match crate::files::check_regular(&resolved, limit) {
            Ok(_) => Ok(resolved),
            Err(crate::files::FileError::NotFound { .. }) => {
                Err(self.error_at(field, format!("{what} not found: {}", resolved.display())))
            }
            Err(e) => Err(self.error_at(field, format!("{what} {e}"))),
        }
    }

    /// Checks a name that ends up in keys, thread names and log lines.
    pub fn check_name(&self, field: &str, name: &str) -> Result<(), LaunchError> {
        crate::launch::check_name(name).map_err(|message| self.error_at(field, message))
    }
}

/// A driver kind: turns its `[[drivers]]` table into a checked [`DriverSpec`].
pub trait DriverKind: Send + Sync {
    /// The `kind = "..."` that selects it.
    fn kind(&self) -> &'static str;
    /// JSON schema of its table (for editors; `reflex schema`).
    fn schema(&self) -> serde_json::Value;
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError>;
}

/// A checked driver: what it will produce, and how to build it.
pub trait DriverSpec: Send + Sync + fmt::Debug {
    fn kind(&self) -> &'static str;
    fn name(&self) -> &str;
    /// The streams the driver will produce (checked against policy inputs).
    fn streams(&self) -> Vec<StreamDecl>;
    /// True for the driver that takes the joint commands (exactly one per launch file).
    fn is_arm(&self) -> bool;
    /// Where the driver's samples come from, for `reflex check` (a device, a
    /// file, a key); the default names the kind only.
    fn source(&self, _launch: &Launch) -> Option<String> {
        None
    }
    /// Builds the driver (not yet opened).
    fn build(&self, launch: &Launch) -> Result<Box<dyn Driver>, DriverError>;
    /// The checked config, for tools that need the concrete kind.
    fn as_any(&self) -> &dyn Any;
}

/// A policy kind: turns the `[policy]` table into a checked [`PolicySpec`].
pub trait PolicyKind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn schema(&self) -> serde_json::Value;
    /// Called after the drivers and sections are checked: the table can check its
    /// inputs against [`Launch::streams`] and read sections with [`Launch::section`].
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError>;
}

pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// A checked policy.
pub trait PolicySpec: Send + Sync + fmt::Debug {
    fn kind(&self) -> &'static str;
    /// Actions per chunk.
    fn horizon(&self) -> usize;
    /// Observations the policy conditions on, the current one included (LeRobot's
    /// `n_obs_steps`); the loop keeps that many, one action period apart.
    fn history(&self) -> usize {
        1
    }
    /// Candidate chunks one inference samples (what `[[stages]]` choose from).
    fn candidates(&self) -> usize {
        1
    }
    /// True when the policy's sampler can continue the executor's plan
    /// (`[execution] strategy = "rtc"`): it reads the observation's `committed`
    /// rows and `expected_delay_ticks`.
    fn real_time_chunking(&self) -> bool {
        false
    }
    /// The main model file (for messages).
    fn model(&self) -> PathBuf;
    /// Loads the model and checks it against the table; errors about the launch
    /// file are [`LaunchError`]s (downcast to tell them apart).
    fn load(&self, launch: &Launch) -> Result<LoadedPolicy, LoadError>;
    /// The typed config, for tools that need more than running it (`reflex infer`).
    fn as_any(&self) -> &dyn Any;
}

/// An execution strategy: `[execution] strategy = "<name>"` and the strategy's
/// own fields of `[execution]`.
pub trait StrategyKind: Send + Sync {
    fn name(&self) -> &'static str;
    /// JSON schema of the strategy's own fields.
    fn schema(&self) -> serde_json::Value;
    /// Checks the strategy's fields (the table holds `[execution]` without
    /// `action_rate_hz`, `replan_after` and `strategy`) and returns them as JSON:
    /// they are written to the run log, and replay builds from them.
    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError>;
    /// Builds the executor from checked parameters (at start and at replay).
    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String>;
}

/// A chunk stage kind: `[[stages]] kind = "<name>"`.
pub trait StageKind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn schema(&self) -> serde_json::Value;
    /// Called after the policy is checked (`table.launch().policy()`).
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn StageSpec>, LaunchError>;
}

/// A checked chunk stage.
pub trait StageSpec: Send + Sync + fmt::Debug {
    fn kind(&self) -> &'static str;
    /// Builds the stage (loading what it needs, e.g. a value model).
    fn build(&self, launch: &Launch) -> Result<Box<dyn ChunkStage>, LoadError>;
}

/// A top-level launch-file section owned by a crate (`[onnxruntime]`).
pub trait SectionKind: Send + Sync {
    /// The section's name: `[<name>]`.
    fn section(&self) -> &'static str;
    fn schema(&self) -> serde_json::Value;
    /// Checks the table (an empty one when the file has none) and returns the
    /// typed config, read back with [`Launch::section`].
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn Any + Send + Sync>, LaunchError>;
}

/// Every kind a binary knows, by name.
#[derive(Clone)]
pub struct Registry {
    drivers: BTreeMap<&'static str, Arc<dyn DriverKind>>,
    policies: BTreeMap<&'static str, Arc<dyn PolicyKind>>,
    sections: BTreeMap<&'static str, Arc<dyn SectionKind>>,
    strategies: BTreeMap<&'static str, Arc<dyn StrategyKind>>,
    stages: BTreeMap<&'static str, Arc<dyn StageKind>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("drivers", &self.drivers.keys().collect::<Vec<_>>())
            .field("policies", &self.policies.keys().collect::<Vec<_>>())
            .field("sections", &self.sections.keys().collect::<Vec<_>>())
            .field("strategies", &self.strategies.keys().collect::<Vec<_>>())
            .field("stages", &self.stages.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// A registry with the runtime's built-in execution strategies.
    pub fn new() -> Self {
        let mut registry = Self {
            drivers: BTreeMap::new(),
            policies: BTreeMap::new(),
            sections: BTreeMap::new(),
            strategies: BTreeMap::new(),
            stages: BTreeMap::new(),
        };
        registry
            .strategy(crate::strategies::ReplaceStrategy)
            .strategy(crate::strategies::SynchronousStrategy)
            .strategy(crate::strategies::AggregateStrategy)
            .strategy(crate::strategies::TemporalEnsembleStrategy)
            .strategy(crate::strategies::RtcStrategy);
        registry
    }

    /// Registers a driver kind; a second kind of the same name replaces the first.
    pub fn driver(&mut self, kind: impl DriverKind + 'static) -> &mut Self {
        self.drivers.insert(kind.kind(), Arc::new(kind));
        self
    }

    pub fn policy(&mut self, kind: impl PolicyKind + 'static) -> &mut Self {
        self.policies.insert(kind.kind(), Arc::new(kind));
        self
    }

    pub fn section(&mut self, kind: impl SectionKind + 'static) -> &mut Self {
        self.sections.insert(kind.section(), Arc::new(kind));
        self
    }

    pub fn strategy(&mut self, kind: impl StrategyKind + 'static) -> &mut Self {
        self.strategies.insert(kind.name(), Arc::new(kind));
        self
    }

    pub fn stage(&mut self, kind: impl StageKind + 'static) -> &mut Self {
        self.stages.insert(kind.kind(), Arc::new(kind));
        self
    }

    pub fn find_stage(&self, kind: &str) -> Option<&Arc<dyn StageKind>> {
        self.stages.get(kind)
    }

    pub fn stage_kinds(&self) -> Vec<&'static str> {
        self.stages.keys().copied().collect()
    }

    pub fn find_strategy(&self, name: &str) -> Option<&Arc<dyn StrategyKind>> {
        self.strategies.get(name)
    }

    pub fn strategy_names(&self) -> Vec<&'static str> {
        self.strategies.keys().copied().collect()
    }

    /// The executor a run log's header names (for replay).
    pub fn executor_from_header(
        &self,
        strategy: &str,
        params: &serde_json::Value,
    ) -> Result<crate::executor::ExecutorFactory, String> {
        let kind = self.find_strategy(strategy).ok_or_else(|| {
            format!(
                "the log was written with execution strategy `{strategy}`, which this binary \
                 does not have (strategies: {})",
                one_of(&self.strategy_names())
            )
        })?;
        Ok(crate::executor::ExecutorFactory::new(
            kind.clone(),
            params.clone(),
        ))
    }

    pub fn find_driver(&self, kind: &str) -> Option<&Arc<dyn DriverKind>> {
        self.drivers.get(kind)
    }

    pub fn find_policy(&self, kind: &str) -> Option<&Arc<dyn PolicyKind>> {
        self.policies.get(kind)
    }

    pub fn sections(&self) -> impl Iterator<Item = &Arc<dyn SectionKind>> {
        self.sections.values()
    }

    pub fn driver_kinds(&self) -> Vec<&'static str> {
        self.drivers.keys().copied().collect()
    }

    pub fn policy_kinds(&self) -> Vec<&'static str> {
        self.policies.keys().copied().collect()
    }

    pub fn section_names(&self) -> Vec<&'static str> {
        self.sections.keys().copied().collect()
    }

    /// The schemas of every kind, for `reflex schema`.
    pub fn kind_schemas(&self) -> serde_json::Value {
        let map = |entries: Vec<(&str, serde_json::Value)>| {
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        };
        serde_json::json!({
            "drivers": map(self.drivers.iter().map(|(k, v)| (*k, v.schema())).collect()),
            "policies": map(self.policies.iter().map(|(k, v)| (*k, v.schema())).collect()),
            "sections": map(self.sections.iter().map(|(k, v)| (*k, v.schema())).collect()),
            "strategies": map(self.strategies.iter().map(|(k, v)| (*k, v.schema())).collect()),
            "stages": map(self.stages.iter().map(|(k, v)| (*k, v.schema())).collect()),
        })
    }
}

/// The JSON schema of a config type, for [`DriverKind::schema`] and friends.
pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
}

/// `a, b or c` for messages that list the known kinds.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => "none registered".into(),
        [one] => format!("`{one}`"),
        [rest @ .., last] => format!(
            "{} or `{last}`",
            rest.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
