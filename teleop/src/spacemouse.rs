//! `spacemouse_teleop`: a 3Dconnexion 3D mouse (SpaceMouse Compact, Wireless, Pro,
//! SpaceNavigator, ...) read through `hidapi` (Linux hidraw).
//!
//! The cap's translation moves the tip: push forward +x, push left +y, lift +z
//! (`end_effector`); or, in `joint`, the six axes (x, y, z, then the three tilts)
//! turn joints 1 to 6. Rotations are ignored in `end_effector` (the IK places the
//! tip's position). The left button closes the gripper, the right one opens it.
//! Engaged while the cap is moved beyond the dead band (`engage = "motion"`, as in
//! HIL-SERL) or while a button is held (`engage = "button"`: both buttons are
//! then the dead-man and the gripper is not driven).
//!
//! Reports (HID, little-endian i16 per axis, about ±350 at full deflection):
//! id 1 carries x, y, z (and on newer models rx, ry, rz in the same report), id 2
//! rx, ry, rz, id 3 the buttons as a bit mask.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reflex_runtime::launch::LaunchError;
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::teleop::TeleopFrame;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rate::{DeviceConfig, DeviceSpec, Integrator, RateSettings, check_dead_band, dead_band};

/// 3Dconnexion's USB vendor ids (the older devices carry Logitech's).
const VENDORS: [u16; 2] = [0x256f, 0x046d];
/// Logitech-era 3Dconnexion products (Logitech's id also names mice and keyboards).
const LOGITECH_ERA: [u16; 14] = [
    0xc603, 0xc605, 0xc606, 0xc621, 0xc623, 0xc625, 0xc626, 0xc627, 0xc628, 0xc629, 0xc62b, 0xc631,
    0xc632, 0xc633,
];
/// Raw axis value at full deflection.
const FULL_SCALE: f64 = 350.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engage {
    /// Moving the cap takes over; letting it rest hands back.
    #[default]
    Motion,
    /// Holding a button takes over.
    Button,
}

/// `[[drivers]] kind = "spacemouse_teleop"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpaceMouseConfig {
    pub name: String,
    /// USB vendor and product id, to pick one device (default: the first 3Dconnexion one).
    pub vendor_id: Option<u16>,
    pub product_id: Option<u16>,
    #[serde(default)]
    pub engage: Engage,
    /// Cap deflection ignored around rest, as a fraction of full deflection.
    #[serde(default = "default_dead_band")]
    pub dead_band: f64,
    #[serde(flatten)]
    pub rate: RateSettings,
}

fn default_dead_band() -> f64 {
    0.05
}

/// The cap and buttons as the latest reports left them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cap {
    /// x, y, z, rx, ry, rz, normalized to about [-1, 1].
    pub axes: [f64; 6],
    pub buttons: u16,
}

impl Cap {
    /// Applies one input report (its first byte is the report id). Unknown
    /// reports and short ones change nothing.
    pub fn apply(&mut self, report: &[u8]) {
        let axis = |i: usize| -> Option<f64> {
            let bytes = report.get(1 + 2 * i..3 + 2 * i)?;
            Some(f64::from(i16::from_le_bytes([bytes[0], bytes[1]])) / FULL_SCALE)
        };
        match report.first() {
            Some(1) => {
                for i in 0..3 {
                    if let Some(v) = axis(i) {
                        self.axes[i] = v;
                    }
                }
                // Newer models send the rotation in the same report.
                if report.len() >= 13 {
                    for i in 3..6 {
                        self.axes[i] = axis(i).unwrap_or(0.0);
                    }
                }
            }
            Some(2) if report.len() >= 7 => {
                for i in 0..3 {
                    self.axes[3 + i] = axis(i).unwrap_or(0.0);
                }
            }
            Some(3) if report.len() >= 2 => {
                self.buttons = u16::from_le_bytes([report[1], report.get(2).copied().unwrap_or(0)]);
            }
            _ => {}
        }
    }

    /// Rates per axis of `frame` (into `out`), the gripper's, and whether the
    /// device is engaged.
    pub fn rates(
        &self,
        frame: TeleopFrame,
        band: f64,
        engage: Engage,
        out: &mut [f64; 6],
    ) -> (f64, bool) {
        let d = |v: f64| dead_band(v.clamp(-1.0, 1.0), band);
        let [x, y, z, rx, ry, rz] = self.axes;
        // The cap's frame: +x right, +y toward the user, +z down.
        *out = match frame {
            TeleopFrame::EndEffector => [-d(y), -d(x), -d(z), 0.0, 0.0, 0.0],
            TeleopFrame::Joint => [d(x), d(y), d(z), d(rx), d(ry), d(rz)],
        };
        let (left, right) = (self.buttons & 1 != 0, self.buttons & 2 != 0);
        match engage {
            Engage::Motion => {
                let gripper = f64::from(u8::from(right)) - f64::from(u8::from(left));
                let moving = out.iter().any(|r| *r != 0.0);
                (gripper, moving || left || right)
            }
            Engage::Button => (0.0, left || right),
        }
    }
}

pub struct SpaceMouseKind;

impl DriverKind for SpaceMouseKind {
    fn kind(&self) -> &'static str {
        SpaceMouseConfig::KIND
    }
    fn schema(&self) -> serde_json::Value {
        schema_of::<SpaceMouseConfig>()
    }
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: SpaceMouseConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        config.rate.check(table)?;
        check_dead_band(table, config.dead_band)?;
        if config.product_id.is_some() && config.vendor_id.is_none() {
            return Err(table.error_at("product_id", "needs vendor_id too"));
        }
        Ok(Arc::new(DeviceSpec(config)))
    }
}

impl DeviceConfig for SpaceMouseConfig {
    const KIND: &'static str = "spacemouse_teleop";
    fn name(&self) -> &str {
        &self.name
    }
    fn rate(&self) -> &RateSettings {
        &self.rate
    }
    fn source(&self) -> String {
        match (self.vendor_id, self.product_id) {
            (Some(v), Some(p)) => format!("HID {v:04x}:{p:04x}"),
            (Some(v), None) => format!("HID vendor {v:04x}"),
            _ => "the first 3Dconnexion HID device".into(),
        }
    }
    fn run(&self, integrator: Integrator, stop: &AtomicBool) {
        read_spacemouse(self, integrator, stop);
    }
}

/// Whether `(vendor, product)` is the device the config asks for.
fn wanted(config: &SpaceMouseConfig, vendor: u16, product: u16) -> bool {
    match (config.vendor_id, config.product_id) {
        (Some(v), Some(p)) => vendor == v && product == p,
        (Some(v), None) => vendor == v,
        _ => vendor == VENDORS[0] || (vendor == VENDORS[1] && LOGITECH_ERA.contains(&product)),
    }
}

fn read_spacemouse(config: &SpaceMouseConfig, mut integrator: Integrator, stop: &AtomicBool) {
    let period = Duration::from_secs_f64(1.0 / config.rate.rate_hz);
    let mut api = match hidapi::HidApi::new() {
        Ok(api) => api,
        Err(e) => {
            tracing::warn!(
                "{}: no HID access: {e}; the policy keeps the arm",
                config.name
            );
            return;
        }
    };
    let mut device: Option<hidapi::HidDevice> = None;
    let mut cap = Cap::default();
    let mut rates = [0.0; 6];
    let mut report = [0u8; 64];
    let mut last = Instant::now();
    let mut warned = false;
    while !stop.load(Ordering::Acquire) {
        let Some(open) = device.as_ref() else {
            let _ = api.refresh_devices();
            let found = (api.device_list())
                .find(|d| wanted(config, d.vendor_id(), d.product_id()))
                .map(|d| {
                    (
                        d.open_device(&api),
                        d.product_string().unwrap_or("3D mouse").to_string(),
                    )
                });
            match found {
                Some((Ok(opened), product)) => {
                    eprintln!("reflex: {}: using {product}", config.name);
                    device = Some(opened);
                    warned = false;
                }
                Some((Err(e), product)) if !warned => {
                    tracing::warn!(
                        "{}: cannot open {product}: {e} (permissions on /dev/hidraw*?)",
                        config.name
                    );
                    warned = true;
                }
                None if !warned => {
                    tracing::warn!("{}: no 3D mouse connected", config.name);
                    warned = true;
                }
                _ => {}
            }
            integrator.release();
            if device.is_none() {
                std::thread::sleep(Duration::from_millis(500));
            }
            continue;
        };
        let wait = period.saturating_sub(last.elapsed());
        match open.read_timeout(&mut report, wait.as_millis() as i32) {
            Ok(n) if n > 0 => cap.apply(&report[..n]),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("{}: {e}; looking for the device again", config.name);
                device = None;
                cap = Cap::default();
                continue;
            }
        }
        let elapsed = last.elapsed();
        if elapsed >= period {
            last = Instant::now();
            let (gripper, engaged) = cap.rates(
                config.rate.frame,
                config.dead_band,
                config.engage,
                &mut rates,
            );
            integrator.advance(&rates, gripper, engaged, elapsed.as_secs_f64());
        }
    }
    integrator.release();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: u8, values: &[i16]) -> Vec<u8> {
        std::iter::once(id)
            .chain(values.iter().flat_map(|v| v.to_le_bytes()))
            .collect()
    }

    #[test]
    fn reports_of_old_and_new_models_are_read() {
        let mut cap = Cap::default();
        // Older models: translation and rotation in separate reports.
        cap.apply(&report(1, &[350, -175, 0]));
        cap.apply(&report(2, &[0, 70, -350]));
        assert_eq!(cap.axes, [1.0, -0.5, 0.0, 0.0, 0.2, -1.0]);
        // Newer ones: all six in report 1.
        cap.apply(&report(1, &[0, 0, -350, 35, 0, 0]));
        assert_eq!(cap.axes, [0.0, 0.0, -1.0, 0.1, 0.0, 0.0]);
        cap.apply(&[3, 0b10, 0]);
        assert_eq!(cap.buttons, 2);
        // Short or unknown reports change nothing.
        let before = cap;
        cap.apply(&[1, 5]);
        cap.apply(&report(7, &[100, 100, 100]));
        cap.apply(&[]);
        assert_eq!(cap.axes[1..], before.axes[1..]);
    }

    #[test]
    fn the_cap_drives_the_tip_and_engages_by_motion_or_button() {
        let mut rates = [0.0; 6];
        let mut cap = Cap {
            axes: [0.0, -1.0, 0.02, 0.5, 0.0, 0.0],
            buttons: 0,
        };
        // Pushing the cap forward (-y) is +x; z inside the dead band.
        let (gripper, engaged) =
            cap.rates(TeleopFrame::EndEffector, 0.05, Engage::Motion, &mut rates);
        assert_eq!((rates[0], rates[1], rates[2]), (1.0, 0.0, 0.0));
        assert_eq!(rates[3..], [0.0, 0.0, 0.0], "no rotation for the tip");
        assert!(engaged && gripper == 0.0);
        cap.axes = [0.0; 6];
        let (_, engaged) = cap.rates(TeleopFrame::EndEffector, 0.05, Engage::Motion, &mut rates);
        assert!(!engaged, "at rest: handed back");
        cap.buttons = 1;
        assert_eq!(
            cap.rates(TeleopFrame::Joint, 0.05, Engage::Motion, &mut rates),
            (-1.0, true)
        );
        assert_eq!(
            cap.rates(TeleopFrame::Joint, 0.05, Engage::Button, &mut rates),
            (0.0, true)
        );
        cap.buttons = 0;
        cap.axes[0] = 1.0;
        assert_eq!(
            cap.rates(TeleopFrame::Joint, 0.05, Engage::Button, &mut rates),
            (0.0, false)
        );
    }

    #[test]
    fn only_3dconnexion_devices_are_picked_by_default() {
        let config: SpaceMouseConfig =
            serde_json::from_value(serde_json::json!({"name": "mouse"})).unwrap();
        assert!(wanted(&config, 0x256f, 0xc635));
        assert!(wanted(&config, 0x046d, 0xc626));
        assert!(!wanted(&config, 0x046d, 0xc52b), "a Logitech receiver");
    }
}
