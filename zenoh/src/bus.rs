//! The zenoh bus: one session per run, threads that publish what the tick hands
//! them (commands, joint states, status), so the tick never waits on the network.
//!
//! Keys: `<prefix>/<robot>/joint_commands`, `<prefix>/<robot>/joint_states` (both in
//! the [`crate::wire`] format) and `<prefix>/<robot>/status` (JSON).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zenoh::Wait;

use reflex_runtime::control::{OperatorRequests, Request};
use reflex_runtime::mailbox::Mailbox;
use reflex_runtime::ratelimit::{WarnLimiter, excerpt, suppressed_note};
use reflex_runtime::slot::SlotReader;
use reflex_runtime::stats::StatusSnapshot;
use reflex_runtime::status::StatusThread;
use reflex_runtime::taps::Tap;
use reflex_runtime::types::{JointCommand, JointState};

use crate::wire;
use crate::{ZenohConfig, ZenohMode};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("zenoh config: {0}")]
    Config(String),
    #[error(
        "cannot open the zenoh session (is another process listening on {listen:?}?): {source}"
    )]
    Open {
        listen: Vec<String>,
        #[source]
        source: zenoh::Error,
    },
    #[error("zenoh: {0}")]
    Zenoh(#[from] zenoh::Error),
    #[error("cannot start bus thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Builds the zenoh config from the launch file (a config file first, if given).
pub fn zenoh_config(cfg: &ZenohConfig, base_dir: &Path) -> Result<zenoh::Config, BusError> {
    let mut config = match &cfg.config_file {
        Some(file) => zenoh::Config::from_file(base_dir.join(file))
            .map_err(|e| BusError::Config(e.to_string()))?,
        None => zenoh::Config::default(),
    };
    let mode = match cfg.mode {
        ZenohMode::Peer => "peer",
        ZenohMode::Client => "client",
        ZenohMode::Router => "router",
    };
    let settings = [
        ("mode", json(&mode)),
        ("listen/endpoints", json(&cfg.listen)),
        ("connect/endpoints", json(&cfg.connect)),
        ("scouting/multicast/enabled", json(&cfg.multicast_scouting)),
    ];
    for (key, value) in settings {
        config
            .insert_json5(key, &value)
            .map_err(|e| BusError::Config(format!("{key} = {value}: {e}")))?;
    }
    Ok(config)
}

/// Checks that `key` is a zenoh key expression that names keys exactly: valid for
/// zenoh (no empty chunk, no trailing `/`, canonical) and free of wildcards (`*`,
/// `**`, `$*`), so that a publisher cannot fan out over keys it does not own.
pub fn check_exact_key(key: &str) -> Result<(), String> {
    let parsed = zenoh::key_expr::keyexpr::new(key)
        .map_err(|e: zenoh::Error| format!("`{key}` is not a valid zenoh key expression: {e}"))?;
    if parsed.as_str().contains('*') {
        return Err(format!(
            "`{key}` contains a wildcard (`*`, `**` or `$*`); name the keys exactly"
        ));
    }
    Ok(())
}

/// Checks a `listen` / `connect` endpoint the way zenoh parses it
/// (`<protocol>/<address>[?<metadata>][#<config>]`), and for the IP transports that
/// the address is `host:port` with a port in 0..=65535 (without resolving the host).
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let parsed: zenoh::config::EndPoint = endpoint
        .parse()
        .map_err(|e: zenoh::Error| format!("`{endpoint}` is not a zenoh endpoint: {e}"))?;
    let protocol = parsed.protocol();
    let address = parsed.address();
    if protocol.as_str() == "tls" {
        // zenoh 1.10's TLS link reads and writes one rustls stream from two tasks
        // without a lock (eclipse-zenoh/zenoh#2557): under load the process crashes.
        return Err(format!(
            "`{endpoint}`: zenoh's `tls` link can crash the process (a data race in \
             zenoh-link-tls 1.10, eclipse-zenoh/zenoh#2557); use `quic/{address}`: \
             QUIC takes the same `transport.link.tls` certificates, mTLS and ACL common names"
        ));
    }
    if matches!(
        protocol.as_str(),
        "tcp" | "udp" | "tls" | "quic" | "ws" | "quic_datagram"
    ) {
        let (host, port) = address.as_str().rsplit_once(':').ok_or_else(|| {
            format!("`{endpoint}`: the address must be host:port, e.g. tcp/127.0.0.1:7447")
        })?;
        if host.is_empty() {
            return Err(format!("`{endpoint}`: the address has no host"));
        }
        if port.parse::<u16>().is_err() {
            return Err(format!(
                "`{endpoint}`: port `{port}` is not a number in 0..=65535"
            ));
        }
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

pub struct Bus {
    session: zenoh::Session,
    prefix: String,
    robot: String,
}

impl Bus {
    pub fn open(cfg: &ZenohConfig, base_dir: &Path, robot: &str) -> Result<Self, BusError> {
        let config = zenoh_config(cfg, base_dir)?;
        let session = zenoh::open(config)
            .wait()
            .map_err(|source| BusError::Open {
                listen: cfg.listen.clone(),
                source,
            })?;
        Ok(Self {
            session,
            prefix: cfg.key_prefix.clone(),
            robot: robot.to_string(),
        })
    }

    pub fn session(&self) -> zenoh::Session {
        self.session.clone()
    }

    /// `<prefix>/<robot>/<leaf>`.
    pub fn key(&self, leaf: &str) -> String {
        format!("{}/{}/{leaf}", self.prefix, self.robot)
    }

    /// Starts the thread that mirrors the tick's commands and joint states.
    pub fn spawn_mirror(&self, command_format: u16) -> Result<Tap, BusError> {
        let commands: Arc<Mailbox<JointCommand>> = Mailbox::new(1024);
        let states: Arc<Mailbox<JointState>> = Mailbox::new(1024);
        let command_pub = self
            .session
            .declare_publisher(self.key("joint_commands"))
            // Every command reaches a connected subscriber; only this thread waits.
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .express(true)
            .wait()?;
        let state_pub = self
            .session
            .declare_publisher(self.key("joint_states"))
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait()?;
        // Declared on the first gripper command, so robots without one add no key.
        let mut gripper_pub = None;
        let gripper_key = self.key("gripper_command");
        let session = self.session.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (commands, states, stop) = (commands.clone(), states.clone(), stop.clone());
            std::thread::Builder::new()
                .name("reflex-bus".into())
                .spawn(move || {
                    let mut buf = Vec::with_capacity(1024);
                    // A failing session fails every put: one line per few seconds.
                    let failures = WarnLimiter::for_network();
                    loop {
                        let stopping = stop.load(Ordering::Acquire);
                        while let Some(state) = states.try_recv() {
                            wire::encode_state(&state, wire::unix_ns(), &mut buf);
                            if let Err(e) = state_pub.put(buf.clone()).wait()
                                && let Some(left_out) = failures.hit()
                            {
                                tracing::warn!(
                                    "publishing joint state failed: {e}{}",
                                    suppressed_note(left_out)
                                );
                            }
                        }
                        while let Some(cmd) = commands.try_recv() {
                            wire::encode_command(&cmd, wire::unix_ns(), command_format, &mut buf);
                            let mut sent = command_pub.put(buf.clone()).wait();
                            if wire::encode_gripper_command(&cmd, wire::unix_ns(), &mut buf)
                                .is_some()
                            {
                                if gripper_pub.is_none() {
                                    gripper_pub = session
                                        .declare_publisher(gripper_key.clone())
                                        .congestion_control(zenoh::qos::CongestionControl::Block)
                                        .express(true)
                                        .wait()
                                        .ok();
                                }
                                if let Some(publisher) = &gripper_pub {
                                    sent = sent.and(publisher.put(buf.clone()).wait());
                                }
                            }
                            if let Err(e) = sent
                                && let Some(left_out) = failures.hit()
                            {
                                tracing::warn!(
                                    "publishing joint command failed: {e}{}",
                                    suppressed_note(left_out)
                                );
                            }
                        }
                        if stopping {
                            break;
                        }
                        // Woken by the tick's send; the timeout only bounds shutdown.
                        commands.wait(Duration::from_millis(20));
                    }
                })?
        };
        Ok(Tap::new(commands, states).on_finish(move || {
            // Publishes what is queued, then stops.
            stop.store(true, Ordering::Release);
            thread.thread().unpark();
            let _ = thread.join();
        }))
    }

    /// Starts the thread that publishes the status as JSON at `hz`, and prints it as
    /// a live line when stderr is a terminal.
    pub fn spawn_status(
        &self,
        status: SlotReader<StatusSnapshot>,
        hz: f64,
    ) -> Result<StatusThread, BusError> {
        let publisher = self.session.declare_publisher(self.key("status")).wait()?;
        let publish = move |snapshot: &StatusSnapshot| {
            if let Ok(json) = serde_json::to_vec(snapshot)
                && let Err(e) = publisher.put(json).wait()
            {
                tracing::warn!("publishing status failed: {e}");
            }
        };
        Ok(StatusThread::spawn(status, hz, Some(Box::new(publish)))?)
    }

    /// Listens on `<prefix>/<robot>/control` (plain text). `estop` is always
    /// obeyed (fail safe); `rearm`, `resume`, `heartbeat` and `steer <vgps|dsrl>
    /// <on|off>` only when `allow_rearm` (the launch file turned it on together
    /// with access control).
    /// Any put on `<prefix>/<robot>/control/estop` is a stop too: zenoh access
    /// control sees keys, not payloads, so this key can stay open to everyone
    /// while `control` is limited to the operator.
    pub fn listen_for_operator(
        &self,
        requests: OperatorRequests,
        allow_rearm: bool,
    ) -> Result<OperatorListener, BusError> {
        let stop_subscriber = {
            let requests = requests.clone();
            self.session
                .declare_subscriber(self.key("control/estop"))
                .callback(move |_| requests.raise(Request::Estop))
                .wait()?
        };
        let key = self.key("control");
        let ignored = WarnLimiter::for_network();
        let subscriber = {
            let requests = requests.clone();
            self.session
                .declare_subscriber(key.clone())
                .callback(move |sample| {
                    let payload = sample.payload().to_bytes();
                    let request = match payload.as_ref() {
                        b"estop" => Some(Request::Estop),
                        b"rearm" if allow_rearm => Some(Request::Rearm),
                        b"resume" if allow_rearm => Some(Request::Resume),
                        b"heartbeat" if allow_rearm => {
                            requests.heartbeat();
                            None
                        }
                        // Steering switches under the same authority as re-arm.
                        other if allow_rearm && steering_request(other).is_some() => {
                            if let Some((which, on)) = steering_request(other) {
                                tracing::info!(
                                    "steering: {} {} (zenoh)",
                                    which.name(),
                                    if on { "on" } else { "off" }
                                );
                                requests.steering.set(which, on);
                            }
                            None
                        }
                        other => {
                            if let Some(left_out) = ignored.hit() {
                                let why = if matches!(other, b"rearm" | b"resume" | b"heartbeat")
                                    || steering_request(other).is_some()
                                {
                                    "re-arm and steering over zenoh are off \
                                     (safety.operator.zenoh_rearm); use `reflex rearm` or \
                                     `reflex steer` on the robot's computer"
                                } else {
                                    "expected `estop`"
                                };
                                tracing::warn!(
                                    "{key}: ignored {}: {why}{}",
                                    excerpt(other),
                                    suppressed_note(left_out)
                                );
                            }
                            None
                        }
                    };
                    if let Some(request) = request {
                        requests.raise(request);
                    }
                })
                .wait()?
        };
        Ok(OperatorListener {
            _subscribers: [subscriber, stop_subscriber],
        })
    }

    pub fn close(self) {
        if let Err(e) = self.session.close().wait() {
            tracing::warn!("closing zenoh session: {e}");
        }
    }
}

/// `steer <vgps|dsrl> <on|off>` as a zenoh payload.
fn steering_request(payload: &[u8]) -> Option<(reflex_runtime::stage::Steering, bool)> {
    std::str::from_utf8(payload)
        .ok()
        .and_then(reflex_runtime::stage::Steering::parse_request)
}

/// Keeps the operator subscription alive.
pub struct OperatorListener {
    _subscribers: [zenoh::pubsub::Subscriber<()>; 2],
}
