//! The driver contract: an explicit lifecycle (open, start, stop) and ports through
//! which the control loop reads the newest samples and hands over commands without
//! ever blocking.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::mailbox::Mailbox;
use crate::prompt::PromptCell;
use crate::slot::SlotReader;
use crate::stream::SourceCounters;
use crate::types::{Image, JointCommand, JointState, TensorSample};

/// What every driver is told when it is opened.
#[derive(Clone)]
pub struct DriverContext {
    /// Simulated clock: no threads; `sim_step` is called once per tick instead.
    pub simulated: bool,
    pub seed: u64,
    pub joints: usize,
    /// `[robot.gripper]`: an arm driver commands and reports it too.
    pub gripper: Option<crate::gripper::GripperConfig>,
    pub robot: String,
    /// Shared handles the binary opened before the drivers (e.g. the run's zenoh
    /// session), found by type.
    pub services: Services,
}

/// Values shared with drivers, one per type.
#[derive(Clone, Default)]
pub struct Services {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Services {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.by_type.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.by_type.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// The ends of an arm the control loop holds.
pub struct ArmPorts {
    /// Newest measured joint state.
    pub state: SlotReader<JointState>,
    /// Where commands go; the driver's thread drains it.
    pub commands: Arc<Mailbox<JointCommand>>,
    /// True when the driver itself publishes the commands and states on the bus
    /// (a tap then does not mirror them).
    pub publishes_itself: bool,
    /// Messages from the robot the driver refused (undecodable, wrong number of
    /// joints), for the run summary.
    pub bad_messages: Arc<AtomicU64>,
}

pub struct CameraPort {
    pub name: String,
    pub frames: SlotReader<Image>,
    pub width: usize,
    pub height: usize,
}

/// A tensor or audio stream's newest sample.
pub struct TensorPort {
    pub name: String,
    pub samples: SlotReader<TensorSample>,
    /// Values per sample.
    pub len: usize,
}

/// A text stream: the driver sets the cell whenever a new text arrives (the
/// inference thread reads it between inferences; the tick never does).
pub struct TextPort {
    pub name: String,
    pub text: PromptCell,
}

#[derive(Default)]
pub struct DriverPorts {
    pub arm: Option<ArmPorts>,
    pub cameras: Vec<CameraPort>,
    pub tensors: Vec<TensorPort>,
    pub texts: Vec<TextPort>,
    /// Teleoperation devices (interventions).
    pub teleop: Vec<crate::teleop::TeleopPort>,
    /// Per stream (by name), what the source says about its samples (repeated,
    /// dropped, corrupt, ...): on the status line and in the summary.
    pub counters: Vec<(String, Arc<SourceCounters>)>,
}

/// How one episode of a task went (drivers that know the task report these).
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeOutcome {
    pub index: usize,
    pub reached: bool,
    pub final_error: f64,
    pub time_to_reach_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskReport {
    pub task: String,
    pub tolerance: f64,
    pub episodes: Vec<EpisodeOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("driver `{driver}`: {message}")]
    Failed { driver: String, message: String },
    #[error("driver `{driver}`: {source}")]
    Source {
        driver: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DriverError {
    pub fn failed(driver: &str, message: impl Into<String>) -> Self {
        Self::Failed {
            driver: driver.to_string(),
            message: message.into(),
        }
    }
}

pub trait Driver: Send {
    fn name(&self) -> &str;
    /// Allocates buffers and connects; returns the ports the loop reads and writes.
    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError>;
    /// Starts the driver's threads (wall clock only).
    fn start(&mut self) -> Result<(), DriverError>;
    /// Under the simulated clock: advance to `now_ns` and publish samples due by then.
    fn sim_step(&mut self, _now_ns: u64) -> Result<(), DriverError> {
        Ok(())
    }
    /// Stops threads and releases the device; safe to call twice.
    fn stop(&mut self) -> Result<(), DriverError>;
    /// How the task went, for drivers that know it (the simulated arm).
    fn task_report(&self) -> Option<TaskReport> {
        None
    }
    /// A recorded episode begins (`[recording]`): a simulator starts a new task
    /// instance. Called on the tick: it must not block or allocate.
    fn episode_begins(&mut self) {}
    /// A recorded episode ended (its outcome is as the world stands now).
    /// Called on the tick, like [`Self::episode_begins`].
    fn episode_ends(&mut self) {}
}
