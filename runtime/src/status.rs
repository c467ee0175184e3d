//! The live status line: a thread that reads the tick's newest status snapshot at a
//! fixed rate, prints it on the terminal and hands it to an optional publisher.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::slot::SlotReader;
use crate::stats::StatusSnapshot;

/// Where a status snapshot goes besides the terminal (a zenoh publisher).
pub type StatusSink = Box<dyn FnMut(&StatusSnapshot) + Send>;

pub struct StatusThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusThread {
    /// Prints the line when stderr is a terminal and hands every snapshot to `sink`.
    pub fn spawn(
        mut status: SlotReader<StatusSnapshot>,
        hz: f64,
        mut sink: Option<StatusSink>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        // Launch files are validated; this guards other callers (NaN would panic).
        let hz = if hz.is_finite() {
            hz.clamp(0.1, 100.0)
        } else {
            10.0
        };
        let period = Duration::from_secs_f64(1.0 / hz);
        let tty = std::io::stderr().is_terminal();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("reflex-status".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(period);
                        let snapshot = *status.latest();
                        if snapshot.tick == 0 {
                            continue;
                        }
                        if tty {
                            eprint!("\r\x1b[2K{}", snapshot.line());
                        }
                        if let Some(sink) = &mut sink {
                            sink(&snapshot);
                        }
                    }
                    if tty {
                        eprintln!();
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
