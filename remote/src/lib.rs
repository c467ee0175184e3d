//! Remote inference over zenoh: `reflex serve` with `[serve] protocol = "zenoh"`
//! answers inference requests on a queryable (the launch file's policy and chunk
//! stages, on the machine with the GPU), and `[policy] kind = "remote"` sends the
//! robot's observations there and takes the chunks back.
//!
//! A request is a msgpack map (numpy arrays as openpi's `{__ndarray__, data,
//! dtype, shape}`): `state` (float64, the joints by launch-file order, then the
//! gripper), `images/<camera>` (uint8 `[H, W, 3]`, or a JPEG as msgpack `bin`),
//! `tensors/<stream>`, `prompt`, and for real-time chunking `tick`,
//! `delay_ticks` and `committed` (`[rows, joints (+ gripper)]`). The reply holds
//! `actions` (`[H, D]` float32), `tick`, `model_version` (the model file's
//! SHA-256), `policy_timing`, `server_timing`, and `choice` / `noise` when
//! steering chose them. An error is a zenoh error reply with the text.

pub mod client;
pub mod jpeg;
pub mod server;

pub use client::{RemoteConfig, RemoteKind};

/// Registers `[policy] kind = "remote"`.
pub fn register(registry: &mut reflex_runtime::registry::Registry) {
    registry.policy(RemoteKind);
}

/// Where the server's metadata is answered, beside its request key.
pub fn metadata_key(key: &str) -> String {
    format!("{key}/metadata")
}
