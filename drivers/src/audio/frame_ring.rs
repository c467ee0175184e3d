//! The ring between a capture callback and the thread that publishes windows: one
//! writer (the callback) appends interleaved f32 frames with their capture stamps,
//! one reader takes the newest `window` frames. The writer never waits and never
//! allocates; when the reader falls behind by more than the ring holds, the oldest
//! frames are overwritten and the read that wanted them fails (an overrun).
//!
//! Samples and stamps are atomics (f32 as bits), so a read racing a write is a
//! stale or torn value, never undefined behaviour; torn reads are detected like a
//! seqlock's: the writer announces the frames it is about to overwrite (`claimed`)
//! before writing them, and the reader checks, after copying, that none of the
//! frames it copied was claimed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

pub struct FrameRing {
    channels: usize,
    /// Frames the ring holds.
    capacity: usize,
    /// `capacity * channels` samples, frame `f` at `(f % capacity) * channels`.
    samples: Box<[AtomicU32]>,
    /// Capture stamp of each frame, ns on the run's clock.
    stamps: Box<[AtomicU64]>,
    /// Frames the writer has started writing: frames before `claimed - capacity`
    /// may be overwritten.
    claimed: AtomicU64,
    /// Frames written completely since the start.
    written: AtomicU64,
    /// Reads whose frames were overwritten, and frames pushed in a burst larger
    /// than the ring (dropped).
    overruns: AtomicU64,
}

/// A window read from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// One past its last frame (frames since the start of capture).
    pub end: u64,
    /// Capture stamp of its last frame, ns on the run's clock.
    pub stamp_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing captured yet.
    Empty,
    /// The writer overwrote frames of the window while (or before) they were read.
    Overrun,
}

impl FrameRing {
    /// A ring of `capacity` frames of `channels` samples (both at least 1).
    pub fn new(channels: usize, capacity: usize) -> Self {
        let (channels, capacity) = (channels.max(1), capacity.max(1));
        Self {
            channels,
            capacity,
            samples: (0..capacity * channels)
                .map(|_| AtomicU32::new(0))
                .collect(),
            stamps: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            claimed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
        }
    }

    /// Frames written since the start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// Appends `samples.len() / channels` frames (interleaved; a trailing partial
    /// frame is ignored); frame `i` is stamped `first_stamp_ns + i * frame_ns`. Only
    /// one thread may push. Never blocks, never allocates.
    pub fn push<S>(
        &self,
        samples: &[S],
        to_f32: impl Fn(&S) -> f32,
        first_stamp_ns: u64,
        frame_ns: f64,
    ) {
        let frames = samples.len() / self.channels;
        // A burst larger than the ring: its oldest frames would be overwritten by
        // its own newest before anyone could read them.
        let skip = frames.saturating_sub(self.capacity);
        if skip > 0 {
            self.overruns.fetch_add(skip as u64, Ordering::Relaxed);
        }
        let start = self.written.load(Ordering::Relaxed);
        let count = (frames - skip) as u64;
        self.claimed.store(start + count, Ordering::Relaxed);
        // Pairs with the reader's fence: a reader that sees any of the stores below
        // also sees the claim.
        fence(Ordering::Release);
        for i in 0..frames - skip {
            let frame = start + i as u64;
            let slot = (frame % self.capacity as u64) as usize;
            let from = (skip + i) * self.channels;
            for c in 0..self.channels {
                self.samples[slot * self.channels + c]
                    .store(to_f32(&samples[from + c]).to_bits(), Ordering::Relaxed);
            }
            let stamp = first_stamp_ns as f64 + (skip + i) as f64 * frame_ns;
            self.stamps[slot].store(stamp as u64, Ordering::Relaxed);
        }
        self.written.store(start + count, Ordering::Release);
    }

    /// Copies the newest `out.len() / channels` frames into `out` (interleaved;
    /// frames from before the start of capture are silence).
    pub fn read_newest(&self, out: &mut [f32]) -> Result<Window, ReadError> {
        self.read_ending_at(self.written(), out)
    }

    /// Copies the frames that end at frame `end` (at most the frames written).
    pub fn read_ending_at(&self, end: u64, out: &mut [f32]) -> Result<Window, ReadError> {
        let end = end.min(self.written());
        if end == 0 {
            return Err(ReadError::Empty);
        }
        let window = (out.len() / self.channels) as u64;
        let start = end.saturating_sub(window);
        if window > self.capacity as u64 {
            self.overruns.fetch_add(1, Ordering::Relaxed);
            return Err(ReadError::Overrun);
        }
        let silence = ((window - (end - start)) as usize) * self.channels;
        out[..silence].fill(0.0);
        for (k, frame) in (start..end).enumerate() {
            let slot = (frame % self.capacity as u64) as usize;
            let to = silence + k * self.channels;
            for c in 0..self.channels {
                out[to + c] =
                    f32::from_bits(self.samples[slot * self.channels + c].load(Ordering::Relaxed));
            }
        }
        let last = ((end - 1) % self.capacity as u64) as usize;
        let stamp_ns = self.stamps[last].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        // Frames before `claimed - capacity` may have been overwritten.
        if self.claimed.load(Ordering::Relaxed) > start + self.capacity as u64 {
            self.overruns.fetch_add(1, Ordering::Relaxed);
            return Err(ReadError::Overrun);
        }
        Ok(Window { end, stamp_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(v: &f32) -> f32 {
        *v
    }

    /// Frames `from..to` of a ramp: frame f holds (f, -f) in two channels.
    fn ramp(from: u64, to: u64) -> Vec<f32> {
        (from..to).flat_map(|f| [f as f32, -(f as f32)]).collect()
    }

    #[test]
    fn the_newest_window_wraps_around_the_end_of_the_ring() {
        let ring = FrameRing::new(2, 8);
        let mut out = vec![0.0; 2 * 5];
        assert_eq!(ring.read_newest(&mut out), Err(ReadError::Empty));
        // 3 frames, then a window of 5: silence before the first frame.
        ring.push(&ramp(0, 3), identity, 1_000, 10.0);
        let w = ring.read_newest(&mut out).unwrap();
        assert_eq!(
            w,
            Window {
                end: 3,
                stamp_ns: 1_020
            }
        );
        assert_eq!(out, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 2.0, -2.0]);
        // Frames 3..14: the ring (8 frames) has wrapped; the newest 5 are 9..14.
        ring.push(&ramp(3, 7), identity, 1_030, 10.0);
        ring.push(&ramp(7, 14), identity, 1_070, 10.0);
        let w = ring.read_newest(&mut out).unwrap();
        assert_eq!(
            w,
            Window {
                end: 14,
                stamp_ns: 1_130
            }
        );
        assert_eq!(out, ramp(9, 14));
        assert_eq!(ring.overruns(), 0);
    }

    #[test]
    fn windows_overwritten_before_they_are_read_are_overruns() {
        let ring = FrameRing::new(2, 8);
        let mut out = vec![0.0; 2 * 4];
        ring.push(&ramp(0, 6), identity, 0, 1.0);
        ring.push(&ramp(6, 12), identity, 6, 1.0);
        // Frames 4..12 are in the ring; the window ending at 6 needs 2..6.
        assert_eq!(ring.read_ending_at(6, &mut out), Err(ReadError::Overrun));
        assert_eq!(ring.overruns(), 1);
        ring.read_ending_at(8, &mut out).unwrap();
        assert_eq!(out, ramp(4, 8));
        // A burst larger than the ring keeps its newest 8 frames, counts the rest.
        ring.push(&ramp(12, 32), identity, 12, 1.0);
        assert_eq!(ring.overruns(), 1 + 12);
        assert_eq!(ring.written(), 12 + 8);
        let w = ring.read_newest(&mut out).unwrap();
        assert_eq!(out, ramp(28, 32));
        assert_eq!(w.stamp_ns, 31, "stamps follow the frames kept");
    }

    #[test]
    fn a_reader_racing_the_writer_never_returns_a_torn_window() {
        let ring = std::sync::Arc::new(FrameRing::new(2, 64));
        let writer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut next = 0u64;
                // Frames up to 2^24 stay exact in f32.
                while next < 1 << 22 {
                    let n = 1 + next % 37;
                    ring.push(&ramp(next, next + n), identity, next, 1.0);
                    next += n;
                }
            })
        };
        let mut out = vec![0.0; 2 * 48];
        let (mut good, mut overruns) = (0, 0);
        while !writer.is_finished() {
            match ring.read_newest(&mut out) {
                Ok(w) if w.end >= 48 => {
                    let first = w.end - 48;
                    assert_eq!(out, ramp(first, w.end), "window ending at {}", w.end);
                    assert_eq!(w.stamp_ns, w.end - 1);
                    good += 1;
                }
                Ok(_) | Err(ReadError::Empty) => {}
                Err(ReadError::Overrun) => overruns += 1,
            }
        }
        writer.join().unwrap();
        assert!(good > 100, "{good} windows read, {overruns} overruns");
        assert_eq!(ring.overruns(), overruns);
    }
}
