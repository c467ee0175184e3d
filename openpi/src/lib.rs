//! openpi interoperability, both ways: `reflex serve` speaks openpi's websocket
//! policy-server protocol (so `openpi-client` and openpi's robot runtimes drive a
//! reflex policy unchanged), and `[policy] kind = "openpi"` is a client of any
//! openpi server (so an existing openpi deployment gets reflex's loop, safety
//! filter and recording).
//!
//! The wire format is openpi's: msgpack, numpy arrays as maps
//! `{__ndarray__, data, dtype, shape}`, the server's metadata sent on connect,
//! `server_timing` in every reply, errors as a text frame and close code 1011,
//! `GET /healthz`, an optional `Authorization: Api-Key` header. reflex adds one
//! request field, `noise` (the initial noise of a flow / diffusion policy), and
//! reports `choice` (V-GPS) and `noise` (DSRL's w) in replies when it has them.

pub mod client;
pub mod keys;
pub mod msgpack;
pub mod ndarray;
pub mod section;
pub mod server;
pub mod service;

pub use client::{OpenpiConfig, OpenpiKind};
pub use keys::ObservationKeys;
pub use section::{ServeConfig, ServeSection};

/// Registers `[serve]` and `[policy] kind = "openpi"`.
pub fn register(registry: &mut reflex_runtime::registry::Registry) {
    registry.section(ServeSection).policy(OpenpiKind);
}

/// The API key in the environment variable `var` names (`api_key_env` of
/// `[serve]` and of `[policy] kind = "openpi"`; `field` locates errors).
pub fn api_key_from_env(
    launch: &reflex_runtime::launch::Launch,
    field: &str,
    var: Option<&str>,
) -> Result<Option<String>, reflex_runtime::launch::LaunchError> {
    var.map(|var| {
        std::env::var(var).map_err(|_| {
            launch.error_at(
                field,
                format!("the environment variable `{var}` is not set"),
            )
        })
    })
    .transpose()
}
