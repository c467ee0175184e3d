//! Loop timing at 500 Hz and 1 kHz, in the same run and with the same 50 µs of work
//! per period: reflex's `WallClock` (absolute deadlines, sleep until 200 µs before
//! and spin the rest); the fair baseline, the same absolute deadlines slept to
//! without the spin (what a careful Python or C++ loop does); and a naive
//! `thread::sleep(period)` after the work, which drifts. Reports period jitter
//! (|actual period - nominal|) p50 / p99 / max, the drift after the run and the
//! CPU the loop burns besides its work (the spin's cost: thread CPU time minus the
//! work, as a share of one core), and writes `target/loop_timing.md` and
//! `target/loop_timing.svg` (jitter histograms).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use reflex_runtime::clock::{Clock, WallClock};
use reflex_runtime::stats::{Distribution, Percentiles};

const SECONDS: f64 = 3.0;
const WORK: Duration = Duration::from_micros(50);

fn work() {
    let start = Instant::now();
    while start.elapsed() < WORK {
        std::hint::spin_loop();
    }
}

/// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A loop's wake-up times and the CPU it used besides the work.
struct Run {
    wakes: Vec<Instant>,
    /// CPU time beyond the work, as a share of one core over the run.
    overhead_cpu: f64,
}

fn timed(n: usize, mut body: impl FnMut(&mut Vec<Instant>)) -> Run {
    let mut wakes = Vec::with_capacity(n);
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    body(&mut wakes);
    let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
    let work = WORK * n as u32;
    Run {
        wakes,
        overhead_cpu: cpu.saturating_sub(work).as_secs_f64() / wall.as_secs_f64(),
    }
}

struct Measured {
    jitter: Percentiles,
    overhead_cpu: f64,
    /// Jitter samples, µs (for the histogram).
    samples: Vec<f64>,
    drift_ms: f64,
}

fn measure(run: &Run, period: Duration) -> Measured {
    let wakes = &run.wakes;
    let mut dist = Distribution::default();
    let mut samples = Vec::with_capacity(wakes.len());
    for pair in wakes.windows(2) {
        let actual = pair[1] - pair[0];
        let jitter = actual.as_nanos().abs_diff(period.as_nanos()) as u64;
        dist.record_ns(jitter);
        samples.push(jitter as f64 / 1e3);
    }
    let expected = period.as_secs_f64() * (wakes.len() - 1) as f64;
    let actual = (wakes[wakes.len() - 1] - wakes[0]).as_secs_f64();
    Measured {
        jitter: dist.percentiles(),
        samples,
        drift_ms: (actual - expected) * 1e3,
        overhead_cpu: run.overhead_cpu,
    }
}

/// Absolute deadlines, as `WallClock` keeps them; `spin` before each one is
/// busy-waited (zero: slept all the way, the fair baseline).
fn deadline_loop(period: Duration, n: usize, spin: Duration) -> Run {
    let mut clock = WallClock::new(period, spin);
    timed(n, |wakes| {
        for _ in 0..n {
            clock.next_tick();
            wakes.push(Instant::now());
            work();
        }
    })
}

fn naive_loop(period: Duration, n: usize) -> Run {
    timed(n, |wakes| {
        for _ in 0..n {
            wakes.push(Instant::now());
            work();
            std::thread::sleep(period);
        }
    })
}

fn svg(results: &[(String, Measured)]) -> String {
    // One histogram row per loop, log-spaced bins from 0.1 µs to 10 ms.
    let bins = 40;
    let (w, row_h) = (800.0, 120.0);
    let bin_of = |us: f64| {
        ((us.max(0.1).log10() + 1.0) / 5.0 * bins as f64).clamp(0.0, bins as f64 - 1.0) as usize
    };
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' font-family='sans-serif' font-size='12'>",
        row_h * results.len() as f64 + 30.0
    );
    for (row, (name, m)) in results.iter().enumerate() {
        let mut counts = vec![0usize; bins];
        for s in &m.samples {
            counts[bin_of(*s)] += 1;
        }
        let max = *counts.iter().max().unwrap_or(&1) as f64;
        let y0 = row as f64 * row_h + 20.0;
        let _ = write!(
            out,
            "<text x='5' y='{}'>{name}: p50 {:.1} us, p99 {:.1} us</text>",
            y0, m.jitter.p50_us, m.jitter.p99_us
        );
        for (i, c) in counts.iter().enumerate() {
            let h = (*c as f64 / max) * (row_h - 35.0);
            let x = 5.0 + i as f64 * (w - 10.0) / bins as f64;
            let _ = write!(
                out,
                "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{h:.1}' fill='steelblue'/>",
                y0 + row_h - 20.0 - h,
                (w - 10.0) / bins as f64 - 1.0
            );
        }
    }
    let _ = write!(
        out,
        "<text x='5' y='{}'>period jitter, log scale: 0.1 us .. 10 ms</text></svg>",
        row_h * results.len() as f64 + 20.0
    );
    out
}

fn main() {
    // `cargo test --benches` runs benches in test mode: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let seconds = if quick { 0.2 } else { SECONDS };
    let mut table = String::from(
        "| rate | loop | jitter p50 (us) | jitter p99 (us) | jitter max (us) | drift after run (ms) | CPU besides the work |\n|---|---|---|---|---|---|---|\n",
    );
    let mut results = Vec::new();
    for hz in [500.0, 1000.0] {
        let period = Duration::from_secs_f64(1.0 / hz);
        let n = (seconds * hz) as usize;
        for (name, run) in [
            (
                "reflex WallClock (sleep + 200 us spin)",
                deadline_loop(period, n, Duration::from_micros(200)),
            ),
            (
                "absolute deadlines, sleep only",
                deadline_loop(period, n, Duration::ZERO),
            ),
            ("naive sleep(period)", naive_loop(period, n)),
        ] {
            let m = measure(&run, period);
            let _ = writeln!(
                table,
                "| {hz} Hz | {name} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1}% |",
                m.jitter.p50_us,
                m.jitter.p99_us,
                m.jitter.max_us,
                m.drift_ms,
                m.overhead_cpu * 100.0
            );
            results.push((format!("{hz} Hz {name}"), m));
        }
    }
    println!("{table}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::write(target.join("loop_timing.md"), &table);
    let _ = std::fs::write(target.join("loop_timing.svg"), svg(&results));
    println!("wrote target/loop_timing.md and target/loop_timing.svg");
}
