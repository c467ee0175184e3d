//! The inference delay a new chunk is expected to take, from recent latencies:
//! real-time chunking freezes the actions that run meanwhile.

/// Latencies kept at most.
pub const MAX_DELAY_WINDOW: usize = 64;

/// A percentile of the last `window` inference latencies (LeRobot uses the
/// maximum: percentile 100). Fixed storage: recording and estimating never
/// allocate.
#[derive(Debug, Clone)]
pub struct DelayEstimate {
    latencies_ns: [u64; MAX_DELAY_WINDOW],
    window: usize,
    len: usize,
    next: usize,
    percentile: f64,
}

impl DelayEstimate {
    /// `window` is clamped to 1..=[`MAX_DELAY_WINDOW`], `percentile` to 0..=100.
    pub fn new(window: usize, percentile: f64) -> Self {
        Self {
            latencies_ns: [0; MAX_DELAY_WINDOW],
            window: window.clamp(1, MAX_DELAY_WINDOW),
            len: 0,
            next: 0,
            percentile: percentile.clamp(0.0, 100.0),
        }
    }

    pub fn record_ns(&mut self, latency_ns: u64) {
        self.latencies_ns[self.next] = latency_ns;
        self.next = (self.next + 1) % self.window;
        self.len = (self.len + 1).min(self.window);
    }

    /// The percentile of the recorded latencies (nearest rank), ns; 0 before any.
    pub fn latency_ns(&self) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let mut sorted = [0u64; MAX_DELAY_WINDOW];
        sorted[..self.len].copy_from_slice(&self.latencies_ns[..self.len]);
        sorted[..self.len].sort_unstable();
        let rank = (self.percentile / 100.0 * self.len as f64).ceil() as usize;
        sorted[rank.clamp(1, self.len) - 1]
    }

    /// The delay in control ticks at `rate_hz`, rounded up.
    pub fn ticks(&self, rate_hz: f64) -> u64 {
        (self.latency_ns() as f64 * rate_hz / 1e9).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_of_the_window_by_nearest_rank() {
        let mut d = DelayEstimate::new(4, 100.0);
        assert_eq!(d.latency_ns(), 0);
        for ms in [30, 10, 20, 50, 40] {
            d.record_ns(ms * 1_000_000);
        }
        // The window holds 10, 20, 50, 40 (30 fell out): the maximum is 50 ms.
        assert_eq!(d.latency_ns(), 50_000_000);
        assert_eq!(d.ticks(100.0), 5);
        let mut median = DelayEstimate::new(4, 50.0);
        for ms in [10, 20, 50, 40] {
            median.record_ns(ms * 1_000_000);
        }
        assert_eq!(median.latency_ns(), 20_000_000);
        // 21 ms at 100 Hz is 2.1 ticks: 3.
        let mut one = DelayEstimate::new(1, 95.0);
        one.record_ns(21_000_000);
        assert_eq!(one.ticks(100.0), 3);
    }
}
