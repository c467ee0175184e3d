//! openpi's websocket policy-server protocol, served from plain threads: on
//! connect the server sends its metadata (msgpack); then every binary message is
//! an observation and is answered with a msgpack map holding `actions` and
//! `server_timing` (`infer_ms`, and `prev_total_ms` from the second request on).
//! An error is sent as a text frame (openpi sends the traceback), after which the
//! connection is closed with code 1011. `GET /healthz` answers `200 OK`. With an
//! API key, the upgrade must carry `Authorization: Api-Key <key>`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::msgpack::Writer;

/// What a served policy answers.
pub trait Service: Send + Sync + 'static {
    /// The metadata map sent on connect (packed).
    fn metadata(&self) -> Vec<u8>;
    /// Answers one request of a connection: writes the entries of the reply map
    /// (key, value, ...) and returns how many. `session.requests` counts the
    /// connection's earlier requests.
    fn infer(
        &self,
        request: &[u8],
        session: &mut Session,
        reply: &mut Writer,
    ) -> Result<usize, String>;
}

/// One connection's state.
#[derive(Debug, Default)]
pub struct Session {
    pub requests: u64,
    /// The peer, for log lines.
    pub peer: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Required in `Authorization: Api-Key <key>` when set.
    pub api_key: Option<String>,
    /// Largest request accepted.
    pub max_message_bytes: usize,
    /// Time a client has to finish its HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_message_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

/// Accepts connections until the listener fails; one thread per connection.
pub fn serve(
    listener: TcpListener,
    service: Arc<dyn Service>,
    config: ServerConfig,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        }
        let (service, config, open) = (service.clone(), config.clone(), open.clone());
        std::thread::Builder::new()
            .name("reflex-serve-conn".into())
            .spawn(move || {
                let _slot = Slot(open);
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into());
                match connection(stream, &*service, &config, &peer) {
                    Ok(()) => tracing::info!("{peer}: disconnected"),
                    Err(e) => tracing::warn!("{peer}: {e}"),
                }
            })?;
    }
    Ok(())
}

/// The request line of an HTTP request that has fully arrived, read without
/// consuming it (the websocket handshake reads it again).
fn peek_request_line(stream: &TcpStream, timeout: Duration) -> std::io::Result<String> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.peek(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if n == buf.len() || started.elapsed() > timeout {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no HTTP request line",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn connection(
    mut stream: TcpStream,
    service: &dyn Service,
    config: &ServerConfig,
    peer: &str,
) -> Result<(), String> {
    stream
        .set_read_timeout(Some(config.handshake_timeout))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let line = peek_request_line(&stream, config.handshake_timeout).map_err(|e| e.to_string())?;
    if line.split_whitespace().nth(1) == Some("/healthz") {
        // Consume the request, answer, close (openpi's health check).
        let mut scratch = [0u8; 4096];
        let _ = stream.read(&mut scratch);
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n",
        );
        return Ok(());
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let check_key = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let Some(key) = &config.api_key else {
            return Ok(response);
        };
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Api-Key "));
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            Ok(response)
        } else {
            let mut refused = ErrorResponse::new(Some("missing or wrong Api-Key\n".into()));
            *refused.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
            Err(refused)
        }
    };
    let mut ws = tungstenite::accept_hdr_with_config(stream, check_key, Some(ws_config))
        .map_err(|e| format!("handshake failed: {e}"))?;
    // Between requests a client may think as long as it likes.
    ws.get_mut()
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    tracing::info!("{peer}: connected");
    ws.send(Message::binary(service.metadata()))
        .map_err(|e| e.to_string())?;
    let mut session = Session {
        requests: 0,
        peer: peer.to_string(),
    };
    let mut prev_total_ms: Option<f64> = None;
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let started = Instant::now();
        let payload = match message {
            Message::Binary(bytes) => bytes,
            Message::Text(_) => {
                return fail(
                    &mut ws,
                    "requests are msgpack in binary frames, not text".into(),
                );
            }
            Message::Close(_) => return Ok(()),
            // Pings are answered by the library.
            _ => continue,
        };
        // Entries first, the map header after: the count is known only then.
        let mut entries = Writer::new();
        let count = match service.infer(&payload, &mut session, &mut entries) {
            Ok(count) => count,
            Err(e) => return fail(&mut ws, e),
        };
        session.requests += 1;
        let infer_ms = started.elapsed().as_secs_f64() * 1e3;
        let reply = frame_reply(&entries, count, infer_ms, prev_total_ms);
        ws.send(Message::binary(reply)).map_err(|e| e.to_string())?;
        prev_total_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    }
}

/// A reply map: the service's `count` entries, then `server_timing` (`infer_ms`,
/// and the previous request's total time when there was one).
pub fn frame_reply(
    entries: &Writer,
    count: usize,
    infer_ms: f64,
    prev_total_ms: Option<f64>,
) -> Vec<u8> {
    let mut reply = Writer::new();
    reply.bytes.reserve(entries.bytes.len() + 64);
    reply.map(count + 1);
    reply.bytes.extend_from_slice(&entries.bytes);
    reply.str("server_timing");
    reply.map(1 + usize::from(prev_total_ms.is_some()));
    reply.str("infer_ms").float(infer_ms);
    if let Some(prev) = prev_total_ms {
        reply.str("prev_total_ms").float(prev);
    }
    reply.into_bytes()
}

/// openpi's error path: the error as a text frame, then close 1011.
fn fail(ws: &mut WebSocket<TcpStream>, error: String) -> Result<(), String> {
    let text = format!("reflex serve: {error}\n");
    let _ = ws.send(Message::text(text));
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Error,
        reason: "Internal server error. Traceback included in previous frame.".into(),
    }));
    // Let the close handshake finish.
    while ws.read().is_ok() {}
    Err(error)
}

/// Gives a connection's place back when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
