//! Warnings about events that can arrive thousands of times a second (bad messages
//! from the network): the first few are logged, then at most one line per interval
//! saying how many were left out. Every event is counted, for the run summary.
//!
//! Not for the tick: [`WarnLimiter::hit`] takes a short lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub struct WarnLimiter {
    burst: u64,
    interval: Duration,
    total: Arc<AtomicU64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_line: Option<Instant>,
    /// Events since the last line that were not logged.
    suppressed: u64,
}

impl WarnLimiter {
    /// Logs the first `burst` events, then one line per `interval`.
    pub fn new(burst: u64, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            total: Arc::new(AtomicU64::new(0)),
            state: Mutex::new(State::default()),
        }
    }

    /// The default for bad network messages: 5 lines, then one every 5 s.
    pub fn for_network() -> Self {
        Self::new(5, Duration::from_secs(5))
    }

    /// Counts one event. `Some(n)` when it should be logged now, `n` being the
    /// events left out since the previous line.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        let count = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = count <= self.burst
            || state
                .last_line
                .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last_line = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }

    /// Events counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Events counted since the last logged line and not mentioned yet.
    pub fn suppressed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .suppressed
    }

    /// The shared counter (for a summary read after the limiter is gone).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.total.clone()
    }
}

/// ` (N more since the last report)` when `suppressed > 0`, else nothing.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} more since the last report)")
    } else {
        String::new()
    }
}

/// The most of a payload a log line shows.
pub const MAX_EXCERPT_BYTES: usize = 100;

/// Up to [`MAX_EXCERPT_BYTES`] of `payload` as escaped text, with the total size
/// when cut: a log line never carries a whole message from the network.
pub fn excerpt(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(MAX_EXCERPT_BYTES)];
    let text = String::from_utf8_lossy(shown).escape_debug().to_string();
    if payload.len() > MAX_EXCERPT_BYTES {
        format!("\"{text}\"... ({} bytes)", payload.len())
    } else {
        format!("\"{text}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_interval_with_the_count_left_out() {
        let limiter = WarnLimiter::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        let lines: Vec<Option<u64>> = (0..20_000)
            .map(|i| limiter.hit_at(t0 + Duration::from_millis(i)))
            .collect();
        // 20 s of events, one per ms: 3 at first, then one line every 5 s.
        let logged: Vec<(usize, u64)> = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.map(|n| (i, n)))
            .collect();
        assert_eq!(
            logged,
            vec![
                (0, 0),
                (1, 0),
                (2, 0),
                (5002, 4999),
                (10002, 4999),
                (15002, 4999)
            ]
        );
        assert_eq!(limiter.total(), 20_000);
        assert_eq!(limiter.suppressed(), 4997);
        assert_eq!(limiter.counter().load(Ordering::Relaxed), 20_000);
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        let big = vec![b'x'; 1_000_000];
        let shown = excerpt(&big);
        assert!(shown.len() < MAX_EXCERPT_BYTES + 40, "{shown}");
        assert!(shown.ends_with("... (1000000 bytes)"), "{shown}");
        assert_eq!(excerpt(b"rearm\n"), "\"rearm\\n\"");
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(7), " (7 more since the last report)");
    }
}
