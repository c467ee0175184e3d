//! reflex-drivers: the hardware side of the loop, behind the runtime's `Driver` trait.
//!
//! - [`sim_arm`]: a simulated planar arm with servo dynamics and a top-down camera,
//!   the stand-in for hardware in demos and tests;
//! - [`zenoh_arm`]: a real arm reached over zenoh (commands out, joint states in).

pub mod sim_arm;
pub mod zenoh_arm;

use reflex_runtime::driver::Driver;
use reflex_runtime::launch::Launch;

/// Builds every driver the launch file names, in file order.
pub fn from_launch(launch: &Launch) -> Vec<Box<dyn Driver>> {
    let c = &launch.config;
    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    for cfg in &c.drivers.sim_arm {
        drivers.push(Box::new(sim_arm::SimArm::new(
            cfg.clone(),
            c.robot.joints.clone(),
        )));
    }
    for cfg in &c.drivers.zenoh_arm {
        drivers.push(Box::new(zenoh_arm::ZenohArm::new(cfg.clone())));
    }
    drivers
}
