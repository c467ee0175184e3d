//! `[policy] kind = "openpi"`: a client of any openpi policy server (openpi's
//! `serve_policy.py`, or `reflex serve`), so an existing openpi deployment runs
//! inside reflex's loop, safety filter and recording. Each inference sends the
//! observation and waits for the reply on the inference thread (never the tick);
//! a server that is slow, gone or answers nonsense fails that inference (the arm
//! holds its plan, then its position, as for any late policy) and the next
//! inference connects again.

use std::any::Any;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex_policies::config::{ImageLayout, ImagePreprocess, PixelRange, ResizeFilter, ResizeMode};
use reflex_policies::preprocess::ResizePlan;
use reflex_runtime::launch::{Launch, LaunchError, MAX_HORIZON};
use reflex_runtime::policy::{LoadedPolicy, Policy, PolicyError};
use reflex_runtime::registry::{KindTable, LoadError, PolicyKind, PolicySpec, schema_of};
use reflex_runtime::types::{ActionChunk, Image, Observation};
use schemars::JsonSchema;
use serde::Deserialize;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::keys::{Layout, ObservationKeys, Request};
use crate::msgpack::{self, Value, Writer};
use crate::ndarray::NdArray;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenpiConfig {
    /// The policy server, `ws://host:port` (openpi serves on port 8000).
    pub url: String,
    /// Actions per chunk this robot executes: the first `horizon` rows of the
    /// server's `actions` (which must have at least that many).
    pub horizon: usize,
    /// Longest wait for connecting and for one reply, ms; a slower reply fails
    /// the inference. openpi servers compile on their first request: start
    /// them (and send one request) before the robot, or raise this.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: f64,
    /// Environment variable with the API key (`Authorization: Api-Key <key>`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Resize every image to `[height, width]` before sending, as openpi's
    /// clients do (`image_tools.resize_with_pad`: Pillow bilinear, aspect kept,
    /// black padding); e.g. `[224, 224]`. Unset: images go at camera size.
    #[serde(default)]
    pub resize_with_pad: Option<[usize; 2]>,
    /// Where each part of the observation goes in the request.
    #[serde(default)]
    pub keys: ObservationKeys,
}

fn default_timeout_ms() -> f64 {
    2000.0
}

pub struct OpenpiKind;

#[derive(Debug)]
pub struct OpenpiSpec {
    config: OpenpiConfig,
    host: String,
    port: u16,
}

/// The host and port of a `ws://` URL.
fn endpoint(url: &str) -> Result<(String, u16), String> {
    if url.starts_with("wss://") {
        return Err(
            "`wss://` is not supported: run the server on a trusted network, behind \
                    an SSH tunnel or a TLS-terminating proxy on the robot"
                .into(),
        );
    }
    let uri: tungstenite::http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL like ws://gpu-box:8000"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(format!("`{url}` must start with ws://"));
    }
    let host = uri.host().ok_or_else(|| format!("`{url}` names no host"))?;
    Ok((host.to_string(), uri.port_u16().unwrap_or(80)))
}

impl PolicyKind for OpenpiKind {
    fn kind(&self) -> &'static str {
        "openpi"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<OpenpiConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn PolicySpec>, LaunchError> {
        let config: OpenpiConfig = table.parse()?;
        let (host, port) = endpoint(&config.url).map_err(|e| table.error_at("url", e))?;
        if !(1..=MAX_HORIZON).contains(&config.horizon) {
            return Err(table.error_at("horizon", format!("must be in 1..={MAX_HORIZON}")));
        }
        if !(config.timeout_ms.is_finite() && config.timeout_ms > 0.0 && config.timeout_ms <= 600e3)
        {
            return Err(table.error_at("timeout_ms", "must be in (0, 600000] ms"));
        }
        if let Some([h, w]) = config.resize_with_pad
            && !((1..=4096).contains(&h) && (1..=4096).contains(&w))
        {
            return Err(table.error_at("resize_with_pad", "must be [height, width] in 1..=4096"));
        }
        config.keys.check(table.launch(), &table.field("keys"))?;
        Ok(Arc::new(OpenpiSpec { config, host, port }))
    }
}

impl PolicySpec for OpenpiSpec {
    fn kind(&self) -> &'static str {
        "openpi"
    }

    fn horizon(&self) -> usize {
        self.config.horizon
    }

    fn model(&self) -> PathBuf {
        PathBuf::from(&self.config.url)
    }

    fn load(&self, launch: &Launch) -> Result<LoadedPolicy, LoadError> {
        let api_key = crate::api_key_from_env(
            launch,
            "policy.api_key_env",
            self.config.api_key_env.as_deref(),
        )?;
        let started = Instant::now();
        let mut policy = OpenpiPolicy {
            url: self.config.url.clone(),
            host: self.host.clone(),
            port: self.port,
            horizon: self.config.horizon,
            width: launch.action_width(),
            timeout: Duration::from_secs_f64(self.config.timeout_ms / 1e3),
            api_key,
            keys: self.config.keys.clone(),
            layout: Layout::of(launch),
            resize: self.config.resize_with_pad.map(|[h, w]| ImagePreprocess {
                resize: [h, w],
                layout: ImageLayout::Nhwc,
                range: PixelRange::Raw,
                mode: ResizeMode::Pad,
                channels: Default::default(),
                filter: ResizeFilter::PilBilinear,
            }),
            plans: Vec::new(),
            resized: Vec::new(),
            prompt: None,
            socket: None,
            metadata: None,
            request: Writer::new(),
            last_server_ms: None,
            next_connect: None,
        };
        // The server must be there at start: a wrong URL is an error now, not a
        // robot that holds still.
        policy
            .connect()
            .map_err(|e| launch.error_at("policy.url", e.to_string()))?;
        Ok(LoadedPolicy {
            policy: Box::new(policy),
            model_path: self.model(),
            library_path: PathBuf::from("openpi protocol"),
            warm_up_ms: started.elapsed().as_secs_f64() * 1e3,
            provider: "remote",
        })
    }

    fn as_any(&self) -> &dyn Any {
        &self.config
    }
}

pub struct OpenpiPolicy {
    url: String,
    host: String,
    port: u16,
    horizon: usize,
    /// Columns the robot takes: its joints, then the gripper.
    width: usize,
    timeout: Duration,
    api_key: Option<String>,
    keys: ObservationKeys,
    layout: Layout,
    resize: Option<ImagePreprocess>,
    /// Per camera: the resize plan for the last input size.
    plans: Vec<Option<ResizePlan>>,
    resized: Vec<Option<Image>>,
    prompt: Option<String>,
    socket: Option<WebSocket<TcpStream>>,
    /// The server's metadata (msgpack), from the last connect.
    pub metadata: Option<Vec<u8>>,
    request: Writer,
    /// `server_timing.infer_ms` of the last reply.
    pub last_server_ms: Option<f64>,
    /// No connect before this (a server that refused is retried a few times a
    /// second, not at every tick's request).
    next_connect: Option<Instant>,
}

/// Wait between connection attempts to a server that is not there.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl OpenpiPolicy {
    fn connect(&mut self) -> Result<(), Failure> {
        self.socket = None;
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.url))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            format!(
                "cannot reach the openpi server at {}: {}",
                self.url,
                last.map_or("no address".to_string(), |e| e.to_string())
            )
        })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut request = self.url.as_str().into_client_request()?;
        if let Some(key) = &self.api_key {
            request
                .headers_mut()
                .insert("Authorization", format!("Api-Key {key}").parse()?);
        }
        let config = WebSocketConfig::default().max_message_size(Some(256 << 20));
        let (mut ws, _) = tungstenite::client::client_with_config(request, stream, Some(config))
            .map_err(|e| format!("{}: websocket handshake failed: {e}", self.url))?;
        match ws.read()? {
            Message::Binary(bytes) => {
                msgpack::decode(&bytes)
                    .map_err(|e| format!("{}: the metadata is not msgpack: {e}", self.url))?;
                self.metadata = Some(bytes.to_vec());
            }
            other => {
                return Err(format!("{}: expected the metadata, got {other:?}", self.url).into());
            }
        }
        self.socket = Some(ws);
        Ok(())
    }

    /// Images at the size the server wants (`resize_with_pad`), into `resized`.
    fn resize_images(&mut self, obs: &Observation) {
        let Some(pre) = &self.resize else {
            return;
        };
        self.plans.resize_with(obs.images.len(), || None);
        self.resized.resize_with(obs.images.len(), || None);
        let [h, w] = pre.resize;
        for (i, image) in obs.images.iter().enumerate() {
            if image.width == 0 || image.height == 0 {
                self.resized[i] = None;
                continue;
            }
            let plan = match &mut self.plans[i] {
                Some(plan) if plan.input() == (image.width, image.height) => plan,
                slot => slot.insert(ResizePlan::new(image.width, image.height, pre)),
            };
            let out = self.resized[i].get_or_insert_with(|| Image::black(w, h));
            out.seq = image.seq;
            out.stamp_ns = image.stamp_ns;
            plan.apply(image, pre, &mut out.rgb, |v| {
                v.round().clamp(0.0, 255.0) as u8
            });
        }
    }

    fn exchange(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), Failure> {
        if self.socket.is_none() {
            // On the inference thread: waiting here holds no tick.
            if let Some(at) = self.next_connect {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            self.next_connect = Some(Instant::now() + RECONNECT_INTERVAL);
            self.connect()?;
        }
        self.resize_images(obs);
        self.request.bytes.clear();
        self.keys.write_request(
            &mut self.request,
            Request {
                obs,
                layout: &self.layout,
                prompt: self.prompt.as_deref(),
                images: &self.resized,
            },
            0,
        );
        let ws = self.socket.as_mut().ok_or("not connected")?;
        // The message takes the buffer (no copy of the images); the next request
        // gets a fresh one of the same size.
        let size = self.request.bytes.len();
        ws.send(Message::binary(std::mem::replace(
            &mut self.request.bytes,
            Vec::with_capacity(size),
        )))?;
        let reply = loop {
            match ws.read()? {
                Message::Binary(bytes) => break bytes,
                Message::Text(text) => {
                    return Err(format!("the server failed:\n{}", text.as_str().trim_end()).into());
                }
                Message::Close(frame) => {
                    return Err(format!("the server closed the connection ({frame:?})").into());
                }
                _ => continue,
            }
        };
        let value =
            msgpack::decode(&reply).map_err(|e| format!("the reply is not msgpack: {e}"))?;
        self.last_server_ms = value
            .get("server_timing")
            .and_then(|t| t.get("infer_ms"))
            .and_then(Value::as_f64);
        read_actions(&value, self.horizon, self.width, &mut out.actions)?;
        Ok(())
    }
}

/// The first `horizon` rows of a reply's `actions` (float `[H, D]`, at least
/// `horizon` rows of the robot's `width` columns, all finite) into `out`.
pub fn read_actions(
    reply: &Value<'_>,
    horizon: usize,
    width: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let actions = reply.get("actions").ok_or("the reply has no `actions`")?;
    let actions = NdArray::from_value(actions)
        .ok_or("`actions` is not a numpy array")?
        .map_err(|e| format!("`actions` {e}"))?;
    let (rows, cols) = match actions.shape.as_slice() {
        &[rows, cols] => (rows, cols),
        shape => return Err(format!("`actions` has shape {shape:?}, expected [H, D]")),
    };
    if rows < horizon || cols != width {
        return Err(format!(
            "`actions` is [{rows}, {cols}]; this robot takes [>= {horizon}, {width}] \
             (horizon; joints, then the gripper)"
        ));
    }
    let values = actions.to_f64();
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "`actions`[{}][{}] is not finite",
            bad / cols,
            bad % cols
        ));
    }
    for (dst, src) in out.iter_mut().zip(&values[..horizon * cols]) {
        *dst = *src as f32;
    }
    Ok(())
}

impl Drop for OpenpiPolicy {
    fn drop(&mut self) {
        // A clean close, so the server does not see a dropped connection.
        if let Some(ws) = &mut self.socket {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }
}

impl Policy for OpenpiPolicy {
    fn horizon(&self) -> usize {
        self.horizon
    }

    fn action_dim(&self) -> usize {
        self.width
    }

    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
        let result = self.exchange(obs, out);
        if result.is_err() {
            // A reply that may still arrive must not answer the next request.
            self.socket = None;
        }
        result
    }

    fn set_prompt(&mut self, prompt: &str) -> Result<(), PolicyError> {
        self.prompt = Some(prompt.to_string());
        Ok(())
    }
}
