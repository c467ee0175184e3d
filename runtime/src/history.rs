//! Observation history for policies that condition on past observations
//! (LeRobot's `n_obs_steps`: Diffusion Policy uses the last 2).
//!
//! The tick records every joint state and every new camera frame into rings
//! allocated once; when it asks for a chunk it fills the observation's past frames
//! from them: frame `k` is the joint state `k` action periods (a whole number of
//! ticks) before now and, per camera, the newest frame captured at or before that
//! time. Until enough has been recorded the oldest sample stands in, as LeRobot
//! fills its queue with the first observation.

use crate::driver::{CameraPort, TensorPort};
use crate::types::{Image, JointState, Observation, TensorSample};

/// A stamped sample a ring keeps (camera frames, tensor samples).
trait Stamped {
    fn seq(&self) -> u64;
    fn stamp_ns(&self) -> u64;
    fn copy_from(&mut self, other: &Self);
}

impl Stamped for Image {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn stamp_ns(&self) -> u64 {
        self.stamp_ns
    }
    fn copy_from(&mut self, other: &Self) {
        Image::copy_from(self, other)
    }
}

impl Stamped for TensorSample {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn stamp_ns(&self) -> u64 {
        self.stamp_ns
    }
    fn copy_from(&mut self, other: &Self) {
        TensorSample::copy_from(self, other)
    }
}

/// Fixed-capacity ring, newest last.
struct Ring<T> {
    items: Vec<T>,
    next: usize,
    len: usize,
}

impl<T> Ring<T> {
    fn new(items: Vec<T>) -> Self {
        Self {
            items,
            next: 0,
            len: 0,
        }
    }

    /// The slot the next sample goes into (the oldest once full).
    fn push_slot(&mut self) -> &mut T {
        let slot = self.next;
        self.next = (self.next + 1) % self.items.len();
        self.len = (self.len + 1).min(self.items.len());
        &mut self.items[slot]
    }

    /// `back` samples before the newest (0: the newest), clamped to the oldest.
    fn back(&self, back: usize) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        let back = back.min(self.len - 1);
        let cap = self.items.len();
        Some(&self.items[(self.next + cap - 1 - back) % cap])
    }
}

/// The past the tick keeps for `frames - 1` earlier observations.
pub struct ObservationHistory {
    frames: usize,
    /// Some stream takes the sample closest to a time (`sample = "aligned"`).
    aligned: bool,
    ticks_per_frame: usize,
    period_ns: u64,
    states: Ring<JointState>,
    /// Per camera, its recent frames.
    images: Vec<Ring<Image>>,
    /// Per tensor or audio stream, its recent samples.
    tensors: Vec<Ring<TensorSample>>,
}

impl ObservationHistory {
    /// `frames`: observations the policy sees (1 = no history); one frame is
    /// `ticks_per_frame` ticks (`period_ns`) before the next.
    pub fn new(
        frames: usize,
        ticks_per_frame: usize,
        period_ns: u64,
        joints: usize,
        cameras: &[CameraPort],
        tensors: &[TensorPort],
        align_depth: usize,
    ) -> Self {
        let frames = frames.max(1);
        let ticks_per_frame = ticks_per_frame.max(1);
        // At most one new sample a tick can be seen; one more so that the sample
        // at exactly `frames - 1` periods back is still there. Aligned streams keep
        // at least `align_depth` samples to choose from.
        let depth = ((frames - 1) * ticks_per_frame + 2).max(align_depth);
        Self {
            frames,
            aligned: align_depth > 0,
            ticks_per_frame,
            period_ns,
            states: Ring::new(vec![JointState::empty(joints); depth]),
            images: cameras
                .iter()
                .map(|c| Ring::new(vec![Image::black(c.width, c.height); depth]))
                .collect(),
            tensors: tensors
                .iter()
                .map(|t| Ring::new(vec![TensorSample::zeros(t.len); depth]))
                .collect(),
        }
    }

    /// True when the policy sees past observations or a stream is aligned (and the
    /// tick must record).
    pub fn is_needed(&self) -> bool {
        self.frames > 1 || self.aligned
    }

    /// Camera `i`'s recorded frame captured closest to `stamp_ns`.
    pub fn closest_image(&self, i: usize, stamp_ns: u64) -> Option<&Image> {
        closest(self.images.get(i)?, stamp_ns)
    }

    /// Tensor stream `i`'s recorded sample captured closest to `stamp_ns`.
    pub fn closest_tensor(&self, i: usize, stamp_ns: u64) -> Option<&TensorSample> {
        closest(self.tensors.get(i)?, stamp_ns)
    }

    /// Records this tick's state (None when it was invalid: the last valid one is
    /// repeated, so ticks stay evenly spaced) and any new camera frame or tensor
    /// sample. No allocation once a camera's size is known.
    pub fn record(
        &mut self,
        state: Option<&JointState>,
        cameras: &mut [CameraPort],
        tensors: &mut [TensorPort],
    ) {
        if !self.is_needed() {
            return;
        }
        let state = match (state, self.states.back(0)) {
            (Some(state), _) => *state,
            (None, Some(last)) => *last,
            (None, None) => return,
        };
        *self.states.push_slot() = state;
        for (ring, camera) in self.images.iter_mut().zip(cameras) {
            push_if_new(ring, camera.frames.latest());
        }
        for (ring, port) in self.tensors.iter_mut().zip(tensors) {
            push_if_new(ring, port.samples.latest());
        }
    }

    /// Fills `obs.history` for an observation taken now (`obs.stamp_ns`), after
    /// this tick's [`record`](Self::record).
    pub fn fill(&self, obs: &mut Observation) {
        for (k, frame) in obs.history.iter_mut().enumerate() {
            let periods = k + 1;
            let stamp_ns = obs.stamp_ns.saturating_sub(periods as u64 * self.period_ns);
            // The newest state is this tick's: `periods` frames back is that many
            // whole frames of ticks before it.
            if let Some(state) = self.states.back(periods * self.ticks_per_frame) {
                frame.joints = *state;
            }
            frame.stamp_ns = stamp_ns;
            for (image, ring) in frame.images.iter_mut().zip(&self.images) {
                if let Some(found) = at_or_before(ring, stamp_ns) {
                    image.copy_from(found);
                }
            }
            for (tensor, ring) in frame.tensors.iter_mut().zip(&self.tensors) {
                if let Some(found) = at_or_before(ring, stamp_ns) {
                    tensor.copy_from(found);
                }
            }
        }
    }
}

/// The sample whose stamp is nearest `stamp_ns` (the newer among equals).
fn closest<T: Stamped>(ring: &Ring<T>, stamp_ns: u64) -> Option<&T> {
    (0..ring.len)
        .filter_map(|back| ring.back(back))
        .min_by_key(|s| s.stamp_ns().abs_diff(stamp_ns))
}

fn push_if_new<T: Stamped>(ring: &mut Ring<T>, latest: &T) {
    let is_new = ring
        .back(0)
        .is_none_or(|newest| newest.seq() != latest.seq());
    if latest.seq() != 0 && is_new {
        ring.push_slot().copy_from(latest);
    }
}

/// The newest sample captured at or before `stamp_ns`, else the oldest there is.
fn at_or_before<T: Stamped>(ring: &Ring<T>, stamp_ns: u64) -> Option<&T> {
    let mut oldest = None;
    for back in 0..ring.len {
        let sample = ring.back(back)?;
        if sample.stamp_ns() <= stamp_ns {
            return Some(sample);
        }
        oldest = Some(sample);
    }
    oldest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::latest_slot;

    fn state(x: f64) -> JointState {
        let mut s = JointState::empty(1);
        s.position[0] = x;
        s
    }

    #[test]
    fn past_frames_are_whole_periods_back_and_clamp_to_the_oldest() {
        let (mut writer, reader) = latest_slot(&Image::black(2, 1));
        let mut cameras = vec![CameraPort {
            name: "c".into(),
            frames: reader,
            width: 2,
            height: 1,
        }];
        let (mut tensor_writer, tensor_reader) = latest_slot(&TensorSample::zeros(2));
        let mut tensors = vec![TensorPort {
            name: "taxels".into(),
            samples: tensor_reader,
            len: 2,
        }];
        // 3 frames, 4 ticks a frame, 10 ms a tick.
        let mut history = ObservationHistory::new(3, 4, 40_000_000, 1, &cameras, &tensors, 0);
        let mut obs = Observation::blank(1, &[(2, 1)], &[2], 3, 0);
        for tick in 0..=10u64 {
            // A tensor sample every third tick.
            if tick % 3 == 0 {
                tensor_writer.publish_with(|sample| {
                    sample.seq = tick + 1;
                    sample.stamp_ns = tick * 10_000_000;
                    sample.values.fill(tick as f32);
                });
            }
            // A camera frame every other tick, stamped with its tick's time.
            if tick % 2 == 0 {
                writer.publish_with(|image| {
                    image.seq = tick + 1;
                    image.stamp_ns = tick * 10_000_000;
                    image.rgb.fill(tick as u8);
                });
            }
            history.record(Some(&state(tick as f64)), &mut cameras, &mut tensors);
        }
        obs.stamp_ns = 100_000_000;
        history.fill(&mut obs);
        // 4 and 8 ticks before tick 10.
        assert_eq!(obs.history[0].joints.position[0], 6.0);
        assert_eq!(obs.history[1].joints.position[0], 2.0);
        assert_eq!(obs.history[0].stamp_ns, 60_000_000);
        assert_eq!(obs.history[0].images[0].rgb[0], 6);
        assert_eq!(obs.history[1].images[0].rgb[0], 2);
        // The newest tensor sample at or before 60 ms (tick 6) and 20 ms (tick 0).
        assert_eq!(obs.history[0].tensors[0].values, vec![6.0, 6.0]);
        assert_eq!(obs.history[1].tensors[0].values, vec![0.0, 0.0]);
        assert_eq!(obs.history[1].tensors[0].seq, 1);
        assert_eq!(
            obs.frame(0).joints.position[0],
            0.0,
            "frame 0 is the observation itself"
        );
        assert_eq!(obs.frame(2).joints.position[0], 2.0);
        // The frame captured closest to a time, on either side of it.
        assert_eq!(
            history.closest_image(0, 61_000_000).unwrap().stamp_ns,
            60_000_000
        );
        assert_eq!(
            history.closest_image(0, 69_000_000).unwrap().stamp_ns,
            60_000_000
        );
        assert_eq!(
            history.closest_image(0, 71_000_000).unwrap().stamp_ns,
            80_000_000
        );
        assert_eq!(
            history.closest_tensor(0, 40_000_000).unwrap().stamp_ns,
            30_000_000
        );
        assert!(history.closest_image(1, 0).is_none());

        // Right after the start only the first sample exists: it stands in.
        let mut young = ObservationHistory::new(3, 4, 40_000_000, 1, &cameras, &tensors, 0);
        young.record(Some(&state(7.0)), &mut cameras, &mut tensors);
        young.record(None, &mut cameras, &mut tensors);
        young.fill(&mut obs);
        assert_eq!(obs.history[0].joints.position[0], 7.0);
        assert_eq!(obs.history[1].joints.position[0], 7.0);
    }
}
