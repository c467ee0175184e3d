//! ROS 2 through rmw_zenoh: reflex talks to ROS 2 nodes directly over zenoh,
//! no ROS installation needed. CDR messages ([`msgs`]), REP 2011 type hashes
//! ([`type_hash`]), rmw_zenoh's key expressions, attachments and liveliness
//! tokens ([`rmw_zenoh`]), and the `ros2_arm` driver for ros2_control arms.

pub mod cdr;
pub mod msgs;
pub mod rmw_zenoh;
pub mod ros2_arm;
pub mod type_hash;

/// Registers `[[drivers]] kind = "ros2_arm"`.
pub fn register(registry: &mut reflex_runtime::registry::Registry) {
    registry.driver(ros2_arm::Ros2ArmKind);
}
