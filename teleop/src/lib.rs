//! Teleoperation devices as drivers: a keyboard (Linux evdev), a gamepad (`gilrs`)
//! and a 3D mouse (`hidapi`). Each commands rates that are integrated into a
//! device position ([`rate`]) in joint or end-effector coordinates; the loop makes
//! the arm follow the device's motion since takeover, through the safety filter
//! (and the IK for the end effector). A leader arm over zenoh is `zenoh_teleop`
//! (the zenoh crate).

use reflex_runtime::registry::Registry;

pub mod gamepad;
pub mod keyboard;
pub mod rate;
pub mod spacemouse;

/// Registers `keyboard_teleop`, `gamepad_teleop` and `spacemouse_teleop`.
pub fn register(registry: &mut Registry) {
    registry.driver(keyboard::KeyboardKind);
    registry.driver(gamepad::GamepadKind);
    registry.driver(spacemouse::SpaceMouseKind);
}
