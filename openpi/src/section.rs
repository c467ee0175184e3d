//! `[serve]`: how `reflex serve` offers the launch file's policy.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use reflex_runtime::launch::LaunchError;
use reflex_runtime::registry::{KindTable, SectionKind, schema_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::keys::ObservationKeys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// openpi's websocket policy server (msgpack-numpy), so `openpi-client`
    /// and openpi's runtime drive reflex unchanged.
    #[default]
    Openpi,
    /// reflex's own protocol over zenoh (a queryable on `key`, in the session
    /// `[zenoh]` describes: its TLS and access control apply), for robots whose
    /// policy is `kind = "remote"`; carries the tick, the inference delay and
    /// the committed actions of real-time chunking.
    Zenoh,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default)]
    pub protocol: Protocol,
    /// The zenoh key expression requests arrive on (`protocol = "zenoh"`; the
    /// server's metadata on `<key>/metadata`).
    #[serde(default = "default_key")]
    pub key: String,
    /// Address and port to listen on (openpi's default port is 8000). Listen
    /// beyond loopback only on a trusted network or with `api_key_env`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Environment variable holding the API key clients must send
    /// (`Authorization: Api-Key <key>`, openpi-client's `api_key`); unset: none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Most connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds between status lines on stderr (requests, server time p50 / p99,
    /// errors), printed when something was served; 0: none.
    #[serde(default = "default_status_interval_s")]
    pub status_interval_s: f64,
    /// Where the observation sits in a request.
    #[serde(default)]
    pub keys: ObservationKeys,
}

fn default_key() -> String {
    "reflex/policy".into()
}

fn default_listen() -> String {
    "127.0.0.1:8000".into()
}

fn default_status_interval_s() -> f64 {
    10.0
}

fn default_max_connections() -> usize {
    16
}

impl ServeConfig {
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "`{}` is not an address and port, e.g. 127.0.0.1:8000",
                self.listen
            )
        })
    }
}

/// Registers `[serve]`.
pub struct ServeSection;

impl SectionKind for ServeSection {
    fn section(&self) -> &'static str {
        "serve"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ServeConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn Any + Send + Sync>, LaunchError> {
        let config: ServeConfig = table.parse()?;
        config
            .listen_addr()
            .map_err(|e| table.error_at("listen", e))?;
        if let Some(var) = &config.api_key_env
            && var.is_empty()
        {
            return Err(table.error_at("api_key_env", "names no environment variable"));
        }
        let interval = config.status_interval_s;
        if !(interval == 0.0 || (0.1..=3600.0).contains(&interval)) {
            return Err(table.error_at("status_interval_s", "must be 0 (off) or in 0.1..=3600 s"));
        }
        if !(1..=1024).contains(&config.max_connections) {
            return Err(table.error_at("max_connections", "must be in 1..=1024"));
        }
        // The keys are checked against the cameras by `reflex serve` (sections
        // are checked before the drivers declare their streams).
        Ok(Arc::new(config))
    }
}
