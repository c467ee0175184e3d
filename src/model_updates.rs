//! Policy models pushed at run time (`[zenoh] model_updates = true`): a learner puts
//! an ONNX file on `<prefix>/<robot>/models/policy`, reflex checks it and swaps it in
//! between chunks; the outcome goes back on `<prefix>/<robot>/models/policy/result`.
//!
//! A push carries the model's bytes as the payload and a JSON attachment
//! `{"sha256": "<hex of the bytes>"}`. It is refused, and the running model kept,
//! when it is over `max_model_bytes` (judged before anything is copied), when the
//! hash is missing or differs, when ONNX Runtime cannot load it, or when its
//! signature does not fit the launch file (the same checks as at start: input and
//! output names, shapes and types, and the chunk's horizon and width). Loading and
//! warm-up run on this module's thread: the inference worker swaps between two
//! inferences and the tick flushes its executor at the new model's first chunk
//! (`TickCore::apply_chunk`), so no tick waits and nothing the old model planned
//! runs after the swap.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use reflex_runtime::launch::Launch;
use reflex_runtime::policy::{PolicySwaps, SwapIn};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use zenoh::Wait;

/// The model name in the key: the launch file's `[policy]` model.
pub const POLICY: &str = "policy";

/// What became of the pushes, for the run summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelUpdatesReport {
    pub accepted: u64,
    pub refused: u64,
    pub last_refusal: Option<String>,
    /// Every model swapped in: version, content hash and size.
    pub models: Vec<AcceptedModel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AcceptedModel {
    pub version: u32,
    pub sha256: String,
    pub bytes: usize,
    pub load_ms: f64,
}

/// The chunk the running policy makes; a new model must make the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkShape {
    pub horizon: usize,
    pub action_dim: usize,
    pub candidates: usize,
}

struct Push {
    bytes: Vec<u8>,
    sha256: Option<String>,
}

/// Listens for pushed models until dropped.
pub struct ModelUpdates {
    /// Its callback holds the only sender: the loader ends with it.
    _subscriber: zenoh::pubsub::Subscriber<()>,
    report: Arc<Mutex<ModelUpdatesReport>>,
    dir: PathBuf,
}

/// Publishes each outcome on the result key (and says it on stderr).
#[derive(Clone)]
struct Outcomes {
    session: zenoh::Session,
    key: String,
    report: Arc<Mutex<ModelUpdatesReport>>,
}

impl Outcomes {
    fn refuse(&self, sha256: Option<&str>, bytes: usize, why: &str) {
        eprintln!("reflex: model push ({bytes} bytes) refused, the running model kept: {why}");
        {
            let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
            report.refused += 1;
            report.last_refusal = Some(why.to_string());
        }
        self.publish(json!({
            "name": POLICY,
            "accepted": false,
            "sha256": sha256,
            "bytes": bytes,
            "error": why,
        }));
    }

    fn accept(&self, model: AcceptedModel) {
        eprintln!(
            "reflex: model version {} ({} bytes, sha256 {}) loaded in {:.0} ms; swapping at the next chunk",
            model.version,
            model.bytes,
            &model.sha256[..12],
            model.load_ms
        );
        self.publish(json!({
            "name": POLICY,
            "accepted": true,
            "version": model.version,
            "sha256": model.sha256,
            "bytes": model.bytes,
            "load_ms": model.load_ms,
        }));
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        report.accepted += 1;
        report.models.push(model);
    }

    fn publish(&self, message: serde_json::Value) {
        if let Err(e) = self.session.put(&self.key, message.to_string()).wait() {
            tracing::warn!("cannot publish on {}: {e}", self.key);
        }
    }
}

impl ModelUpdates {
    /// Subscribes on `key` (`<prefix>/<robot>/models/policy`); models are loaded
    /// from `launch` with `policy.model` pointing at the pushed file.
    pub fn start(
        session: &zenoh::Session,
        key: &str,
        launch: &Launch,
        shape: ChunkShape,
        swaps: PolicySwaps,
        max_bytes: u64,
    ) -> anyhow::Result<Self> {
        let report = Arc::new(Mutex::new(ModelUpdatesReport::default()));
        let outcomes = Outcomes {
            session: session.clone(),
            key: format!("{key}/result"),
            report: report.clone(),
        };
        let dir = std::env::temp_dir().join(format!("reflex-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // One push loads at a time; one more may wait. Further ones are refused.
        let (pushes, queue) = mpsc::sync_channel::<Push>(1);
        {
            let (launch, outcomes, dir) = (launch.clone(), outcomes.clone(), dir.clone());
            std::thread::Builder::new()
                .name("reflex-models".into())
                .spawn(move || load_pushes(queue, &launch, shape, &swaps, &outcomes, &dir))?;
        }
        let callback = move |sample: zenoh::sample::Sample| {
            let bytes = sample.payload().len();
            if bytes as u64 > max_bytes {
                outcomes.refuse(
                    None,
                    bytes,
                    &format!("{bytes} bytes, over zenoh.max_model_bytes = {max_bytes}"),
                );
                return;
            }
            let sha256 = sample.attachment().and_then(|a| {
                let json: serde_json::Value = serde_json::from_slice(&a.to_bytes()).ok()?;
                json.get("sha256")?.as_str().map(str::to_ascii_lowercase)
            });
            let push = Push {
                bytes: sample.payload().to_bytes().into_owned(),
                sha256,
            };
            if let Err(TrySendError::Full(push) | TrySendError::Disconnected(push)) =
                pushes.try_send(push)
            {
                outcomes.refuse(
                    push.sha256.as_deref(),
                    push.bytes.len(),
                    "busy: an earlier push is still loading",
                );
            }
        };
        let subscriber = session
            .declare_subscriber(key.to_string())
            .callback(callback)
            .wait();
        let subscriber = subscriber.map_err(|e| anyhow::anyhow!("model updates: {e}"))?;
        Ok(Self {
            _subscriber: subscriber,
            report,
            dir,
        })
    }

    /// Stops listening and returns what happened. A model still loading is
    /// left to its thread (detached): the run is over.
    pub fn finish(self) -> ModelUpdatesReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for ModelUpdates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The loader thread: hash, write, load, check, hand to the worker.
fn load_pushes(
    queue: Receiver<Push>,
    launch: &Launch,
    shape: ChunkShape,
    swaps: &PolicySwaps,
    outcomes: &Outcomes,
    dir: &Path,
) {
    // Loading and warm-up take whole cores for a while: never from the tick.
    if let Err(e) = reflex_runtime::realtime::background_thread() {
        tracing::warn!("the model loader keeps its priority: {e}");
    }
    let mut next_version = 1u32;
    for push in queue {
        let started = Instant::now();
        let digest = hex(&Sha256::digest(&push.bytes));
        let bytes = push.bytes.len();
        let Some(claimed) = push.sha256.as_deref() else {
            outcomes.refuse(
                Some(&digest),
                bytes,
                "no content hash: attach {\"sha256\": \"<hex>\"} to the put",
            );
            continue;
        };
        if claimed != digest {
            outcomes.refuse(
                Some(&digest),
                bytes,
                &format!("content hash mismatch: attached {claimed}, received {digest}"),
            );
            continue;
        }
        let path = dir.join(format!("{POLICY}-v{next_version}.onnx"));
        match load(launch, &path, &push.bytes, shape) {
            Ok(policy) => {
                swaps.offer(SwapIn {
                    policy,
                    version: next_version,
                });
                outcomes.accept(AcceptedModel {
                    version: next_version,
                    sha256: digest,
                    bytes,
                    load_ms: started.elapsed().as_secs_f64() * 1e3,
                });
                next_version += 1;
            }
            Err(why) => {
                let _ = std::fs::remove_file(&path);
                outcomes.refuse(Some(&digest), bytes, &why);
            }
        }
    }
}

/// Writes the model to `path` and loads it the way the launch file's model was.
fn load(
    launch: &Launch,
    path: &Path,
    bytes: &[u8],
    shape: ChunkShape,
) -> Result<Box<dyn reflex_runtime::policy::Policy>, String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let path_value = serde_json::to_string(&path.display().to_string()).unwrap_or_default();
    let relaunch = Launch::from_text(
        &launch.text,
        &launch.origin,
        launch.base_dir.clone(),
        &[format!("policy.model={path_value}")],
        &crate::registry(),
    )
    .map_err(|e| {
        format!(
            "the launch file's policy takes no single model: {}",
            e.message
        )
    })?;
    let loaded = crate::load_policy(&relaunch).map_err(|e| format!("{e:#}"))?;
    let policy = loaded.policy;
    let found = ChunkShape {
        horizon: policy.horizon(),
        action_dim: policy.action_dim(),
        candidates: policy.candidates().max(1),
    };
    if found != shape {
        return Err(format!(
            "its chunks are {} x {} ({} candidates), the running model's {} x {} ({})",
            found.horizon,
            found.action_dim,
            found.candidates,
            shape.horizon,
            shape.action_dim,
            shape.candidates
        ));
    }
    Ok(policy)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
