//! The two clocks of the control loop.
//!
//! [`WallClock`] wakes at absolute deadlines `start + k * period` so that error never
//! accumulates; it sleeps until shortly before a deadline and spins the rest, and
//! when a tick overruns it skips whole missed periods (counting them) rather than
//! firing a burst of late ticks. `start` is the first call to `next_tick`, not the
//! clock's creation, so start-up (model load, waiting for the robot) is not counted
//! as skipped periods. [`SimClock`] advances instantly: tick k is at
//! `k * period`, which makes runs reproducible.

use std::time::{Duration, Instant};

use crate::types::monotonic_ns;

/// When a tick starts and how late it woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickTime {
    /// Index of the period this tick belongs to (skipped periods are skipped here too).
    pub tick: u64,
    /// The tick's time on the run's clock, ns (its deadline).
    pub now_ns: u64,
    /// How late the loop woke past its deadline, ns (0 for the simulated clock).
    pub lateness_ns: u64,
    /// Periods skipped right before this tick because the previous one overran.
    pub skipped: u64,
}

pub trait Clock: Send {
    /// Blocks until the next tick is due and returns its timing.
    fn next_tick(&mut self) -> TickTime;
    fn period_ns(&self) -> u64;
    /// True for the simulated clock: drivers are stepped in lockstep and inference
    /// latency is a fixed number of ticks.
    fn is_simulated(&self) -> bool;
}

pub struct WallClock {
    period: Duration,
    spin: Duration,
    /// Set by the first tick: the instant and its monotonic time in ns.
    start: Option<(Instant, u64)>,
    next: u64,
}

impl WallClock {
    pub fn new(period: Duration, spin: Duration) -> Self {
        Self {
            // A zero period would divide by zero below.
            period: period.max(Duration::from_nanos(1)),
            spin,
            start: None,
            next: 0,
        }
    }

    /// Offset of period `k` from the start (u64 nanoseconds: no wrap for centuries,
    /// where `period * k as u32` wrapped after 2^32 ticks).
    fn offset(&self, k: u64) -> Duration {
        Duration::from_nanos((self.period.as_nanos() as u64).saturating_mul(k))
    }
}

impl Clock for WallClock {
    fn next_tick(&mut self) -> TickTime {
        let (start, start_ns) = *self
            .start
            .get_or_insert_with(|| (Instant::now(), monotonic_ns()));
        let mut deadline = start + self.offset(self.next);
        let mut skipped = 0;
        let now = Instant::now();
        if now > deadline + self.period {
            // Overran by at least one whole period: resume on the period we are in.
            let behind = (now - deadline).as_nanos() / self.period.as_nanos();
            skipped = behind as u64;
            self.next += skipped;
            deadline = start + self.offset(self.next);
        }
        sleep_until(deadline, self.spin);
        let woke = Instant::now();
        let tick = self.next;
        self.next += 1;
        TickTime {
            tick,
            now_ns: start_ns + (deadline - start).as_nanos() as u64,
            lateness_ns: woke.saturating_duration_since(deadline).as_nanos() as u64,
            skipped,
        }
    }

    fn period_ns(&self) -> u64 {
        self.period.as_nanos() as u64
    }

    fn is_simulated(&self) -> bool {
        false
    }
}

/// Sleeps until `spin` before `deadline`, then busy-waits to it: the OS sleep wakes
/// late by tens of µs, the spin absorbs that.
pub fn sleep_until(deadline: Instant, spin: Duration) {
    let now = Instant::now();
    if deadline > now + spin {
        std::thread::sleep(deadline - now - spin);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

pub struct SimClock {
    period_ns: u64,
    next: u64,
}

impl SimClock {
    pub fn new(period: Duration) -> Self {
        Self {
            period_ns: period.as_nanos() as u64,
            next: 0,
        }
    }
}

impl Clock for SimClock {
    fn next_tick(&mut self) -> TickTime {
        let tick = self.next;
        self.next += 1;
        TickTime {
            tick,
            now_ns: tick * self.period_ns,
            lateness_ns: 0,
            skipped: 0,
        }
    }

    fn period_ns(&self) -> u64 {
        self.period_ns
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_clock_advances_by_whole_periods() {
        let mut clock = SimClock::new(Duration::from_millis(10));
        let ticks: Vec<_> = (0..3).map(|_| clock.next_tick()).collect();
        assert_eq!(
            ticks.iter().map(|t| t.now_ns).collect::<Vec<_>>(),
            vec![0, 10_000_000, 20_000_000]
        );
        assert!(clock.is_simulated());
    }

    #[test]
    fn time_before_the_first_tick_is_not_skipped_periods() {
        let mut clock = WallClock::new(Duration::from_millis(1), Duration::ZERO);
        // Start-up: model load, waiting for the first joint state.
        std::thread::sleep(Duration::from_millis(30));
        let first = clock.next_tick();
        assert_eq!((first.tick, first.skipped), (0, 0));
    }

    #[test]
    fn deadlines_past_two_to_the_32_ticks_do_not_wrap() {
        let clock = WallClock::new(Duration::from_micros(100), Duration::ZERO);
        let k = (1u64 << 32) + 5;
        assert_eq!(clock.offset(k).as_nanos(), u128::from(k) * 100_000);
    }

    #[test]
    fn wall_clock_keeps_absolute_deadlines_and_skips_missed_periods() {
        let mut clock = WallClock::new(Duration::from_millis(5), Duration::from_micros(200));
        let first = clock.next_tick();
        assert_eq!((first.tick, first.skipped), (0, 0));
        // Overrun by a bit more than three periods: the next tick skips ahead.
        std::thread::sleep(Duration::from_millis(17));
        let late = clock.next_tick();
        assert!(late.skipped >= 2, "skipped {}", late.skipped);
        assert_eq!(late.tick, 1 + late.skipped);
        assert_eq!(
            late.now_ns - first.now_ns,
            late.tick * 5_000_000,
            "deadlines stay on the grid"
        );
        let next = clock.next_tick();
        assert_eq!((next.tick, next.skipped), (late.tick + 1, 0));
    }
}
