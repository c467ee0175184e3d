//! Extending reflex: a driver kind and a policy kind written outside reflex's own
//! crates, against the public API only (see the README's "Extending reflex").
//!
//! - [`pattern_camera`]: `[[drivers]] kind = "pattern_camera"`, a camera that is not
//!   part of an arm and draws a moving test pattern;
//! - [`goto`]: `[policy] kind = "goto"`, a policy in plain Rust (no model) that
//!   moves the arm to a configured pose in straight joint-space segments;
//! - [`ema`]: `[execution] strategy = "ema"`, an execution strategy that smooths
//!   the targets of the built-in `replace` strategy;
//! - [`closest`]: `[[stages]] kind = "closest"`, a chunk stage that executes the
//!   candidate chunk nearest the arm.
//!
//! A binary adds them with one line each ([`register`]).

pub mod closest;
pub mod ema;
pub mod goto;
pub mod pattern_camera;

use reflex_runtime::registry::Registry;

/// Registers this crate's kinds.
pub fn register(registry: &mut Registry) {
    registry.driver(pattern_camera::PatternCameraKind);
    registry.policy(goto::GotoKind);
    registry.strategy(ema::EmaStrategy);
    registry.stage(closest::ClosestKind);
}
