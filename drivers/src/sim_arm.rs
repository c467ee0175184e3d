//! A simulated planar arm: joint-space servo dynamics with velocity and position
//! limits, a reaching task (a red target drawn anew every episode) and a top-down
//! RGB camera that renders the arm and the target, so a policy has pixels to use.
//!
//! With `decoy = true` a second, identical target is drawn on the other side of the
//! arm and only the true one emits a tone: the arm's microphones and taxel pad
//! ([`crate::sim_senses`]) tell them apart where the camera cannot.
//!
//! [`SimWorld`] is the deterministic physics and rendering; [`SimArm`] drives it
//! through the `Driver` lifecycle, on its own thread under the wall clock or in
//! lockstep with the loop under the simulated clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reflex_runtime::clock::sleep_until;
use reflex_runtime::driver::{
    ArmPorts, CameraPort, Driver, DriverContext, DriverError, DriverPorts, EpisodeOutcome,
    TaskReport, TensorPort,
};
use reflex_runtime::gripper::GripperConfig;
use reflex_runtime::launch::{JointConfig, Launch, LaunchError, MAX_CAMERA_FPS};
use reflex_runtime::mailbox::Mailbox;
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::StreamDecl;
use reflex_runtime::types::{
    Image, JointCommand, JointState, MAX_JOINTS, TensorSample, monotonic_ns,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sim_senses::{Hearing, SoundConfig, Touch, TouchConfig};

/// Targets are drawn at angles in ±this from the +x axis (rad) ...
const TARGET_ANGLE: f64 = 1.8;
/// ... and at distances in this range from the base, as a fraction of the reach.
const TARGET_RADIUS: (f64, f64) = (0.45, 0.95);
/// With a decoy, each target's angle from the +x axis is in this range (rad), one
/// on each side.
const DECOY_ANGLE: (f64, f64) = (0.5, 1.7);
const TARGET_DRAW_RADIUS: f64 = 0.08;
const EFFECTOR_DRAW_RADIUS: f64 = 0.05;

/// `drivers[].physics_hz`, Hz.
pub const MAX_PHYSICS_HZ: f64 = 100_000.0;

/// `[[drivers]] kind = "sim_arm"`: a simulated planar arm with joint-space servo
/// dynamics and (optionally) a top-down camera.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimArmConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// One length per joint, m; the arm moves in the plane.
    pub link_lengths: Vec<f64>,
    /// Physics steps per second when running on the wall clock.
    #[serde(default = "default_physics_hz")]
    pub physics_hz: f64,
    /// Servo stiffness, 1/s^2.
    #[serde(default = "default_stiffness")]
    pub stiffness: f64,
    /// Servo damping, 1/s.
    #[serde(default = "default_damping")]
    pub damping: f64,
    /// Joint positions at start, rad (default: all zero).
    #[serde(default)]
    pub initial_position: Vec<f64>,
    /// A new target is drawn every this many seconds.
    #[serde(default = "default_episode_seconds")]
    pub episode_seconds: f64,
    /// The end effector counts as on target within this distance, m.
    #[serde(default = "default_target_tolerance")]
    pub target_tolerance: f64,
    /// This far into each episode, s, the target jumps to a newly drawn one (a
    /// task where reacting late costs time); success and the time to reach then
    /// concern the new target.
    pub target_switch_s: Option<f64>,
    pub camera: Option<SimCameraConfig>,
    /// A second target that looks the same, on the other side of the arm; only the
    /// true one sounds (`[drivers.sound]`) and counts as reached.
    #[serde(default)]
    pub decoy: bool,
    /// Two microphones that hear the true target's tone (a log-mel stream).
    pub sound: Option<SoundConfig>,
    /// A taxel pad on the end effector (a tensor stream).
    pub touch: Option<TouchConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimCameraConfig {
    /// The image stream's name; policy inputs use it as `camera.<name>`.
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
}

fn default_name() -> String {
    "arm".into()
}
fn default_physics_hz() -> f64 {
    1000.0
}
fn default_stiffness() -> f64 {
    400.0
}
fn default_damping() -> f64 {
    40.0
}
fn default_episode_seconds() -> f64 {
    5.0
}
fn default_target_tolerance() -> f64 {
    0.05
}

/// Registers `sim_arm`.
pub struct SimArmKind;

/// A checked `sim_arm` table.
#[derive(Debug)]
pub struct SimArmSpec {
    pub config: SimArmConfig,
    pub joints: Vec<JointConfig>,
}

impl DriverKind for SimArmKind {
    fn kind(&self) -> &'static str {
        "sim_arm"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<SimArmConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let arm: SimArmConfig = table.parse()?;
        let launch = table.launch();
        let robot_joints = &launch.config.robot.joints;
        let joints = robot_joints.len();
        let rate_hz = launch.config.control.rate_hz;
        table.check_name("name", &arm.name)?;
        if arm.link_lengths.len() != joints {
            return Err(table.error_at(
                "link_lengths",
                format!(
                    "has {} links but robot.joints has {joints} joints",
                    arm.link_lengths.len()
                ),
            ));
        }
        if let Some((j, length)) =
            (arm.link_lengths.iter().enumerate()).find(|(_, l)| !(l.is_finite() && **l > 0.0))
        {
            return Err(table.error_at(
                &format!("link_lengths[{j}]"),
                format!("must be a positive length in m, found {length}"),
            ));
        }
        if !arm.initial_position.is_empty() && arm.initial_position.len() != joints {
            return Err(table.error_at(
                "initial_position",
                format!(
                    "has {} values, expected {joints}",
                    arm.initial_position.len()
                ),
            ));
        }
        if let Some((j, value)) =
            (arm.initial_position.iter().enumerate()).find(|(_, q)| !q.is_finite())
        {
            return Err(table.error_at(
                &format!("initial_position[{j}]"),
                format!("must be a finite position, found {value}"),
            ));
        }
        if let Some((j, p)) = arm.initial_position.iter().enumerate().find(|(j, p)| {
            let [lo, hi] = robot_joints[*j].position;
            !(**p >= lo && **p <= hi)
        }) {
            return Err(table.error_at(
                "initial_position",
                format!(
                    "joint {j} starts at {p}: must be inside its limits {:?}",
                    robot_joints[j].position
                ),
            ));
        }
        // The simulated clock steps physics until it reaches the tick's time: a
        // step too small to advance it would loop forever.
        if !(arm.physics_hz >= rate_hz && arm.physics_hz <= MAX_PHYSICS_HZ) {
            return Err(table.error_at(
                "physics_hz",
                format!(
                    "must be at least control.rate_hz ({rate_hz}) and at most {MAX_PHYSICS_HZ}, found {}",
                    arm.physics_hz
                ),
            ));
        }
        for (field, value) in [
            ("stiffness", arm.stiffness),
            ("episode_seconds", arm.episode_seconds),
            ("target_tolerance", arm.target_tolerance),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(
                    table.error_at(field, format!("must be a positive number, found {value}"))
                );
            }
        }
        if let Some(switch) = arm.target_switch_s
            && !(switch > 0.0 && switch < arm.episode_seconds)
        {
            return Err(table.error_at(
                "target_switch_s",
                format!(
                    "must be inside the episode, in (0, {}), found {switch}",
                    arm.episode_seconds
                ),
            ));
        }
        if !(arm.damping.is_finite() && arm.damping >= 0.0) {
            return Err(table.error_at(
                "damping",
                format!("must be zero or positive, found {}", arm.damping),
            ));
        }
        if let Some(camera) = &arm.camera {
            if camera.width < 8 || camera.height < 8 || camera.width > 4096 || camera.height > 4096
            {
                return Err(table.error_at("camera", "width and height must be in 8..=4096"));
            }
            if !(camera.fps > 0.0 && camera.fps <= MAX_CAMERA_FPS) {
                return Err(table.error_at(
                    "camera.fps",
                    format!("must be in (0, {MAX_CAMERA_FPS}], found {}", camera.fps),
                ));
            }
            table.check_name("camera.name", &camera.name)?;
        }
        if let Some(sound) = &arm.sound {
            table.check_name("sound.name", &sound.name)?;
            sound
                .check()
                .map_err(|(field, message)| table.error_at(&format!("sound.{field}"), message))?;
        }
        if let Some(touch) = &arm.touch {
            table.check_name("touch.name", &touch.name)?;
            touch
                .check()
                .map_err(|(field, message)| table.error_at(&format!("touch.{field}"), message))?;
        }
        Ok(Arc::new(SimArmSpec {
            config: arm,
            joints: robot_joints.clone(),
        }))
    }
}

impl DriverSpec for SimArmSpec {
    fn kind(&self) -> &'static str {
        "sim_arm"
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        let mut streams = vec![StreamDecl::joint_state(
            &self.config.name,
            self.joints.len(),
        )];
        if let Some(camera) = &self.config.camera {
            streams.push(StreamDecl::image(
                &camera.name,
                camera.width,
                camera.height,
                camera.fps,
            ));
        }
        if let Some(sound) = &self.config.sound {
            streams.push(StreamDecl::tensor(
                &sound.name,
                sound.shape(),
                Some(1e3 / sound.hop_ms),
            ));
        }
        if let Some(touch) = &self.config.touch {
            streams.push(StreamDecl::tensor(
                &touch.name,
                vec![touch.rows, touch.cols],
                Some(touch.rate_hz),
            ));
        }
        streams
    }
    fn is_arm(&self) -> bool {
        true
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(SimArm::new(
            self.config.clone(),
            self.joints.clone(),
        )))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The deterministic state of the simulated arm and its task.
#[derive(Debug, Clone)]
pub struct SimWorld {
    links: Vec<f64>,
    joints: Vec<JointConfig>,
    stiffness: f64,
    damping: f64,
    q: [f64; MAX_JOINTS],
    qd: [f64; MAX_JOINTS],
    command: [f64; MAX_JOINTS],
    target: [f64; 2],
    /// The look-alike target, with `decoy = true`.
    decoy: Option<[f64; 2]>,
    /// Whether the tone comes from the decoy this episode (`sound.shuffle`).
    tone_at_decoy: bool,
    /// Draws `tone_at_decoy`: apart from `rng`, so the targets are those of the
    /// same seed without the shuffle.
    shuffle: Option<ChaCha8Rng>,
    rng: ChaCha8Rng,
    time_ns: u64,
    episode_ns: u64,
    episode_start_ns: u64,
    tolerance: f64,
    reached_at_ns: Option<u64>,
    /// `target_switch_s`, and whether this episode's target has switched yet.
    switch_ns: Option<u64>,
    switched: bool,
    /// Between a recorded episode's end and the next one's target: the world
    /// runs, no episode is timed or judged.
    between_episodes: bool,
    outcomes: Vec<EpisodeOutcome>,
    seq: u64,
    gripper: Option<SimGripper>,
}

/// A simulated gripper: its opening follows the command at its top speed.
#[derive(Debug, Clone, Copy)]
struct SimGripper {
    opening: f64,
    command: f64,
    speed: f64,
    range: [f64; 2],
}

impl SimWorld {
    pub fn new(cfg: &SimArmConfig, joints: &[JointConfig], seed: u64) -> Self {
        let mut q = [0.0; MAX_JOINTS];
        for (j, value) in cfg.initial_position.iter().enumerate() {
            q[j] = *value;
        }
        let mut world = Self {
            links: cfg.link_lengths.clone(),
            joints: joints.to_vec(),
            stiffness: cfg.stiffness,
            damping: cfg.damping,
            q,
            qd: [0.0; MAX_JOINTS],
            command: q,
            target: [0.0; 2],
            decoy: cfg.decoy.then_some([0.0; 2]),
            tone_at_decoy: false,
            shuffle: (cfg.sound.as_ref())
                .filter(|s| s.shuffle)
                .map(|_| ChaCha8Rng::seed_from_u64(seed ^ 0x5AFF_1E5A_FF1E_5AFF)),
            rng: ChaCha8Rng::seed_from_u64(seed),
            time_ns: 0,
            episode_ns: (cfg.episode_seconds * 1e9) as u64,
            episode_start_ns: 0,
            tolerance: cfg.target_tolerance,
            reached_at_ns: None,
            switch_ns: cfg.target_switch_s.map(|s| (s * 1e9) as u64),
            switched: false,
            between_episodes: false,
            // Room for many episodes, so finishing one does not allocate in a tick.
            outcomes: Vec::with_capacity(1024),
            seq: 0,
            gripper: None,
        };
        world.draw_targets();
        world
    }

    pub fn joints(&self) -> usize {
        self.links.len()
    }

    pub fn reach(&self) -> f64 {
        self.links.iter().sum()
    }

    pub fn target(&self) -> [f64; 2] {
        self.target
    }

    /// The look-alike target, when the world has one.
    pub fn decoy(&self) -> Option<[f64; 2]> {
        self.decoy
    }

    /// Where the tone comes from: the true target, or with `sound.shuffle` the
    /// target an independent coin picks.
    pub fn sound_source(&self) -> [f64; 2] {
        match self.decoy {
            Some(decoy) if self.tone_at_decoy => decoy,
            _ => self.target,
        }
    }

    /// The targets the touch pad can press on.
    pub fn targets(&self) -> ([f64; 2], Option<[f64; 2]>) {
        (self.target, self.decoy)
    }

    pub fn time_ns(&self) -> u64 {
        self.time_ns
    }

    pub fn positions(&self) -> &[f64] {
        &self.q[..self.joints()]
    }

    /// Puts the arm at rest at `q` (demonstration collection).
    pub fn set_positions(&mut self, q: &[f64]) {
        let n = self.joints();
        self.q[..n].copy_from_slice(&q[..n]);
        self.command[..n].copy_from_slice(&q[..n]);
        self.qd = [0.0; MAX_JOINTS];
    }

    fn draw_point(&mut self, angles: (f64, f64)) -> [f64; 2] {
        let angle = self.rng.random_range(angles.0..=angles.1);
        let reach = self.reach();
        let radius = self
            .rng
            .random_range(TARGET_RADIUS.0 * reach..=TARGET_RADIUS.1 * reach);
        [radius * angle.cos(), radius * angle.sin()]
    }

    /// The episode's target (and decoy, on the other side).
    fn draw_targets(&mut self) {
        if self.decoy.is_none() {
            self.target = self.draw_point((-TARGET_ANGLE, TARGET_ANGLE));
            return;
        }
        let side = if self.rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let target = self.draw_point(DECOY_ANGLE);
        let decoy = self.draw_point(DECOY_ANGLE);
        self.target = [target[0], side * target[1]];
        self.decoy = Some([decoy[0], -side * decoy[1]]);
        if let Some(coin) = &mut self.shuffle {
            self.tone_at_decoy = coin.random_bool(0.5);
        }
    }

    /// Starts a new episode with a freshly drawn target.
    pub fn new_target(&mut self) {
        self.draw_targets();
        self.episode_start_ns = self.time_ns;
        self.reached_at_ns = None;
        self.switched = false;
        self.between_episodes = false;
    }

    /// A random joint configuration within limits (demonstration collection).
    pub fn random_configuration(&mut self) -> Vec<f64> {
        (0..self.joints())
            .map(|j| {
                let [lo, hi] = self.joints[j].position;
                self.rng.random_range(lo * 0.8..=hi * 0.8)
            })
            .collect()
    }

    /// Uniform noise in ±`amplitude` (demonstration collection).
    pub fn noise(&mut self, amplitude: f64) -> f64 {
        self.rng.random_range(-amplitude..=amplitude)
    }

    /// Positions of the base and each link end, base first (`joints + 1` used).
    pub fn link_points(&self) -> [[f64; 2]; MAX_JOINTS + 1] {
        let mut points = [[0.0; 2]; MAX_JOINTS + 1];
        let (mut x, mut y, mut angle) = (0.0, 0.0, 0.0);
        for (j, length) in self.links.iter().enumerate() {
            angle += self.q[j];
            x += length * angle.cos();
            y += length * angle.sin();
            points[j + 1] = [x, y];
        }
        points
    }

    pub fn effector(&self) -> [f64; 2] {
        self.link_points()[self.joints()]
    }

    pub fn target_error(&self) -> f64 {
        let [ex, ey] = self.effector();
        (ex - self.target[0]).hypot(ey - self.target[1])
    }

    /// What the taxel pad on the end effector feels now.
    pub fn feel(&self, touch: &Touch, out: &mut [f32]) {
        let decoy = self.decoy.unwrap_or(self.target);
        touch.feel(
            self.effector(),
            &[self.target, decoy],
            TARGET_DRAW_RADIUS,
            out,
        );
    }

    /// What the microphones hear in the window ending at `end_ns` of simulated time.
    pub fn listen(&self, hearing: &mut Hearing, end_ns: u64, out: &mut [f32]) {
        hearing.listen(Some(self.sound_source()), end_ns, out);
    }

    pub fn set_command(&mut self, command: &[f64]) {
        let n = self.joints();
        self.command[..n].copy_from_slice(&command[..n]);
    }

    /// Adds a gripper that starts open.
    pub fn add_gripper(&mut self, config: &GripperConfig) {
        let open = config.open_position();
        self.gripper = Some(SimGripper {
            opening: open,
            command: open,
            speed: config.max_speed,
            range: config.range,
        });
    }

    pub fn set_gripper_command(&mut self, command: f64) {
        if let Some(g) = &mut self.gripper
            && command.is_finite()
        {
            g.command = command.clamp(g.range[0], g.range[1]);
        }
    }

    /// The gripper's opening, when the arm has one.
    pub fn gripper(&self) -> Option<f64> {
        self.gripper.map(|g| g.opening)
    }

    /// Advances the servo dynamics by `dt` seconds.
    pub fn step(&mut self, dt: f64) {
        for j in 0..self.joints() {
            let joint = &self.joints[j];
            let acceleration =
                self.stiffness * (self.command[j] - self.q[j]) - self.damping * self.qd[j];
            self.qd[j] = (self.qd[j] + acceleration * dt).clamp(-joint.velocity, joint.velocity);
            self.q[j] += self.qd[j] * dt;
            let [lo, hi] = joint.position;
            if !(lo..=hi).contains(&self.q[j]) {
                self.q[j] = self.q[j].clamp(lo, hi);
                self.qd[j] = 0.0;
            }
        }
        if let Some(g) = &mut self.gripper {
            let step = g.speed * dt;
            g.opening += (g.command - g.opening).clamp(-step, step);
        }
        self.time_ns += (dt * 1e9).round() as u64;
        if self.between_episodes {
            return;
        }
        if let Some(switch) = self.switch_ns
            && !self.switched
            && self.time_ns - self.episode_start_ns >= switch
        {
            self.draw_targets();
            self.reached_at_ns = None;
            self.switched = true;
        }
        let error = self.target_error();
        if error <= self.tolerance && self.reached_at_ns.is_none() {
            self.reached_at_ns = Some(self.time_ns);
        }
        if self.time_ns - self.episode_start_ns >= self.episode_ns {
            self.finish_episode();
            self.new_target();
        }
    }

    /// Ends the episode now (a recorded episode's end): its outcome as it
    /// stands; the next one starts with [`Self::new_target`].
    pub fn end_episode(&mut self) {
        if !self.between_episodes {
            self.finish_episode();
        }
        self.between_episodes = true;
    }

    fn finish_episode(&mut self) {
        let final_error = self.target_error();
        self.outcomes.push(EpisodeOutcome {
            index: self.outcomes.len(),
            reached: final_error <= self.tolerance,
            final_error,
            time_to_reach_s: self
                .reached_at_ns
                .map(|t| (t - self.episode_start_ns) as f64 / 1e9),
        });
    }

    /// Outcomes so far; an episode at least half done counts with its current error.
    pub fn report(&self) -> TaskReport {
        let mut report = TaskReport {
            task: if self.decoy.is_some() {
                "reach the sounding target"
            } else {
                "reach"
            }
            .into(),
            tolerance: self.tolerance,
            episodes: self.outcomes.clone(),
        };
        if !self.between_episodes && self.time_ns - self.episode_start_ns >= self.episode_ns / 2 {
            let mut partial = self.clone();
            partial.finish_episode();
            report.episodes = partial.outcomes;
        }
        report
    }

    pub fn state(&mut self, stamp_ns: u64, out: &mut JointState) {
        self.seq += 1;
        out.seq = self.seq;
        out.stamp_ns = stamp_ns;
        out.joints = self.joints();
        out.position = self.q;
        out.velocity = self.qd;
        out.gripper = self.gripper();
    }

    /// Renders the top-down view into `image` (its size is kept): dark floor, arm
    /// links in blue, the end effector in green, the target in red on top.
    pub fn render(&self, image: &mut Image) {
        let (w, h) = (image.width, image.height);
        let points = self.link_points();
        let effector = points[self.joints()];
        let scale = 1.0 / (self.reach() * 1.1);
        let link_width = 0.025 / scale;
        for py in 0..h {
            for px in 0..w {
                // Pixel centre in world coordinates (x right, y up, base at the centre).
                let x = ((px as f64 + 0.5) / w as f64 * 2.0 - 1.0) / scale;
                let y = (1.0 - (py as f64 + 0.5) / h as f64 * 2.0) / scale;
                let mut rgb = [40u8, 40, 40];
                if points[..=self.joints()]
                    .windows(2)
                    .any(|s| segment_distance([x, y], s[0], s[1]) <= link_width)
                {
                    rgb = [80, 150, 255];
                }
                if (x - effector[0]).hypot(y - effector[1]) <= EFFECTOR_DRAW_RADIUS {
                    rgb = [40, 220, 40];
                }
                let on = |t: [f64; 2]| (x - t[0]).hypot(y - t[1]) <= TARGET_DRAW_RADIUS;
                if on(self.target) || self.decoy.is_some_and(on) {
                    rgb = [255, 40, 40];
                }
                let i = (py * w + px) * 3;
                image.rgb[i..i + 3].copy_from_slice(&rgb);
            }
        }
    }

    /// Inverse kinematics for the target with the last link pointing away from the
    /// base (the scripted expert's goal). `None` when out of reach.
    pub fn solve_target(&self) -> Option<Vec<f64>> {
        self.solve_point(self.target)
    }

    /// Inverse kinematics for any point, as [`Self::solve_target`] does for the target.
    pub fn solve_point(&self, point: [f64; 2]) -> Option<Vec<f64>> {
        let n = self.joints();
        if n < 2 {
            return None;
        }
        let heading = point[1].atan2(point[0]);
        // Joints between the shoulder and the elbow stay straight, so the links
        // before the elbow act as one; the last link points along the heading.
        let (upper, fore, tail) = if n == 2 {
            (self.links[0], self.links[1], 0.0)
        } else {
            (
                self.links[..n - 2].iter().sum::<f64>(),
                self.links[n - 2],
                self.links[n - 1],
            )
        };
        let radius = point[0].hypot(point[1]) - tail;
        let cos_elbow = (radius * radius - upper * upper - fore * fore) / (2.0 * upper * fore);
        if !(-1.0..=1.0).contains(&cos_elbow) {
            return None;
        }
        let elbow = cos_elbow.acos();
        let shoulder = heading - (fore * elbow.sin()).atan2(upper + fore * elbow.cos());
        let mut q = vec![0.0; n];
        q[0] = shoulder;
        if n == 2 {
            q[1] = elbow;
        } else {
            q[n - 2] = elbow;
            q[n - 1] = heading - shoulder - elbow;
        }
        Some(q)
    }

    /// The scripted expert: `horizon` joint targets at `action_dt` spacing that move
    /// in a straight joint-space line to the IK solution at `speed` rad/s.
    pub fn expert_chunk(&self, horizon: usize, action_dt: f64, speed: f64) -> Option<Vec<f32>> {
        self.expert_chunk_to(self.target, horizon, action_dt, speed)
    }

    /// The scripted expert's chunk toward `point` instead of the target (a
    /// deliberately flawed demonstrator, `reflex demos --mistakes`).
    pub fn expert_chunk_to(
        &self,
        point: [f64; 2],
        horizon: usize,
        action_dt: f64,
        speed: f64,
    ) -> Option<Vec<f32>> {
        let goal = self.solve_point(point)?;
        let n = self.joints();
        let mut q: Vec<f64> = self.positions().to_vec();
        let mut chunk = Vec::with_capacity(horizon * n);
        for _ in 0..horizon {
            let delta: Vec<f64> = (0..n).map(|j| goal[j] - q[j]).collect();
            let largest = delta.iter().fold(0.0f64, |m, d| m.max(d.abs()));
            let step = speed * action_dt;
            let fraction = if largest > step { step / largest } else { 1.0 };
            for j in 0..n {
                q[j] += delta[j] * fraction;
                chunk.push(q[j] as f32);
            }
        }
        Some(chunk)
    }
}

fn segment_distance(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let (abx, aby) = (b[0] - a[0], b[1] - a[1]);
    let length2 = abx * abx + aby * aby;
    let t = if length2 > 0.0 {
        (((p[0] - a[0]) * abx + (p[1] - a[1]) * aby) / length2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (p[0] - a[0] - t * abx).hypot(p[1] - a[1] - t * aby)
}

/// A sensor stream sampled every `period_ns` of simulated time.
struct Sensor<S> {
    sense: S,
    writer: SlotWriter<TensorSample>,
    period_ns: u64,
    /// The index of the next sample due.
    next: u64,
}

impl<S> Sensor<S> {
    /// Publishes the sample due at `sim_time_ns` (sample k at k periods) if it
    /// has not been published yet.
    fn publish(
        &mut self,
        world: &SimWorld,
        stamp_ns: u64,
        sim_time_ns: u64,
        sample: impl FnOnce(&mut S, &SimWorld, u64, &mut [f32]),
    ) {
        let due = sim_time_ns / self.period_ns;
        let sense = &mut self.sense;
        let period_ns = self.period_ns;
        if due >= self.next {
            self.next = due + 1;
            self.writer.publish_with(|slot| {
                slot.seq = due + 1;
                slot.stamp_ns = stamp_ns;
                sample(sense, world, due * period_ns, &mut slot.values);
            });
        }
    }
}

/// The writing ends the simulation publishes into.
struct Outputs {
    state: SlotWriter<JointState>,
    camera: Option<(SlotWriter<Image>, Image, u64)>,
    sound: Option<Sensor<Hearing>>,
    touch: Option<Sensor<Touch>>,
    commands: Arc<Mailbox<JointCommand>>,
    scratch: JointState,
}

impl Outputs {
    /// Applies the newest command, if any.
    fn take_command(&mut self, world: &mut SimWorld) {
        let mut newest = None;
        while let Some(cmd) = self.commands.try_recv() {
            newest = Some(cmd);
        }
        if let Some(cmd) = newest
            && cmd.joints == world.joints()
        {
            world.set_command(cmd.positions());
            if let Some(gripper) = cmd.gripper {
                world.set_gripper_command(gripper);
            }
        }
    }

    fn publish(&mut self, world: &mut SimWorld, stamp_ns: u64, sim_time_ns: u64) {
        world.state(stamp_ns, &mut self.scratch);
        let scratch = self.scratch;
        self.state.publish_with(|slot| *slot = scratch);
        if let Some((writer, frame, period_ns)) = &mut self.camera {
            // Frame k is due at k * period on the simulation's own time.
            let due = sim_time_ns / *period_ns;
            if frame.seq == 0 || due >= frame.seq {
                world.render(frame);
                frame.seq = due + 1;
                frame.stamp_ns = stamp_ns;
                writer.publish_with(|slot| slot.copy_from(frame));
            }
        }
        if let Some(sound) = &mut self.sound {
            sound.publish(
                world,
                stamp_ns,
                sim_time_ns,
                |hearing, world, end_ns, out| world.listen(hearing, end_ns, out),
            );
        }
        if let Some(touch) = &mut self.touch {
            touch.publish(world, stamp_ns, sim_time_ns, |touch, world, _, out| {
                world.feel(touch, out)
            });
        }
    }
}

/// Recorded episodes' ends and beginnings, from the tick to the world.
#[derive(Default)]
struct EpisodeEvents {
    end: AtomicBool,
    begin: AtomicBool,
}

impl EpisodeEvents {
    /// An ended episode is judged as the world stands; a new one draws a target.
    fn apply(&self, world: &mut SimWorld) {
        if self.end.swap(false, Ordering::AcqRel) {
            world.end_episode();
        }
        if self.begin.swap(false, Ordering::AcqRel) {
            world.new_target();
        }
    }
}

pub struct SimArm {
    cfg: SimArmConfig,
    joints: Vec<JointConfig>,
    world: Option<Arc<Mutex<SimWorld>>>,
    outputs: Option<Outputs>,
    simulated: bool,
    stop: Arc<AtomicBool>,
    /// Set by the tick when a recorded episode ends / begins; the world takes
    /// them before its next step (the tick never waits for the world's lock).
    episode_events: Arc<EpisodeEvents>,
    thread: Option<JoinHandle<()>>,
}

impl SimArm {
    pub fn new(cfg: SimArmConfig, joints: Vec<JointConfig>) -> Self {
        Self {
            cfg,
            joints,
            world: None,
            outputs: None,
            simulated: true,
            stop: Arc::new(AtomicBool::new(false)),
            episode_events: Arc::default(),
            thread: None,
        }
    }

    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }
}

impl Driver for SimArm {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        if ctx.joints != self.cfg.link_lengths.len() {
            return Err(self.failed(format!(
                "{} links for {} joints",
                self.cfg.link_lengths.len(),
                ctx.joints
            )));
        }
        self.simulated = ctx.simulated;
        let mut world = SimWorld::new(&self.cfg, &self.joints, ctx.seed);
        if let Some(gripper) = &ctx.gripper {
            world.add_gripper(gripper);
        }
        let (state_writer, state_reader) = latest_slot(&JointState::empty(ctx.joints));
        let commands = Mailbox::new(64);
        let mut ports = DriverPorts::default();
        let camera = self.cfg.camera.as_ref().map(|c| {
            let frame = Image::black(c.width, c.height);
            let (writer, reader) = latest_slot(&frame);
            ports.cameras.push(CameraPort {
                name: c.name.clone(),
                frames: reader,
                width: c.width,
                height: c.height,
            });
            (writer, frame, (1e9 / c.fps.max(0.1)) as u64)
        });
        let mut sensor = |name: &str, len: usize, period_ns: u64| {
            let (writer, reader) = latest_slot(&TensorSample::zeros(len));
            ports.tensors.push(TensorPort {
                name: name.to_string(),
                samples: reader,
                len,
            });
            (writer, period_ns)
        };
        let sound = self.cfg.sound.as_ref().map(|c| {
            let (writer, period_ns) = sensor(&c.name, c.shape().iter().product(), c.hop_ns());
            Sensor {
                sense: Hearing::new(c, ctx.seed),
                writer,
                period_ns,
                next: 0,
            }
        });
        let touch = self.cfg.touch.as_ref().map(|c| {
            let (writer, period_ns) = sensor(&c.name, c.rows * c.cols, c.period_ns());
            Sensor {
                sense: Touch::new(c),
                writer,
                period_ns,
                next: 0,
            }
        });
        ports.arm = Some(ArmPorts {
            state: state_reader,
            commands: commands.clone(),
            publishes_itself: false,
            bad_messages: Default::default(),
        });
        self.outputs = Some(Outputs {
            state: state_writer,
            camera,
            sound,
            touch,
            commands,
            scratch: JointState::empty(ctx.joints),
        });
        self.world = Some(Arc::new(Mutex::new(world)));
        Ok(ports)
    }

    fn start(&mut self) -> Result<(), DriverError> {
        if self.simulated {
            return Ok(());
        }
        let (Some(world), Some(mut outputs)) = (self.world.clone(), self.outputs.take()) else {
            return Err(self.failed("start before open"));
        };
        let stop = self.stop.clone();
        let events = self.episode_events.clone();
        let dt = 1.0 / self.cfg.physics_hz;
        let period = Duration::from_secs_f64(dt);
        let thread = std::thread::Builder::new()
            .name(format!("reflex-sim-{}", self.cfg.name))
            .spawn(move || {
                let start = Instant::now();
                let period_ns = period.as_nanos() as u64;
                // u64: a u32 step count wrapped after 50 days at 1 kHz, and the
                // deadline then fell back to the start (a busy loop).
                let mut step = 0u64;
                while !stop.load(Ordering::Acquire) {
                    {
                        let mut world = world.lock().unwrap_or_else(PoisonError::into_inner);
                        events.apply(&mut world);
                        outputs.take_command(&mut world);
                        world.step(dt);
                        let sim_time = world.time_ns();
                        outputs.publish(&mut world, monotonic_ns(), sim_time);
                    }
                    step += 1;
                    let deadline = start + Duration::from_nanos(period_ns.saturating_mul(step));
                    if Instant::now() < deadline {
                        sleep_until(deadline, Duration::ZERO);
                    }
                }
            })
            .map_err(|e| self.failed(format!("cannot start physics thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn sim_step(&mut self, now_ns: u64) -> Result<(), DriverError> {
        let (Some(world), Some(outputs)) = (&self.world, &mut self.outputs) else {
            return Ok(());
        };
        let mut world = world.lock().unwrap_or_else(PoisonError::into_inner);
        self.episode_events.apply(&mut world);
        outputs.take_command(&mut world);
        let dt = 1.0 / self.cfg.physics_hz;
        let dt_ns = (dt * 1e9).round() as u64;
        while world.time_ns() + dt_ns <= now_ns {
            world.step(dt);
        }
        outputs.publish(&mut world, now_ns, now_ns);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| self.failed("physics thread panicked"))?;
        }
        Ok(())
    }

    fn episode_begins(&mut self) {
        self.episode_events.begin.store(true, Ordering::Release);
    }

    fn episode_ends(&mut self) {
        self.episode_events.end.store(true, Ordering::Release);
    }

    fn task_report(&self) -> Option<TaskReport> {
        let world = self.world.as_ref()?;
        Some(
            world
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .report(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> (SimArmConfig, Vec<JointConfig>) {
        let cfg = SimArmConfig {
            name: "arm".into(),
            link_lengths: vec![0.4, 0.3, 0.2],
            physics_hz: 1000.0,
            stiffness: 400.0,
            damping: 40.0,
            initial_position: vec![0.0, 0.6, 0.6],
            episode_seconds: 5.0,
            target_tolerance: 0.05,
            target_switch_s: None,
            camera: None,
            decoy: false,
            sound: None,
            touch: None,
        };
        let joint = |name: &str| JointConfig {
            name: name.into(),
            position: [-2.8, 2.8],
            velocity: 1.5,
            acceleration: 8.0,
            jerk: None,
        };
        (cfg, vec![joint("a"), joint("b"), joint("c")])
    }

    #[test]
    fn ik_solution_puts_the_effector_on_the_target() {
        let (cfg, joints) = config();
        for seed in 0..50 {
            let mut world = SimWorld::new(&cfg, &joints, seed);
            let q = world
                .solve_target()
                .expect("targets are drawn within reach");
            for (j, value) in q.iter().enumerate() {
                assert!(value.abs() < 2.8, "seed {seed} joint {j} = {value}");
            }
            world.set_positions(&q);
            assert!(
                world.target_error() < 1e-9,
                "seed {seed}: {}",
                world.target_error()
            );
        }
    }

    #[test]
    fn servo_tracks_a_command_within_velocity_limits() {
        let (cfg, joints) = config();
        let mut world = SimWorld::new(&cfg, &joints, 0);
        world.set_command(&[1.0, 0.0, 0.0]);
        let mut previous = world.positions().to_vec();
        for _ in 0..3000 {
            world.step(0.001);
            let now = world.positions().to_vec();
            assert!((now[0] - previous[0]).abs() <= 1.5 * 0.001 + 1e-12);
            previous = now;
        }
        assert!((world.positions()[0] - 1.0).abs() < 1e-3);
    }

    #[test]
    fn following_the_expert_reaches_the_target() {
        let (cfg, joints) = config();
        let mut world = SimWorld::new(&cfg, &joints, 3);
        for _ in 0..40 {
            let chunk = world.expert_chunk(10, 0.1, 1.0).unwrap();
            world.set_command(&chunk[..3].iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
            for _ in 0..100 {
                world.step(0.001);
            }
        }
        assert!(
            world.target_error() < 0.05,
            "error {}",
            world.target_error()
        );
    }

    #[test]
    fn a_switching_target_jumps_mid_episode_and_is_the_one_judged() {
        let (mut cfg, joints) = config();
        cfg.target_switch_s = Some(1.0);
        let mut world = SimWorld::new(&cfg, &joints, 4);
        let first = world.target();
        // On the first target when it switches: reached, then no longer.
        let q = world.solve_target().unwrap();
        world.set_positions(&q);
        world.set_command(&q);
        for _ in 0..999 {
            world.step(0.001);
        }
        assert_eq!(world.target(), first);
        assert!(world.reached_at_ns.is_some());
        world.step(0.001);
        assert_ne!(world.target(), first, "switched at 1 s");
        assert!(world.reached_at_ns.is_none());
        // Follow the new target: reached, timed from the episode's start.
        let q = world.solve_target().unwrap();
        world.set_command(&q);
        for _ in 0..3999 {
            world.step(0.001);
        }
        let report = world.report();
        let outcome = &report.episodes[0];
        assert!(outcome.reached, "{outcome:?}");
        let t = outcome.time_to_reach_s.unwrap();
        assert!(t > 1.0 && t < 2.5, "{t}");
        // The next episode starts on one target again and switches again.
        let second = world.target();
        for _ in 0..1001 {
            world.step(0.001);
        }
        assert_ne!(world.target(), second);
    }

    #[test]
    fn render_shows_the_target_in_red_where_it_is() {
        let (mut cfg, joints) = config();
        cfg.camera = None;
        let world = SimWorld::new(&cfg, &joints, 1);
        let mut image = Image::black(96, 96);
        world.render(&mut image);
        let scale = 1.0 / (world.reach() * 1.1);
        let [tx, ty] = world.target();
        let px = ((tx * scale + 1.0) / 2.0 * 96.0) as usize;
        let py = ((1.0 - ty * scale) / 2.0 * 96.0) as usize;
        let i = (py * 96 + px) * 3;
        assert_eq!(&image.rgb[i..i + 3], &[255, 40, 40]);
        assert!(
            image.rgb.chunks(3).any(|p| p == [40, 220, 40]),
            "effector drawn"
        );
    }

    #[test]
    fn a_decoy_looks_like_the_target_on_the_other_side_and_only_the_target_sounds() {
        let (mut cfg, joints) = config();
        cfg.decoy = true;
        cfg.sound = Some(
            serde_json::from_str(r#"{"mel": {"n_fft": 512, "hop_length": 256, "n_mels": 16}}"#)
                .unwrap(),
        );
        let mut sides = [0, 0];
        for seed in 0..40 {
            let mut world = SimWorld::new(&cfg, &joints, seed);
            let (target, decoy) = (world.target(), world.decoy().unwrap());
            assert!(
                target[1] * decoy[1] < 0.0,
                "seed {seed}: {target:?} {decoy:?}"
            );
            assert_eq!(world.sound_source(), target);
            sides[usize::from(target[1] > 0.0)] += 1;
            let mut image = Image::black(96, 96);
            world.render(&mut image);
            let pixel = |[x, y]: [f64; 2]| {
                let scale = 1.0 / (world.reach() * 1.1);
                let px = ((x * scale + 1.0) / 2.0 * 96.0) as usize;
                let py = ((1.0 - y * scale) / 2.0 * 96.0) as usize;
                image.rgb[(py * 96 + px) * 3..(py * 96 + px) * 3 + 3].to_vec()
            };
            assert_eq!(pixel(target), pixel(decoy));
            world.new_target();
        }
        assert!(sides[0] > 10 && sides[1] > 10, "{sides:?}");
        // The shuffle moves the tone, never the targets.
        let mut shuffled_cfg = cfg.clone();
        shuffled_cfg.sound.as_mut().unwrap().shuffle = true;
        let mut at_decoy = 0;
        for seed in 0..40 {
            let (plain, shuffled) = (
                SimWorld::new(&cfg, &joints, seed),
                SimWorld::new(&shuffled_cfg, &joints, seed),
            );
            assert_eq!(plain.targets(), shuffled.targets());
            at_decoy += usize::from(shuffled.sound_source() != shuffled.target());
        }
        assert!((10..=30).contains(&at_decoy), "{at_decoy}");
    }

    #[test]
    fn same_seed_same_world() {
        let (cfg, joints) = config();
        let a = SimWorld::new(&cfg, &joints, 9);
        let b = SimWorld::new(&cfg, &joints, 9);
        let c = SimWorld::new(&cfg, &joints, 10);
        assert_eq!(a.target(), b.target());
        assert_ne!(a.target(), c.target());
    }
}
