//! `[[drivers]] kind = "ros2_arm"`: any ros2_control arm, through rmw_zenoh.
//! Joint states come from `/joint_states` (joint_state_broadcaster), matched
//! to the launch file's joints by name; every tick's safety-filtered command
//! goes to joint_trajectory_controller as a one-point `JointTrajectory`
//! (`command = "trajectory"`) or to forward_command_controller as a
//! `Float64MultiArray` (`command = "forward"`). The node and its endpoints
//! declare rmw_zenoh's liveliness tokens, so `ros2 node list` and
//! `ros2 topic list` show them, and every sample carries rmw_zenoh's attachment.
//!
//! Only filtered commands leave: a chunk's later actions have not passed the
//! safety filter yet, so they are never sent ahead as trajectory points.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use reflex_runtime::driver::{ArmPorts, Driver, DriverContext, DriverError, DriverPorts};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::mailbox::Mailbox;
use reflex_runtime::ratelimit::{WarnLimiter, suppressed_note};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::latest_slot;
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::types::{JointCommand, JointState, monotonic_ns};
use reflex_zenoh::zenoh_arm::spawn_command_publisher;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zenoh::Wait;

use crate::cdr::Writer;
use crate::msgs::{self, Time, TrajectoryPoint};
use crate::rmw_zenoh::{self, Attachment, Endpoint, Node};
use crate::type_hash::{FLOAT64_MULTI_ARRAY, JOINT_STATE, JOINT_TRAJECTORY, MessageType};

/// Which controller takes the commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandInterface {
    /// `trajectory_msgs/msg/JointTrajectory` for joint_trajectory_controller:
    /// one point per tick (positions, velocities, accelerations), due
    /// `lookahead_ms` after it arrives.
    #[default]
    Trajectory,
    /// `std_msgs/msg/Float64MultiArray` of positions for a position
    /// forward_command_controller, joints in launch-file order.
    Forward,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ros2ArmConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// `ROS_DOMAIN_ID` of the ROS 2 system.
    #[serde(default)]
    pub domain_id: u32,
    /// reflex's node: its namespace and name, as ROS tools list it.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_node")]
    pub node_name: String,
    /// Where the arm's joint states arrive (relative names resolve in `namespace`).
    #[serde(default = "default_joint_states")]
    pub joint_states_topic: String,
    #[serde(default)]
    pub command: CommandInterface,
    /// Default `/joint_trajectory_controller/joint_trajectory` (trajectory) or
    /// `/forward_position_controller/commands` (forward).
    pub command_topic: Option<String>,
    /// A trajectory point's `time_from_start`, ms: the controller reaches it
    /// this long after it arrives (0: one control period).
    #[serde(default)]
    pub lookahead_ms: f64,
}

fn default_name() -> String {
    "arm".into()
}
fn default_namespace() -> String {
    "/".into()
}
fn default_node() -> String {
    "reflex".into()
}
fn default_joint_states() -> String {
    "/joint_states".into()
}

impl Ros2ArmConfig {
    fn command_topic(&self) -> String {
        let topic = self
            .command_topic
            .clone()
            .unwrap_or_else(|| match self.command {
                CommandInterface::Trajectory => {
                    "/joint_trajectory_controller/joint_trajectory".into()
                }
                CommandInterface::Forward => "/forward_position_controller/commands".into(),
            });
        rmw_zenoh::qualify(&self.namespace, &topic)
    }

    fn command_type(&self) -> &'static MessageType {
        match self.command {
            CommandInterface::Trajectory => &JOINT_TRAJECTORY,
            CommandInterface::Forward => &FLOAT64_MULTI_ARRAY,
        }
    }
}

/// Registers `ros2_arm`.
pub struct Ros2ArmKind;

#[derive(Debug)]
pub struct Ros2ArmSpec {
    config: Ros2ArmConfig,
    joint_names: Vec<String>,
    period: Duration,
}

impl DriverKind for Ros2ArmKind {
    fn kind(&self) -> &'static str {
        "ros2_arm"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<Ros2ArmConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: Ros2ArmConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        rmw_zenoh::check_name(&config.namespace, "namespace", false)
            .map_err(|e| table.error_at("namespace", e))?;
        rmw_zenoh::check_name(&config.node_name, "node name", true)
            .map_err(|e| table.error_at("node_name", e))?;
        rmw_zenoh::check_name(&config.joint_states_topic, "topic", false)
            .map_err(|e| table.error_at("joint_states_topic", e))?;
        if let Some(topic) = &config.command_topic {
            rmw_zenoh::check_name(topic, "topic", false)
                .map_err(|e| table.error_at("command_topic", e))?;
        }
        if config.domain_id > 232 {
            return Err(table.error_at("domain_id", "must be in 0..=232 (ROS_DOMAIN_ID)"));
        }
        if !(config.lookahead_ms.is_finite() && (0.0..=1000.0).contains(&config.lookahead_ms)) {
            return Err(table.error_at("lookahead_ms", "must be in 0..=1000 ms"));
        }
        let launch = table.launch();
        if launch.config.robot.gripper.is_some() {
            return Err(table.error_at(
                "",
                "drives the arm's joints only: command the gripper through its own driver",
            ));
        }
        let zenoh = reflex_zenoh::config(launch);
        if !zenoh.enabled {
            return Err(table.error_at(
                "",
                "ROS 2 runs over the zenoh session: set zenoh.enabled = true",
            ));
        }
        if zenoh.listen.iter().any(|e| e.ends_with(":7447")) {
            return Err(launch.error_at(
                "zenoh.listen",
                "rmw_zenoh's router listens on port 7447: connect to it instead \
                 (mode = \"client\", connect = [\"tcp/127.0.0.1:7447\"], listen = [])",
            ));
        }
        Ok(Arc::new(Ros2ArmSpec {
            config,
            joint_names: launch
                .config
                .robot
                .joints
                .iter()
                .map(|j| j.name.clone())
                .collect(),
            period: Duration::from_secs_f64(1.0 / launch.config.control.rate_hz),
        }))
    }
}

impl DriverSpec for Ros2ArmSpec {
    fn kind(&self) -> &'static str {
        "ros2_arm"
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![StreamDecl::joint_state(
            &self.config.name,
            self.joint_names.len(),
        )]
    }
    fn is_arm(&self) -> bool {
        true
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(Ros2Arm {
            config: self.config.clone(),
            joint_names: self.joint_names.clone(),
            lookahead: if self.config.lookahead_ms > 0.0 {
                Duration::from_secs_f64(self.config.lookahead_ms / 1e3)
            } else {
                self.period
            },
            session: None,
            node: None,
            tokens: Vec::new(),
            commands: None,
            subscriber: None,
            bad_states: Arc::new(WarnLimiter::for_network()),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct Ros2Arm {
    config: Ros2ArmConfig,
    joint_names: Vec<String>,
    lookahead: Duration,
    session: Option<zenoh::Session>,
    node: Option<Node>,
    /// The node's and its endpoints' liveliness tokens, held while running.
    tokens: Vec<zenoh::liveliness::LivelinessToken>,
    commands: Option<Arc<Mailbox<JointCommand>>>,
    subscriber: Option<zenoh::pubsub::Subscriber<()>>,
    bad_states: Arc<WarnLimiter>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Entity ids of the node's endpoints (unique within the session).
const STATE_SUBSCRIPTION: u32 = 1;
const COMMAND_PUBLISHER: u32 = 2;

/// QoS depth of both endpoints (the ROS 2 default profile's).
const DEPTH: usize = 10;

impl Ros2Arm {
    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.config.name, message)
    }

    fn zenoh(&self, source: zenoh::Error) -> DriverError {
        DriverError::Source {
            driver: self.config.name.clone(),
            source,
        }
    }

    fn token(&mut self, session: &zenoh::Session, key: String) -> Result<(), DriverError> {
        let token = session
            .liveliness()
            .declare_token(key)
            .wait()
            .map_err(|e| self.zenoh(e))?;
        self.tokens.push(token);
        Ok(())
    }
}

/// Reads a JointState into `state` by joint name; the reason when it cannot.
fn match_by_name(
    msg: &msgs::JointState,
    names: &[String],
    state: &mut JointState,
) -> Result<(), String> {
    if msg.position.len() != msg.name.len() {
        return Err(format!(
            "{} names but {} positions",
            msg.name.len(),
            msg.position.len()
        ));
    }
    let velocities = msg.velocity.len() == msg.name.len();
    for (i, name) in names.iter().enumerate() {
        let Some(at) = msg.name.iter().position(|n| n == name) else {
            return Err(format!(
                "no joint `{name}` (the message names {:?})",
                msg.name
            ));
        };
        let position = msg.position[at];
        if !position.is_finite() {
            return Err(format!("joint `{name}`'s position is {position}"));
        }
        state.position[i] = position;
        state.velocity[i] = if velocities { msg.velocity[at] } else { 0.0 };
    }
    Ok(())
}

impl Driver for Ros2Arm {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        let session = ctx
            .services
            .get::<zenoh::Session>()
            .cloned()
            .ok_or_else(|| self.failed("needs the zenoh session (zenoh.enabled = true)"))?;
        let node = Node {
            domain: self.config.domain_id,
            zid: session.zid().to_string(),
            id: 0,
            namespace: self.config.namespace.clone(),
            name: self.config.node_name.clone(),
        };
        let state_topic =
            rmw_zenoh::qualify(&self.config.namespace, &self.config.joint_states_topic);
        let (writer, reader) = latest_slot(&JointState::empty(ctx.joints));
        let writer = Mutex::new(writer);
        let names = self.joint_names.clone();
        let driver = self.config.name.clone();
        let bad_states = self.bad_states.clone();
        let mut message = msgs::JointState::default();
        let mut seq = 0;
        let subscriber = session
            .declare_subscriber(rmw_zenoh::topic_key(
                node.domain,
                &state_topic,
                &JOINT_STATE,
            ))
            .callback_mut(move |sample| {
                let payload = sample.payload().to_bytes();
                let problem = match message.decode_into(&payload) {
                    Ok(()) => {
                        let mut state = JointState::empty(names.len());
                        match match_by_name(&message, &names, &mut state) {
                            Ok(()) => {
                                seq += 1;
                                state.seq = seq;
                                state.stamp_ns = monotonic_ns();
                                writer
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .publish_with(|slot| *slot = state);
                                return;
                            }
                            Err(problem) => problem,
                        }
                    }
                    Err(e) => format!("undecodable JointState ({} bytes): {e}", payload.len()),
                };
                if let Some(suppressed) = bad_states.hit() {
                    tracing::warn!(
                        "{driver}: {problem}; {} bad joint states so far{}",
                        bad_states.total(),
                        suppressed_note(suppressed)
                    );
                }
            })
            .wait()
            .map_err(|e| self.zenoh(e))?;
        self.token(&session, node.token())?;
        self.token(
            &session,
            node.endpoint_token(
                STATE_SUBSCRIPTION,
                Endpoint::Subscription,
                &state_topic,
                &JOINT_STATE,
                &rmw_zenoh::default_qos(DEPTH),
            ),
        )?;
        let commands = Mailbox::new(64);
        self.subscriber = Some(subscriber);
        self.commands = Some(commands.clone());
        self.session = Some(session);
        self.node = Some(node);
        Ok(DriverPorts {
            arm: Some(ArmPorts {
                state: reader,
                commands,
                publishes_itself: false,
                bad_messages: self.bad_states.counter(),
            }),
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        let (Some(session), Some(commands), Some(node)) = (
            self.session.clone(),
            self.commands.clone(),
            self.node.clone(),
        ) else {
            return Err(self.failed("start before open"));
        };
        let topic = self.config.command_topic();
        let message = self.config.command_type();
        let token = node.endpoint_token(
            COMMAND_PUBLISHER,
            Endpoint::Publisher,
            &topic,
            message,
            &rmw_zenoh::default_qos(DEPTH),
        );
        let gid = rmw_zenoh::gid(&token);
        let publisher = session
            .declare_publisher(rmw_zenoh::topic_key(node.domain, &topic, message))
            // Reliable, as the default ROS 2 profile; only this thread waits.
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .express(true)
            .wait()
            .map_err(|e| self.zenoh(e))?;
        self.token(&session, token)?;
        let names = self.joint_names.clone();
        let interface = self.config.command;
        let time_from_start = Time::from_ns(self.lookahead.as_nanos() as u64);
        let mut cdr = Writer::default();
        let mut sequence_number = 0;
        let thread = spawn_command_publisher(
            format!("reflex-ros2-{}", self.config.name),
            self.config.name.clone(),
            commands,
            self.stop.clone(),
            move |cmd| {
                let n = cmd.joints;
                match interface {
                    CommandInterface::Trajectory => msgs::write_joint_trajectory(
                        &mut cdr,
                        // Zero: the controller starts the trajectory on arrival.
                        Time::default(),
                        "",
                        names.iter().map(String::as_str),
                        &[TrajectoryPoint {
                            positions: &cmd.position[..n],
                            velocities: &cmd.velocity[..n],
                            accelerations: &cmd.acceleration[..n],
                            time_from_start,
                        }],
                    ),
                    CommandInterface::Forward => {
                        msgs::write_float64_multi_array(&mut cdr, &cmd.position[..n])
                    }
                }
                sequence_number += 1;
                let attachment = Attachment {
                    sequence_number,
                    source_timestamp_ns: reflex_zenoh::wire::unix_ns() as i64,
                    gid,
                };
                publisher
                    .put(cdr.bytes.clone())
                    .attachment(attachment.encode().to_vec())
                    .wait()
            },
        )
        .map_err(|e| self.failed(format!("cannot start the publisher thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| self.failed("publisher thread panicked"))?;
        }
        if let Some(subscriber) = self.subscriber.take() {
            let _ = subscriber.undeclare().wait();
        }
        for token in self.tokens.drain(..) {
            let _ = token.undeclare().wait();
        }
        let bad = self.bad_states.total();
        if bad > 0 {
            tracing::warn!(
                "{}: {bad} bad joint states in total{}",
                self.config.name,
                suppressed_note(self.bad_states.suppressed())
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_states_are_matched_by_name_not_position() {
        let msg = msgs::JointState {
            name: vec![
                "wrist".into(),
                "finger".into(),
                "shoulder".into(),
                "elbow".into(),
            ],
            position: vec![0.3, 9.0, 0.1, 0.2],
            velocity: vec![3.0, 9.0, 1.0, 2.0],
            ..Default::default()
        };
        let names: Vec<String> = ["shoulder", "elbow", "wrist"].map(String::from).into();
        let mut state = JointState::empty(3);
        match_by_name(&msg, &names, &mut state).unwrap();
        assert_eq!(state.positions(), &[0.1, 0.2, 0.3]);
        assert_eq!(state.velocities(), &[1.0, 2.0, 3.0]);
        let missing: Vec<String> = ["shoulder", "knee"].map(String::from).into();
        let error = match_by_name(&msg, &missing, &mut JointState::empty(2)).unwrap_err();
        assert!(error.contains("no joint `knee`"), "{error}");
        let nan = msgs::JointState {
            position: vec![f64::NAN, 0.0, 0.0, 0.0],
            ..msg.clone()
        };
        assert!(match_by_name(&nan, &names, &mut JointState::empty(3)).is_err());
    }
}
