//! reflex-runtime: the deterministic control loop and everything the tick touches.
//!
//! Follow one tick through these modules, in order:
//! [`clock`] wakes the loop, [`slot`] hands it the newest sensor samples,
//! [`executor`] picks the action for this tick from the active chunk, [`safety`]
//! limits it, [`mailbox`] carries the command to the arm driver and any [`taps`],
//! [`log`] records the step, and [`control`] ties them together and asks the
//! [`policy`] worker for the next chunk.

pub mod alloc_probe;
pub mod clock;
pub mod control;
pub mod delay;
pub mod driver;
pub mod executor;
pub mod files;
pub mod gripper;
pub mod history;
pub mod ik;
pub mod launch;
pub mod log;
pub mod mailbox;
pub mod npy;
pub mod operator;
pub mod policy;
pub mod prompt;
pub mod ratelimit;
pub mod realtime;
pub mod recording;
pub mod registry;
pub mod robot_model;
pub mod safety;
pub mod slot;
pub mod stage;
pub mod stats;
pub mod status;
pub mod strategies;
pub mod stream;
pub mod taps;
pub mod tare;
pub mod targets;
pub mod teleop;
pub mod types;

pub use types::{ActionChunk, Image, JointCommand, JointState, MAX_JOINTS, Observation};
