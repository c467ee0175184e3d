//! What the keyboard, the gamepad and the 3D mouse share: they command rates
//! (a key held, a stick deflected), which are integrated into a device position and
//! published as [`TeleopCommand`]s. Only the device's motion since takeover moves the
//! arm (see `reflex_runtime::teleop`), so the position starts anywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use reflex_runtime::driver::{Driver, DriverContext, DriverError, DriverPorts};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::registry::{DriverSpec, KindTable};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::teleop::{TeleopCommand, TeleopFrame, TeleopPort};
use reflex_runtime::types::MAX_JOINTS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings every rate device has (flattened into its `[[drivers]]` table).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct RateSettings {
    /// `"joint"` (each axis turns a joint) or `"end_effector"` (the tip moves along
    /// x, y, z of the robot's root frame, through IK; needs `robot.urdf`).
    #[serde(default)]
    pub frame: TeleopFrame,
    /// Speed at full deflection: rad/s per joint, or m/s of the tip. Default 0.5
    /// rad/s, or 0.1 m/s.
    pub speed: Option<f64>,
    /// The gripper's speed at full deflection, opening units per second.
    #[serde(default = "default_gripper_speed")]
    pub gripper_speed: f64,
    /// How often the device is read and its command published, Hz.
    #[serde(default = "default_rate_hz")]
    pub rate_hz: f64,
}

fn default_gripper_speed() -> f64 {
    0.5
}
fn default_rate_hz() -> f64 {
    100.0
}

impl RateSettings {
    pub fn speed(&self) -> f64 {
        self.speed.unwrap_or(match self.frame {
            TeleopFrame::Joint => 0.5,
            TeleopFrame::EndEffector => 0.1,
        })
    }

    /// Checks the numbers and that the robot has what the frame needs.
    pub fn check(&self, table: &KindTable<'_>) -> Result<(), LaunchError> {
        let (top, unit) = match self.frame {
            TeleopFrame::Joint => (5.0, "rad/s"),
            TeleopFrame::EndEffector => (2.0, "m/s"),
        };
        let speed = self.speed();
        if !(speed > 0.0 && speed <= top) {
            return Err(table.error_at(
                "speed",
                format!("must be in (0, {top}] {unit}, found {speed}"),
            ));
        }
        if !(self.gripper_speed > 0.0 && self.gripper_speed <= 10.0) {
            return Err(table.error_at(
                "gripper_speed",
                format!("must be in (0, 10], found {}", self.gripper_speed),
            ));
        }
        if !(10.0..=1000.0).contains(&self.rate_hz) {
            return Err(table.error_at(
                "rate_hz",
                format!("must be in [10, 1000] Hz, found {}", self.rate_hz),
            ));
        }
        self.frame
            .values(table.launch())
            .map(|_| ())
            .map_err(|message| table.error_at("frame", message))
    }

    /// Axes the device drives (joints, or x, y, z) and whether a gripper follows.
    pub fn axes(&self, launch: &Launch) -> (usize, bool) {
        let gripper = launch.config.robot.gripper.is_some();
        match self.frame {
            TeleopFrame::Joint => (launch.config.robot.joints.len().min(MAX_JOINTS), gripper),
            TeleopFrame::EndEffector => (3, gripper),
        }
    }
}

/// Integrates rates into the device position it publishes.
pub struct Integrator {
    frame: TeleopFrame,
    axes: usize,
    gripper: bool,
    speed: f64,
    gripper_speed: f64,
    position: [f64; MAX_JOINTS + 1],
    engaged: bool,
    seq: u64,
    writer: SlotWriter<TeleopCommand>,
}

impl Integrator {
    pub fn new(
        settings: &RateSettings,
        axes: (usize, bool),
        writer: SlotWriter<TeleopCommand>,
    ) -> Self {
        Self {
            frame: settings.frame,
            axes: axes.0,
            gripper: axes.1,
            speed: settings.speed(),
            gripper_speed: settings.gripper_speed,
            position: [0.0; MAX_JOINTS + 1],
            engaged: false,
            seq: 0,
            writer,
        }
    }

    /// One period of `dt` s: `rates` in [-1, 1] per axis (extra ones ignored, missing
    /// ones 0), `gripper` likewise. Publishes when something changed: a sample is
    /// logged by the loop, so an idle device adds nothing.
    pub fn advance(&mut self, rates: &[f64], gripper: f64, engaged: bool, dt: f64) {
        let mut moved = false;
        if engaged {
            for (axis, position) in self.position[..self.axes].iter_mut().enumerate() {
                let rate = rates.get(axis).copied().unwrap_or(0.0).clamp(-1.0, 1.0);
                if rate != 0.0 {
                    *position += rate * self.speed * dt;
                    moved = true;
                }
            }
            if self.gripper && gripper != 0.0 {
                self.position[self.axes] += gripper.clamp(-1.0, 1.0) * self.gripper_speed * dt;
                moved = true;
            }
        }
        if moved || engaged != self.engaged || self.seq == 0 {
            self.engaged = engaged;
            self.seq += 1;
            let len = self.axes + usize::from(self.gripper);
            let (seq, frame, position) = (self.seq, self.frame, self.position);
            self.writer.publish_with(|slot| {
                slot.seq = seq;
                slot.engaged = engaged;
                slot.frame = frame;
                slot.len = len;
                slot.positions = position;
            });
        }
    }

    /// The device is gone: hand the arm back.
    pub fn release(&mut self) {
        if self.engaged {
            self.advance(&[], 0.0, false, 0.0);
        }
    }
}

/// What the shared driver needs of a device's `[[drivers]]` config.
pub trait DeviceConfig: Clone + std::fmt::Debug + Send + Sync + 'static {
    const KIND: &'static str;
    fn name(&self) -> &str;
    fn rate(&self) -> &RateSettings;
    /// Where the device comes from, for `reflex check`.
    fn source(&self) -> String;
    /// The device's thread: reads it and advances `integrator` once a period
    /// until `stop`; hands the arm back when the device goes away.
    fn run(&self, integrator: Integrator, stop: &AtomicBool);
}

/// A checked device config.
#[derive(Debug)]
pub struct DeviceSpec<C>(pub C);

impl<C: DeviceConfig> DriverSpec for DeviceSpec<C> {
    fn kind(&self) -> &'static str {
        C::KIND
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    fn streams(&self) -> Vec<StreamDecl> {
        Vec::new()
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn source(&self, _launch: &Launch) -> Option<String> {
        Some(self.0.source())
    }
    fn build(&self, launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(DeviceDriver {
            axes: self.0.rate().axes(launch),
            config: self.0.clone(),
            integrator: None,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A rate device: its port is a latest-value slot, its reading runs on its thread.
pub struct DeviceDriver<C> {
    config: C,
    axes: (usize, bool),
    integrator: Option<Integrator>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: DeviceConfig> Driver for DeviceDriver<C> {
    fn name(&self) -> &str {
        self.config.name()
    }

    fn open(&mut self, _ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        let (writer, reader) = latest_slot(&TeleopCommand::NONE);
        self.integrator = Some(Integrator::new(self.config.rate(), self.axes, writer));
        let mut ports = DriverPorts::default();
        ports.teleop.push(TeleopPort {
            name: self.config.name().to_string(),
            commands: reader,
        });
        Ok(ports)
    }

    fn start(&mut self) -> Result<(), DriverError> {
        let Some(integrator) = self.integrator.take() else {
            return Err(DriverError::failed(self.config.name(), "start before open"));
        };
        let (config, stop) = (self.config.clone(), self.stop.clone());
        // Devices are opened on the thread that reads them (gilrs is not Send).
        let thread = std::thread::Builder::new()
            .name(format!("reflex-teleop-{}", config.name()))
            .spawn(move || config.run(integrator, &stop))
            .map_err(|e| DriverError::failed(self.config.name(), e.to_string()))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| DriverError::failed(self.config.name(), "device thread panicked"))?;
        }
        Ok(())
    }
}

/// `dead_band` is a fraction of full deflection below 0.9.
pub fn check_dead_band(table: &KindTable<'_>, band: f64) -> Result<(), LaunchError> {
    if (0.0..0.9).contains(&band) {
        Ok(())
    } else {
        Err(table.error_at("dead_band", format!("must be in [0, 0.9), found {band}")))
    }
}

/// A stick's value with the dead band around its rest removed and the rest
/// rescaled, so the rate starts from 0 at the band's edge.
pub fn dead_band(value: f64, band: f64) -> f64 {
    if !value.is_finite() || value.abs() <= band {
        0.0
    } else {
        (value.signum() * (value.abs() - band) / (1.0 - band)).clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_runtime::slot::latest_slot;

    fn settings(frame: TeleopFrame) -> RateSettings {
        RateSettings {
            frame,
            speed: Some(0.2),
            gripper_speed: 1.0,
            rate_hz: 100.0,
        }
    }

    #[test]
    fn rates_integrate_only_while_engaged_and_idle_devices_publish_nothing() {
        let (writer, mut reader) = latest_slot(&TeleopCommand::NONE);
        let mut device = Integrator::new(&settings(TeleopFrame::EndEffector), (3, true), writer);
        device.advance(&[1.0, 0.0, 0.0], 0.0, false, 0.01);
        let first = *reader.latest();
        assert_eq!((first.seq, first.engaged, first.len), (1, false, 4));
        assert_eq!(first.positions[0], 0.0, "not engaged: no motion");
        device.advance(&[], 0.0, false, 0.01);
        assert_eq!(reader.latest().seq, 1, "idle: nothing new");
        for _ in 0..50 {
            device.advance(&[1.0, -0.5, 3.0], -1.0, true, 0.01);
        }
        let held = *reader.latest();
        assert!(held.engaged);
        assert_eq!(held.frame, TeleopFrame::EndEffector);
        let expected = [0.1, -0.05, 0.1, -0.5]; // z clamped to full deflection
        for (value, want) in held.positions.iter().zip(expected) {
            assert!((value - want).abs() < 1e-12, "{:?}", held.positions);
        }
        device.release();
        assert!(!reader.latest().engaged);
    }

    #[test]
    fn the_dead_band_is_removed_and_rescaled() {
        assert_eq!(dead_band(0.05, 0.1), 0.0);
        assert_eq!(dead_band(-0.1, 0.1), 0.0);
        assert!((dead_band(0.55, 0.1) - 0.5).abs() < 1e-12);
        assert!((dead_band(-1.0, 0.1) + 1.0).abs() < 1e-12);
        assert_eq!(dead_band(f64::NAN, 0.1), 0.0);
    }
}
