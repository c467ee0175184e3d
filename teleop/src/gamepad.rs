//! `gamepad_teleop`: a game controller through `gilrs` (Linux evdev; hot-plug).
//!
//! Hold **LB or RB** (the shoulder buttons) to command the arm; release to hand
//! back. Sticks are rates (dead band removed):
//!
//! | frame | axes |
//! |---|---|
//! | `end_effector` | left stick up / down: +x / -x, left stick left / right: +y / -y, right stick up / down: +z / -z |
//! | `joint` | left stick x: joint 1, left stick y: joint 2, right stick y: joint 3, right stick x: joint 4, D-pad up / down: joint 5, D-pad left / right: joint 6 |
//!
//! and RT / LT (the analog triggers) open / close the gripper.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gilrs::{Axis, Button, Gilrs};
use reflex_runtime::launch::LaunchError;
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::teleop::TeleopFrame;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rate::{DeviceConfig, DeviceSpec, Integrator, RateSettings, check_dead_band, dead_band};

/// `[[drivers]] kind = "gamepad_teleop"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GamepadConfig {
    pub name: String,
    /// Use the first connected gamepad whose name contains this (default: the first).
    pub gamepad: Option<String>,
    /// Stick deflection ignored around rest, as a fraction of full deflection.
    #[serde(default = "default_dead_band")]
    pub dead_band: f64,
    #[serde(flatten)]
    pub rate: RateSettings,
}

fn default_dead_band() -> f64 {
    0.1
}

/// A gamepad's controls as they stand (sticks and triggers in [-1, 1] / [0, 1]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pad {
    pub left_x: f64,
    pub left_y: f64,
    pub right_x: f64,
    pub right_y: f64,
    pub dpad_x: f64,
    pub dpad_y: f64,
    pub left_trigger: f64,
    pub right_trigger: f64,
    pub shoulder: bool,
}

impl Pad {
    /// Rates per axis of `frame` (into `out`, dead band applied) and the gripper's.
    pub fn rates(&self, frame: TeleopFrame, band: f64, out: &mut [f64; 6]) -> f64 {
        let d = |v: f64| dead_band(v, band);
        *out = match frame {
            // Up on a stick is +y in gilrs; left is -x.
            TeleopFrame::EndEffector => [
                d(self.left_y),
                -d(self.left_x),
                d(self.right_y),
                0.0,
                0.0,
                0.0,
            ],
            TeleopFrame::Joint => [
                d(self.left_x),
                d(self.left_y),
                d(self.right_y),
                d(self.right_x),
                self.dpad_y,
                self.dpad_x,
            ],
        };
        d(self.right_trigger) - d(self.left_trigger)
    }

    fn read(gamepad: &gilrs::Gamepad<'_>) -> Self {
        let axis = |a: Axis| f64::from(gamepad.value(a));
        let pressed = |b: Button| gamepad.is_pressed(b);
        let analog = |b: Button| gamepad.button_data(b).map_or(0.0, |d| f64::from(d.value()));
        let pair = |plus: Button, minus: Button| {
            f64::from(u8::from(pressed(plus))) - f64::from(u8::from(pressed(minus)))
        };
        Self {
            left_x: axis(Axis::LeftStickX),
            left_y: axis(Axis::LeftStickY),
            right_x: axis(Axis::RightStickX),
            right_y: axis(Axis::RightStickY),
            dpad_x: pair(Button::DPadRight, Button::DPadLeft),
            dpad_y: pair(Button::DPadUp, Button::DPadDown),
            left_trigger: analog(Button::LeftTrigger2),
            right_trigger: analog(Button::RightTrigger2),
            shoulder: pressed(Button::LeftTrigger) || pressed(Button::RightTrigger),
        }
    }
}

pub struct GamepadKind;

impl DriverKind for GamepadKind {
    fn kind(&self) -> &'static str {
        GamepadConfig::KIND
    }
    fn schema(&self) -> serde_json::Value {
        schema_of::<GamepadConfig>()
    }
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: GamepadConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        config.rate.check(table)?;
        check_dead_band(table, config.dead_band)?;
        Ok(Arc::new(DeviceSpec(config)))
    }
}

impl DeviceConfig for GamepadConfig {
    const KIND: &'static str = "gamepad_teleop";
    fn name(&self) -> &str {
        &self.name
    }
    fn rate(&self) -> &RateSettings {
        &self.rate
    }
    fn source(&self) -> String {
        match &self.gamepad {
            Some(name) => format!("gamepad \"{name}\""),
            None => "the first gamepad".into(),
        }
    }
    fn run(&self, integrator: Integrator, stop: &AtomicBool) {
        read_gamepad(self, integrator, stop);
    }
}

fn read_gamepad(config: &GamepadConfig, mut integrator: Integrator, stop: &AtomicBool) {
    let mut gilrs = match Gilrs::new() {
        Ok(gilrs) => gilrs,
        Err(gilrs::Error::NotImplemented(dummy)) => {
            tracing::warn!("{}: gamepads are not supported on this system", config.name);
            dummy
        }
        Err(e) => {
            tracing::warn!(
                "{}: no gamepad input: {e}; the policy keeps the arm",
                config.name
            );
            return;
        }
    };
    let period = Duration::from_secs_f64(1.0 / config.rate.rate_hz);
    let mut rates = [0.0; 6];
    let mut last = Instant::now();
    let mut connected = None;
    while !stop.load(Ordering::Acquire) {
        // Drains the queue: gilrs updates the gamepads' state as events pass.
        while gilrs.next_event().is_some() {}
        let wanted = |g: &gilrs::Gamepad<'_>| {
            g.is_connected()
                && config
                    .gamepad
                    .as_ref()
                    .is_none_or(|name| g.name().contains(name.as_str()))
        };
        let pad = gilrs.gamepads().map(|(_, g)| g).find(|g| wanted(g));
        let name = pad.as_ref().map(|g| g.name().to_string());
        if name != connected {
            match &name {
                Some(found) => eprintln!("reflex: {}: using gamepad \"{found}\"", config.name),
                None => tracing::warn!("{}: no gamepad connected", config.name),
            }
            connected = name;
        }
        let elapsed = last.elapsed();
        match pad.map(|g| Pad::read(&g)) {
            Some(pad) => {
                last = Instant::now();
                let gripper = pad.rates(config.rate.frame, config.dead_band, &mut rates);
                integrator.advance(&rates, gripper, pad.shoulder, elapsed.as_secs_f64());
            }
            None => {
                last = Instant::now();
                integrator.release();
            }
        }
        std::thread::sleep(period.saturating_sub(last.elapsed()));
    }
    integrator.release();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticks_map_to_the_tip_and_to_joints() {
        let pad = Pad {
            left_x: -1.0,
            left_y: 0.55,
            right_x: 0.05,
            right_y: -1.0,
            dpad_x: 1.0,
            dpad_y: 0.0,
            left_trigger: 0.0,
            right_trigger: 1.0,
            shoulder: true,
        };
        let mut rates = [0.0; 6];
        let gripper = pad.rates(TeleopFrame::EndEffector, 0.1, &mut rates);
        // Stick up is forward (+x), stick left is +y, right stick down is -z.
        assert!((rates[0] - 0.5).abs() < 1e-12);
        assert_eq!(rates[1..3], [1.0, -1.0]);
        assert_eq!(gripper, 1.0);
        pad.rates(TeleopFrame::Joint, 0.1, &mut rates);
        assert_eq!(rates[0], -1.0);
        assert_eq!(rates[3], 0.0, "inside the dead band");
        assert_eq!(rates[5], 1.0);
    }
}
