//! `cargo +nightly fuzz run fast_decode`: arbitrary token ids through the FAST
//! decoder of the committed fixture tokenizer must give a complete finite chunk or
//! a rejection, never a panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reflex_policies::fast::{DecodeMode, FastCodec};

fn codec() -> &'static FastCodec {
    static CODEC: OnceLock<FastCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        FastCodec::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/models/fast")))
            .expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let ids: Vec<u32> = rest.chunks_exact(2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))).collect();
    let mode = if mode & 1 == 1 { DecodeMode::PadMissing } else { DecodeMode::Strict };
    if let Ok(actions) = codec().decode(&ids, mode) {
        let expected = codec().config.time_horizon * codec().config.action_dim;
        assert_eq!(actions.len(), expected);
        assert!(actions.iter().all(|a| a.is_finite()));
    }
});
