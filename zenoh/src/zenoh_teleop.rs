//! A teleoperation device over zenoh: a leader arm (or anything that sends joint
//! positions) and its operator's dead-man / clutch.
//!
//! Messages on `<prefix>/<robot>/<name>` are JSON:
//! `{"seq": 12, "engaged": true, "positions": [0.1, 0.5, 0.5]}`: `seq` counts up
//! from 1 (a message that does not advance it is a repeat and ignored),
//! `positions` has one value per joint (then optionally the gripper), rad. While
//! `engaged`, the arm follows the device's motion relative to where both were at
//! takeover (see `reflex_runtime::teleop`). Bad messages are counted and logged
//! rate-limited; a device that goes silent while engaged leaves the arm holding
//! its last teleop target.

use std::sync::{Arc, Mutex, PoisonError};

use reflex_runtime::driver::{Driver, DriverContext, DriverError, DriverPorts};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::ratelimit::{WarnLimiter, suppressed_note};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::latest_slot;
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::teleop::{TeleopCommand, TeleopFrame, TeleopPort};
use reflex_runtime::types::MAX_JOINTS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zenoh::Wait;

/// `[[drivers]] kind = "zenoh_teleop"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZenohTeleopConfig {
    /// The device's name (and the last part of its default key).
    pub name: String,
    /// Default `<prefix>/<robot>/<name>`.
    pub key: Option<String>,
    /// `"joint"` (the default: a leader arm's joint positions) or `"end_effector"`
    /// (x, y, z of the tip in the robot's root frame, m: the arm follows through IK).
    #[serde(default)]
    pub frame: TeleopFrame,
}

impl ZenohTeleopConfig {
    pub fn key(&self, key_prefix: &str, robot: &str) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("{key_prefix}/{robot}/{}", self.name))
    }
}

/// The message a device sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeleopMessage {
    seq: u64,
    engaged: bool,
    positions: Vec<f64>,
}

fn decode(payload: &[u8]) -> Result<TeleopMessage, String> {
    let message: TeleopMessage = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if message.seq == 0 {
        return Err("seq must count from 1".into());
    }
    if message.positions.len() > MAX_JOINTS + 1 {
        return Err(format!(
            "{} positions (at most {})",
            message.positions.len(),
            MAX_JOINTS + 1
        ));
    }
    if message.positions.iter().any(|p| !p.is_finite()) {
        return Err("a position is not a finite number".into());
    }
    Ok(message)
}

pub struct ZenohTeleopKind;

#[derive(Debug)]
pub struct ZenohTeleopSpec {
    pub config: ZenohTeleopConfig,
}

impl DriverKind for ZenohTeleopKind {
    fn kind(&self) -> &'static str {
        "zenoh_teleop"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ZenohTeleopConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: ZenohTeleopConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        if let Some(key) = &config.key {
            crate::bus::check_exact_key(key).map_err(|message| table.error_at("key", message))?;
        }
        (config.frame.values(table.launch()))
            .map_err(|message| table.error_at("frame", message))?;
        Ok(Arc::new(ZenohTeleopSpec { config }))
    }
}

impl DriverSpec for ZenohTeleopSpec {
    fn kind(&self) -> &'static str {
        "zenoh_teleop"
    }
    fn source(&self, launch: &Launch) -> Option<String> {
        Some(format!(
            "zenoh key {}",
            self.config
                .key(&crate::config(launch).key_prefix, &launch.config.robot.name)
        ))
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        Vec::new()
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn build(&self, launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(ZenohTeleop {
            cfg: self.config.clone(),
            key_prefix: crate::config(launch).key_prefix,
            joints: self
                .config
                .frame
                .values(launch)
                .map_err(|e| DriverError::failed(&self.config.name, e))?,
            subscriber: None,
            bad: Arc::new(WarnLimiter::for_network()),
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct ZenohTeleop {
    cfg: ZenohTeleopConfig,
    key_prefix: String,
    /// Values a message may carry: the robot's joints, or those and its gripper.
    joints: (usize, usize),
    subscriber: Option<zenoh::pubsub::Subscriber<()>>,
    bad: Arc<WarnLimiter>,
}

impl Driver for ZenohTeleop {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        let session = ctx
            .services
            .get::<zenoh::Session>()
            .cloned()
            .ok_or_else(|| {
                DriverError::failed(&self.cfg.name, "needs the zenoh bus (zenoh.enabled = true)")
            })?;
        let key = self.cfg.key(&self.key_prefix, &ctx.robot);
        let (writer, reader) = latest_slot(&TeleopCommand::NONE);
        let mut ports = DriverPorts::default();
        ports.teleop.push(TeleopPort {
            name: self.cfg.name.clone(),
            commands: reader,
        });
        let (name, bad, joints) = (self.cfg.name.clone(), self.bad.clone(), self.joints);
        let frame = self.cfg.frame;
        let state = Mutex::new((writer, 0u64));
        let subscriber = session
            .declare_subscriber(key)
            .callback(move |sample| {
                let payload = sample.payload().to_bytes();
                let problem = match decode(&payload) {
                    Ok(m) if m.positions.len() != joints.0 && m.positions.len() != joints.1 => {
                        format!(
                            "{} positions, expected {} ({}){}",
                            m.positions.len(),
                            joints.0,
                            match frame {
                                TeleopFrame::Joint => "one per joint",
                                TeleopFrame::EndEffector => "x, y, z",
                            },
                            if joints.1 > joints.0 {
                                " (and a gripper)"
                            } else {
                                ""
                            }
                        )
                    }
                    Ok(m) => {
                        let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                        let (writer, last) = &mut *guard;
                        if m.seq <= *last {
                            return;
                        }
                        *last = m.seq;
                        writer.publish_with(|slot| {
                            slot.seq = m.seq;
                            slot.engaged = m.engaged;
                            slot.frame = frame;
                            slot.len = m.positions.len();
                            slot.positions[..m.positions.len()].copy_from_slice(&m.positions);
                        });
                        return;
                    }
                    Err(e) => format!("undecodable teleop message ({} bytes): {e}", payload.len()),
                };
                if let Some(suppressed) = bad.hit() {
                    tracing::warn!(
                        "{name}: {problem}; {} bad messages so far{}",
                        bad.total(),
                        suppressed_note(suppressed)
                    );
                }
            })
            .wait()
            .map_err(|source| DriverError::Source {
                driver: self.cfg.name.clone(),
                source,
            })?;
        self.subscriber = Some(subscriber);
        Ok(ports)
    }

    fn start(&mut self) -> Result<(), DriverError> {
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        if let Some(subscriber) = self.subscriber.take() {
            let _ = subscriber.undeclare().wait();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_checked() {
        let m = decode(br#"{"seq": 3, "engaged": true, "positions": [0.1, 0.2]}"#).unwrap();
        assert_eq!((m.seq, m.engaged, m.positions.len()), (3, true, 2));
        for bad in [
            &br#"{"seq": 0, "engaged": true, "positions": [0.1]}"#[..],
            br#"{"seq": 1, "engaged": true, "positions": [1e999]}"#,
            br#"{"seq": 1, "engaged": true}"#,
            br#"{"seq": 1, "engaged": true, "positions": [], "extra": 1}"#,
            b"garbage",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
