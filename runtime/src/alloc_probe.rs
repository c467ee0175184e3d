//! Allocations the tick makes, measured in a real run: a binary built with a
//! counting global allocator (the `reflex` binary's `count-allocations` feature)
//! registers how to read its count for the calling thread, and the loop then adds
//! up what each tick allocated on its own thread after a warm-up (the summary's
//! `tick_allocations`). Without a registered probe nothing is counted.

use std::sync::OnceLock;

static PROBE: OnceLock<fn() -> u64> = OnceLock::new();

/// Registers the allocator's count of allocations made by the calling thread.
pub fn register(allocations_on_this_thread: fn() -> u64) {
    let _ = PROBE.set(allocations_on_this_thread);
}

/// Allocations the calling thread has made, when a probe is registered.
pub fn allocations() -> Option<u64> {
    PROBE.get().map(|count| count())
}

/// What the ticks after warm-up allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TickAllocations {
    pub ticks: u64,
    pub allocations: u64,
}
