//! `[[drivers]] kind = "pattern_camera"`: an image stream of a moving test pattern
//! (a bright column that sweeps across the frame), to check a camera path end to
//! end without hardware.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use reflex_runtime::driver::{CameraPort, Driver, DriverContext, DriverError, DriverPorts};
use reflex_runtime::launch::{Launch, LaunchError, MAX_CAMERA_FPS};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::types::{Image, monotonic_ns};
use schemars::JsonSchema;
use serde::Deserialize;

/// The driver's table: typed, unknown fields refused.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternCameraConfig {
    /// The driver's name and its image stream's (`camera.<name>` in policy inputs).
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
}

pub struct PatternCameraKind;

#[derive(Debug)]
pub struct PatternCameraSpec(pub PatternCameraConfig);

impl DriverKind for PatternCameraKind {
    fn kind(&self) -> &'static str {
        "pattern_camera"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<PatternCameraConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: PatternCameraConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        if !(8..=4096).contains(&config.width) || !(8..=4096).contains(&config.height) {
            return Err(table.error_at("width", "width and height must be in 8..=4096"));
        }
        if !(config.fps > 0.0 && config.fps <= MAX_CAMERA_FPS) {
            return Err(table.error_at(
                "fps",
                format!("must be in (0, {MAX_CAMERA_FPS}], found {}", config.fps),
            ));
        }
        Ok(Arc::new(PatternCameraSpec(config)))
    }
}

impl DriverSpec for PatternCameraSpec {
    fn kind(&self) -> &'static str {
        "pattern_camera"
    }
    fn name(&self) -> &str {
        &self.0.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![StreamDecl::image(
            &self.0.name,
            self.0.width,
            self.0.height,
            self.0.fps,
        )]
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(PatternCamera {
            config: self.0.clone(),
            output: None,
            simulated: true,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Output {
    writer: SlotWriter<Image>,
    frame: Image,
    period_ns: u64,
}

impl Output {
    /// Publishes the frame due at `now_ns`, the first one period after the start
    /// (the column sweeps once per second).
    fn publish(&mut self, now_ns: u64) {
        let seq = now_ns / self.period_ns;
        if seq == 0 || seq == self.frame.seq {
            return;
        }
        let (w, h) = (self.frame.width, self.frame.height);
        let column = ((now_ns % 1_000_000_000) as usize * w) / 1_000_000_000;
        for y in 0..h {
            for x in 0..w {
                let value = if x == column { 255 } else { 32 };
                self.frame.rgb[(y * w + x) * 3..][..3].copy_from_slice(&[value; 3]);
            }
        }
        self.frame.seq = seq;
        self.frame.stamp_ns = now_ns;
        let frame = &self.frame;
        self.writer.publish_with(|slot| slot.copy_from(frame));
    }
}

pub struct PatternCamera {
    config: PatternCameraConfig,
    output: Option<Output>,
    simulated: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Driver for PatternCamera {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        let frame = Image::black(self.config.width, self.config.height);
        let (writer, reader) = latest_slot(&frame);
        self.simulated = ctx.simulated;
        self.output = Some(Output {
            writer,
            frame,
            period_ns: (1e9 / self.config.fps) as u64,
        });
        // `..Default::default()` keeps this compiling as ports for new stream
        // types are added.
        Ok(DriverPorts {
            cameras: vec![CameraPort {
                name: self.config.name.clone(),
                frames: reader,
                width: self.config.width,
                height: self.config.height,
            }],
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        if self.simulated {
            return Ok(());
        }
        let mut output = self
            .output
            .take()
            .ok_or_else(|| DriverError::failed(&self.config.name, "start before open"))?;
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("reflex-{}", self.config.name))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    output.publish(monotonic_ns());
                    std::thread::sleep(Duration::from_nanos(output.period_ns));
                }
            })
            .map_err(|e| DriverError::failed(&self.config.name, e.to_string()))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn sim_step(&mut self, now_ns: u64) -> Result<(), DriverError> {
        if let Some(output) = &mut self.output {
            output.publish(now_ns);
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Ok(())
    }
}
