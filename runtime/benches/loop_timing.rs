//! Loop timing at 500 Hz and 1 kHz: reflex's `WallClock` (absolute deadlines,
//! sleep then spin) side by side with a naive `thread::sleep(period)` loop, in the
//! same run. Both do the same 50 µs of work per period. Reports period jitter
//! (|actual period - nominal|) p50 / p99 / max and the drift after the run, and
//! writes `target/loop_timing.md` and `target/loop_timing.svg` (jitter histograms).

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

struct Measured {
    jitter: Percentiles,
    /// Jitter samples, µs (for the histogram).
    samples: Vec<f64>,
    drift_ms: f64,
}

fn measure(wakes: &[Instant], period: Duration) -> Measured {
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
    }
}

fn reflex_loop(period: Duration, n: usize) -> Vec<Instant> {
    let mut clock = WallClock::new(period, Duration::from_micros(200));
    let mut wakes = Vec::with_capacity(n);
    for _ in 0..n {
        clock.next_tick();
        wakes.push(Instant::now());
        work();
    }
    wakes
}

fn naive_loop(period: Duration, n: usize) -> Vec<Instant> {
    let mut wakes = Vec::with_capacity(n);
    for _ in 0..n {
        wakes.push(Instant::now());
        work();
        std::thread::sleep(period);
    }
    wakes
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
        "| rate | loop | jitter p50 (us) | jitter p99 (us) | jitter max (us) | drift after run (ms) |\n|---|---|---|---|---|---|\n",
    );
    let mut results = Vec::new();
    for hz in [500.0, 1000.0] {
        let period = Duration::from_secs_f64(1.0 / hz);
        let n = (seconds * hz) as usize;
        for (name, wakes) in [
            ("reflex WallClock", reflex_loop(period, n)),
            ("naive sleep(period)", naive_loop(period, n)),
        ] {
            let m = measure(&wakes, period);
            let _ = writeln!(
                table,
                "| {hz} Hz | {name} | {:.1} | {:.1} | {:.1} | {:.2} |",
                m.jitter.p50_us, m.jitter.p99_us, m.jitter.max_us, m.drift_ms
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
