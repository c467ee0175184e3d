//! An arm reached over zenoh: the loop's commands are published (in the
//! `reflex_runtime::wire` format) on the command key, and joint states that the
//! robot side publishes on the state key feed the loop's latest-value slot.
//!
//! States are stamped on arrival with this machine's monotonic clock, so the
//! watchdog measures how long ago the robot was last heard from, independent of
//! the robot's own clock.
//!
//! Bad messages (undecodable, wrong number of joints) are counted for the run
//! summary and logged rate-limited: a peer flooding the state key cannot flood the
//! log, and no log line carries more than a short excerpt of a message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::wire;
use reflex_runtime::driver::{ArmPorts, Driver, DriverContext, DriverError, DriverPorts};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::mailbox::Mailbox;
use reflex_runtime::ratelimit::{WarnLimiter, suppressed_note};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::latest_slot;
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::types::{JointCommand, JointState, monotonic_ns};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zenoh::Wait;

/// `[[drivers]] kind = "zenoh_arm"`: an arm reached over zenoh, commands out and
/// joint states in.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZenohArmConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// Default `<prefix>/<robot>/joint_commands`.
    pub command_key: Option<String>,
    /// Default `<prefix>/<robot>/joint_states`.
    pub state_key: Option<String>,
    /// Where the gripper's commands go (`[robot.gripper]`); default
    /// `<prefix>/<robot>/gripper_command`.
    pub gripper_key: Option<String>,
}

fn default_name() -> String {
    "arm".into()
}

/// Registers `zenoh_arm`.
pub struct ZenohArmKind;

#[derive(Debug)]
pub struct ZenohArmSpec {
    pub config: ZenohArmConfig,
    joints: usize,
}

impl DriverKind for ZenohArmKind {
    fn kind(&self) -> &'static str {
        "zenoh_arm"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ZenohArmConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: ZenohArmConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        for (field, key) in [
            ("command_key", &config.command_key),
            ("state_key", &config.state_key),
            ("gripper_key", &config.gripper_key),
        ] {
            if let Some(key) = key {
                crate::bus::check_exact_key(key)
                    .map_err(|message| table.error_at(field, message))?;
            }
        }
        let launch = table.launch();
        if !crate::config(launch).enabled {
            return Err(table.error_at(
                "",
                "an arm over zenoh needs the zenoh session: set zenoh.enabled = true",
            ));
        }
        Ok(Arc::new(ZenohArmSpec {
            config,
            joints: launch.config.robot.joints.len(),
        }))
    }
}

impl DriverSpec for ZenohArmSpec {
    fn kind(&self) -> &'static str {
        "zenoh_arm"
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![StreamDecl::joint_state(&self.config.name, self.joints)]
    }
    fn is_arm(&self) -> bool {
        true
    }
    fn build(&self, launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        let zenoh = crate::config(launch);
        Ok(Box::new(ZenohArm::new(
            self.config.clone(),
            zenoh.key_prefix,
            zenoh.command_format,
        )))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct ZenohArm {
    cfg: ZenohArmConfig,
    key_prefix: String,
    session: Option<zenoh::Session>,
    command_key: String,
    /// Set when the robot has a gripper.
    gripper_key: Option<String>,
    command_format: u16,
    commands: Option<Arc<Mailbox<JointCommand>>>,
    subscriber: Option<zenoh::pubsub::Subscriber<()>>,
    bad_states: Arc<WarnLimiter>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZenohArm {
    /// `key_prefix` and `command_format` come from the launch file's `[zenoh]`.
    pub fn new(cfg: ZenohArmConfig, key_prefix: String, command_format: u16) -> Self {
        Self {
            cfg,
            key_prefix,
            session: None,
            command_key: String::new(),
            gripper_key: None,
            command_format,
            commands: None,
            subscriber: None,
            bad_states: Arc::new(WarnLimiter::for_network()),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }

    fn zenoh(&self, source: zenoh::Error) -> DriverError {
        DriverError::Source {
            driver: self.cfg.name.clone(),
            source,
        }
    }
}

impl Driver for ZenohArm {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        let session = ctx
            .services
            .get::<zenoh::Session>()
            .cloned()
            .ok_or_else(|| self.failed("needs the zenoh bus (zenoh.enabled = true)"))?;
        let key = |leaf: &str| format!("{}/{}/{leaf}", self.key_prefix, ctx.robot);
        self.command_key = self
            .cfg
            .command_key
            .clone()
            .unwrap_or_else(|| key("joint_commands"));
        self.gripper_key = ctx.gripper.as_ref().map(|_| {
            self.cfg
                .gripper_key
                .clone()
                .unwrap_or_else(|| key("gripper_command"))
        });
        let state_key = self
            .cfg
            .state_key
            .clone()
            .unwrap_or_else(|| key("joint_states"));
        let (writer, reader) = latest_slot(&JointState::empty(ctx.joints));
        let writer = Mutex::new(writer);
        let joints = ctx.joints;
        let driver = self.cfg.name.clone();
        let bad_states = self.bad_states.clone();
        let subscriber = session
            .declare_subscriber(state_key.clone())
            .callback(move |sample| {
                let payload = sample.payload().to_bytes();
                let problem = match wire::decode_state(&payload) {
                    Ok(mut state) if state.joints == joints => {
                        state.stamp_ns = monotonic_ns();
                        writer
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .publish_with(|slot| *slot = state);
                        return;
                    }
                    Ok(state) => format!("state with {} joints, expected {joints}", state.joints),
                    Err(e) => format!("undecodable joint state ({} bytes): {e}", payload.len()),
                };
                if let Some(suppressed) = bad_states.hit() {
                    tracing::warn!(
                        "{driver}: {problem}; {} bad states so far{}",
                        bad_states.total(),
                        suppressed_note(suppressed)
                    );
                }
            })
            .wait()
            .map_err(|e| self.zenoh(e))?;
        let commands = Mailbox::new(64);
        self.subscriber = Some(subscriber);
        self.commands = Some(commands.clone());
        self.session = Some(session);
        Ok(DriverPorts {
            arm: Some(ArmPorts {
                state: reader,
                commands,
                publishes_itself: true,
                bad_messages: self.bad_states.counter(),
            }),
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        let (Some(session), Some(commands)) = (self.session.clone(), self.commands.clone()) else {
            return Err(self.failed("start before open"));
        };
        let publisher = session
            .declare_publisher(self.command_key.clone())
            // Every command reaches the robot; only the publisher thread waits.
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .express(true)
            .wait()
            .map_err(|e| self.zenoh(e))?;
        let gripper_publisher = self
            .gripper_key
            .clone()
            .map(|key| {
                session
                    .declare_publisher(key)
                    .congestion_control(zenoh::qos::CongestionControl::Block)
                    .express(true)
                    .wait()
            })
            .transpose()
            .map_err(|e| self.zenoh(e))?;
        let format = self.command_format;
        let mut buf = Vec::with_capacity(512);
        let thread = spawn_command_publisher(
            format!("reflex-zenoh-{}", self.cfg.name),
            self.cfg.name.clone(),
            commands,
            self.stop.clone(),
            move |cmd| {
                wire::encode_command(cmd, wire::unix_ns(), format, &mut buf);
                let mut sent = publisher.put(buf.clone()).wait();
                if let Some(gripper) = &gripper_publisher
                    && wire::encode_gripper_command(cmd, wire::unix_ns(), &mut buf).is_some()
                {
                    sent = sent.and(gripper.put(buf.clone()).wait());
                }
                sent
            },
        )
        .map_err(|e| self.failed(format!("cannot start publisher thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            thread
                .join()
                .map_err(|_| self.failed("publisher thread panicked"))?;
        }
        if let Some(subscriber) = self.subscriber.take() {
            let _ = subscriber.undeclare().wait();
        }
        let bad = self.bad_states.total();
        if bad > 0 {
            tracing::warn!(
                "{}: {bad} bad joint states in total{}",
                self.cfg.name,
                suppressed_note(self.bad_states.suppressed())
            );
        }
        Ok(())
    }
}

/// Hands every command of `commands` to `send` on a thread of its own (only it
/// waits on the network) until `stop` is set and the mailbox is drained; failed
/// sends are logged rate-limited, as `<driver>: publishing command failed`.
pub fn spawn_command_publisher(
    thread: String,
    driver: String,
    commands: Arc<Mailbox<JointCommand>>,
    stop: Arc<AtomicBool>,
    mut send: impl FnMut(&JointCommand) -> zenoh::Result<()> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(thread).spawn(move || {
        let failures = WarnLimiter::for_network();
        while !stop.load(Ordering::Acquire) || !commands.is_empty() {
            let Some(cmd) = commands.recv_timeout(Duration::from_millis(20)) else {
                continue;
            };
            if let Err(e) = send(&cmd)
                && let Some(left_out) = failures.hit()
            {
                tracing::warn!(
                    "{driver}: publishing command failed: {e}{}",
                    suppressed_note(left_out)
                );
            }
        }
    })
}
