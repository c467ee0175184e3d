//! What a camera's frames say about the camera: fresh, repeated, dropped or late,
//! judged from the capture's own sequence numbers and timestamps (never from image
//! content, so a static scene is a stream of fresh frames), and how capture
//! timestamps map to the run's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reflex_runtime::stream::SourceCounters;

/// Counters of one camera, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct FrameCounters {
    /// Frames published as fresh.
    pub fresh: AtomicU64,
    /// Largest arrival - capture stamp seen, ns (how far behind the stamps run).
    pub max_delay_ns: AtomicU64,
    /// What the loop shows: repeated (sequence number or capture stamp did not
    /// advance: not published), dropped (a jump in the capture's sequence), late
    /// (reached reflex more than `late_after` after capture), reconnects.
    pub source: Arc<SourceCounters>,
}

impl FrameCounters {
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} fresh, {} repeated, {} dropped, {} late, {} reconnects; stamps at most {:.1} ms behind arrival",
            get(&self.fresh),
            get(&self.source.repeated),
            get(&self.source.dropped),
            get(&self.source.late),
            get(&self.source.reconnects),
            get(&self.max_delay_ns) as f64 / 1e6
        )
    }
}

/// One frame as the capture describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameInfo {
    /// The capture's frame index (`CAP_PROP_POS_FRAMES`), when it keeps one.
    pub index: Option<u64>,
    /// The capture's timestamp, ns on its own clock (`CAP_PROP_POS_MSEC`), when
    /// it has one.
    pub stamp_ns: Option<u64>,
    /// When reflex got it, ns on the run's clock.
    pub arrival_ns: u64,
}

/// How capture stamps become stamps on the run's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StampMapping {
    /// The capture stamps on CLOCK_MONOTONIC (V4L2 buffer timestamps): shift by
    /// the fixed offset between CLOCK_MONOTONIC and the run's clock.
    Monotonic { offset_ns: i64 },
    /// The capture stamps on a clock of its own (a GStreamer pipeline's running
    /// time, RTP/PTS of a stream, a file's media time): offset = the smallest
    /// (arrival - stamp) seen, i.e. the frame that came through fastest; stamps
    /// are that much shifted, so they never run ahead of arrivals.
    Estimated { offset_ns: Option<i64> },
    /// No usable stamp: the arrival time.
    Arrival,
}

/// The verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Publish it, stamped `stamp_ns` on the run's clock.
    Fresh { stamp_ns: u64 },
    /// Its index or stamp did not advance: not fresh, not published.
    Repeated,
}

/// Judges a camera's frames in order.
#[derive(Debug)]
pub struct FrameJudge {
    mapping: StampMapping,
    /// Arrival - capture beyond this is late.
    late_after_ns: u64,
    last_index: Option<u64>,
    last_stamp: Option<u64>,
}

impl FrameJudge {
    pub fn new(mapping: StampMapping, late_after_ns: u64) -> Self {
        Self {
            mapping,
            late_after_ns,
            last_index: None,
            last_stamp: None,
        }
    }

    /// Forgets the last frame (the source was reopened or a file rewound: its
    /// numbering and its clock start again, so the offset is estimated anew).
    pub fn restart(&mut self) {
        self.last_index = None;
        self.last_stamp = None;
        if let StampMapping::Estimated { offset_ns } = &mut self.mapping {
            *offset_ns = None;
        }
    }

    pub fn mapping(&self) -> StampMapping {
        self.mapping
    }

    pub fn judge(&mut self, frame: FrameInfo, counters: &FrameCounters) -> Verdict {
        let stale_index =
            matches!((frame.index, self.last_index), (Some(i), Some(last)) if i <= last);
        let stale_stamp =
            matches!((frame.stamp_ns, self.last_stamp), (Some(s), Some(last)) if s <= last);
        if stale_index || stale_stamp {
            counters.source.repeated.fetch_add(1, Ordering::Relaxed);
            return Verdict::Repeated;
        }
        if let (Some(i), Some(last)) = (frame.index, self.last_index)
            && i > last + 1
        {
            counters
                .source
                .dropped
                .fetch_add(i - last - 1, Ordering::Relaxed);
        }
        self.last_index = frame.index.or(self.last_index);
        self.last_stamp = frame.stamp_ns.or(self.last_stamp);
        let stamp_ns = self.map(frame);
        let delay = frame.arrival_ns.saturating_sub(stamp_ns);
        counters.max_delay_ns.fetch_max(delay, Ordering::Relaxed);
        if delay > self.late_after_ns {
            counters.source.late.fetch_add(1, Ordering::Relaxed);
        }
        counters.fresh.fetch_add(1, Ordering::Relaxed);
        Verdict::Fresh { stamp_ns }
    }

    /// The frame's capture time on the run's clock, never after its arrival.
    fn map(&mut self, frame: FrameInfo) -> u64 {
        let Some(stamp) = frame.stamp_ns else {
            return frame.arrival_ns;
        };
        let mapped = match &mut self.mapping {
            StampMapping::Arrival => return frame.arrival_ns,
            StampMapping::Monotonic { offset_ns } => stamp as i64 + *offset_ns,
            StampMapping::Estimated { offset_ns } => {
                let here = frame.arrival_ns as i64 - stamp as i64;
                let offset = offset_ns.map_or(here, |o| o.min(here));
                *offset_ns = Some(offset);
                stamp as i64 + offset
            }
        };
        (mapped.max(0) as u64).min(frame.arrival_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(index: u64, stamp_ms: u64, arrival_ms: u64) -> FrameInfo {
        FrameInfo {
            index: Some(index),
            stamp_ns: Some(stamp_ms * 1_000_000),
            arrival_ns: arrival_ms * 1_000_000,
        }
    }

    #[test]
    fn frames_whose_index_or_stamp_does_not_advance_are_repeated_not_fresh() {
        let counters = FrameCounters::default();
        let mut judge = FrameJudge::new(StampMapping::Arrival, 100_000_000);
        assert!(matches!(
            judge.judge(frame(1, 33, 40), &counters),
            Verdict::Fresh { .. }
        ));
        // A V4L2 select() timeout hands back the last buffer again.
        assert_eq!(judge.judge(frame(1, 33, 80), &counters), Verdict::Repeated);
        // Same index, newer stamp (or the other way round): still not fresh.
        assert_eq!(judge.judge(frame(1, 66, 90), &counters), Verdict::Repeated);
        assert!(matches!(
            judge.judge(frame(2, 66, 100), &counters),
            Verdict::Fresh { .. }
        ));
        // Index 5 after 2: two frames were dropped by the capture.
        assert!(matches!(
            judge.judge(frame(5, 166, 200), &counters),
            Verdict::Fresh { .. }
        ));
        assert_eq!(counters.source.repeated.load(Ordering::Relaxed), 2);
        assert_eq!(counters.source.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(counters.fresh.load(Ordering::Relaxed), 3);
        // After a reopen the numbering starts again.
        judge.restart();
        assert!(matches!(
            judge.judge(frame(1, 10, 300), &counters),
            Verdict::Fresh { .. }
        ));
    }

    #[test]
    fn a_static_scene_is_fresh_frames_judged_by_numbers_alone() {
        // The judge never sees pixels: identical images with advancing numbers
        // are all fresh.
        let counters = FrameCounters::default();
        let mut judge = FrameJudge::new(StampMapping::Arrival, 100_000_000);
        for k in 1..=100 {
            assert!(matches!(
                judge.judge(frame(k, 33 * k, 33 * k + 5), &counters),
                Verdict::Fresh { .. }
            ));
        }
        assert_eq!(counters.source.repeated.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn estimated_stamps_use_the_fastest_frame_and_never_run_ahead_of_arrival() {
        let counters = FrameCounters::default();
        let mut judge = FrameJudge::new(StampMapping::Estimated { offset_ns: None }, 20_000_000);
        // The stream's clock starts at 0; frames arrive 1000 ms + 5..15 ms of
        // transport later.
        let delays = [12, 7, 5, 9, 15, 5, 6];
        let mut stamps = Vec::new();
        for (k, d) in delays.iter().enumerate() {
            let capture = 33 * k as u64;
            match judge.judge(frame(k as u64 + 1, capture, 1000 + capture + d), &counters) {
                Verdict::Fresh { stamp_ns } => stamps.push(stamp_ns),
                Verdict::Repeated => panic!("fresh"),
            }
        }
        // Once the fastest frame (5 ms) is seen, stamps are capture + 1005 ms:
        // exact up to the fastest frame's own delay.
        for (k, s) in stamps.iter().enumerate().skip(2) {
            assert_eq!(*s, (1005 + 33 * k as u64) * 1_000_000);
        }
        assert_eq!(counters.source.late.load(Ordering::Relaxed), 0);
        // Monotonic stamps shift by the fixed offset.
        let mut mono = FrameJudge::new(
            StampMapping::Monotonic {
                offset_ns: -500_000_000,
            },
            20_000_000,
        );
        assert_eq!(
            mono.judge(frame(1, 600, 130), &counters),
            Verdict::Fresh {
                stamp_ns: 100_000_000
            }
        );
        // A stamp that would be after the arrival is clamped to it.
        assert_eq!(
            mono.judge(frame(2, 700, 150), &counters),
            Verdict::Fresh {
                stamp_ns: 150_000_000
            }
        );
    }
}
