//! reflex-drivers: the hardware side of the loop, behind the runtime's `Driver` trait.
//!
//! - [`sim_arm`]: a simulated planar arm with servo dynamics, a top-down camera and
//!   an optional gripper, the stand-in for hardware in demos and tests; with a
//!   decoy target, microphones and a taxel pad ([`sim_senses`]) for a task where
//!   vision alone is ambiguous.
//! - [`audio`]: sound from a microphone (ALSA through cpal) or a WAV file, as raw
//!   windows or log-mel spectrograms ([`mel`], librosa's); files are stepped
//!   deterministically under the simulated clock.
//! - [`taxels`]: a tactile array on a serial port (a documented frame format with a
//!   CRC), as a tensor stream.
//!
//! The arm over zenoh is in reflex-zenoh.
//!
//! Each kind owns its launch-file table and registers itself in [`register`].

pub mod audio;
pub mod mel;
pub mod sim_arm;
pub mod sim_senses;
pub mod taxels;

use reflex_runtime::registry::Registry;

/// Registers every driver kind of this crate.
pub fn register(registry: &mut Registry) {
    registry.driver(sim_arm::SimArmKind);
    registry.driver(taxels::SerialTaxelsKind);
    registry.driver(audio::AudioKind);
}
