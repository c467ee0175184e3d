//! The policy contract and the inference worker thread that owns the policy.
//!
//! The tick never waits for inference on the wall clock: it hands an observation
//! buffer to the worker and picks up finished chunks on later ticks. Buffers
//! circulate between the threads through lock-free pools, so the tick neither
//! allocates nor frees.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::mailbox::Mailbox;
use crate::prompt::PromptCell;
use crate::ratelimit::WarnLimiter;
use crate::stage::{Candidates, ChunkStage, Steering, SteeringSwitch};
use crate::types::{ActionChunk, Observation};

pub type PolicyError = Box<dyn std::error::Error + Send + Sync>;

/// A policy maps an observation to a chunk of absolute joint-position targets.
pub trait Policy: Send {
    fn horizon(&self) -> usize;
    fn action_dim(&self) -> usize;
    /// Fills `out.actions` (`horizon * action_dim` values, row-major).
    fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError>;
    /// Candidate chunks one inference samples (a flow or diffusion `batch`).
    fn candidates(&self) -> usize {
        1
    }
    /// Fills every candidate (`out` is `[candidates][horizon][action_dim]`); for
    /// the chunk stages. The default runs [`infer`](Self::infer) for one.
    fn infer_candidates(
        &mut self,
        obs: &Observation,
        out: &mut Candidates,
    ) -> Result<(), PolicyError> {
        let mut chunk = ActionChunk {
            id: 0,
            conditioned_on_tick: obs.tick,
            horizon: self.horizon(),
            dim: self.action_dim(),
            // Lent, not copied: the worker's buffers stay allocation-free.
            actions: std::mem::take(&mut out.values),
            infer_ns: 0,
            model_version: 0,
            choice: Default::default(),
            noise: Vec::new(),
            noise_from_latent: false,
        };
        let result = self.infer(obs, &mut chunk);
        out.values = chunk.actions;
        result
    }
    /// The initial noise every candidate of the last inference started from
    /// (`[candidates][horizon][model dim]`), when a latent-noise policy (DSRL)
    /// chose the first candidate's: it is recorded with the chunk. None otherwise.
    fn initial_noise(&self) -> Option<&[f32]> {
        None
    }
    /// Switches a latent-noise policy (DSRL) on or off before the next inference
    /// (off: the run's seeded noise). Policies without one ignore it.
    fn set_latent_noise(&mut self, _on: bool) {}
    /// The next inference starts from `noise` (`[candidates][horizon][model
    /// dim]`) instead of the run's seeded noise: flow and diffusion policies
    /// (`reflex serve`'s `noise` request field). Others refuse it.
    fn set_next_noise(&mut self, _noise: Vec<f32>) -> Result<(), PolicyError> {
        Err("this policy samples no noise".into())
    }
    /// A new task instruction, given before the next `infer` (on the inference
    /// thread). Policies without a language input ignore it.
    fn set_prompt(&mut self, _prompt: &str) -> Result<(), PolicyError> {
        Ok(())
    }
}

/// A policy ready to run, and what it runs on (for the start-up line and `reflex check`).
pub struct LoadedPolicy {
    pub policy: Box<dyn Policy>,
    pub model_path: std::path::PathBuf,
    /// The inference library (e.g. libonnxruntime.so).
    pub library_path: std::path::PathBuf,
    pub warm_up_ms: f64,
    /// Where it runs (`cpu`, `cuda`, `tensorrt`).
    pub provider: &'static str,
}

/// The most requests an executor may keep in flight (buffers are allocated for
/// this many at start).
pub const MAX_IN_FLIGHT: usize = 4;

/// A finished inference as the tick receives it.
pub struct Inference {
    pub chunk: Box<ActionChunk>,
    /// False when the policy failed; the chunk's contents are then meaningless.
    pub ok: bool,
}

/// Samples the candidates and runs the stages in order; the selected candidate
/// is checked to exist.
fn run_stages(
    policy: &mut dyn Policy,
    stages: &mut [Box<dyn ChunkStage>],
    obs: &Observation,
    candidates: &mut Candidates,
    ranking: bool,
) -> Result<(), PolicyError> {
    candidates.selected = 0;
    candidates.scored = false;
    candidates.scores.fill(0.0);
    policy.infer_candidates(obs, candidates)?;
    for stage in stages.iter_mut() {
        if ranking || !stage.steers() {
            stage.apply(obs, candidates)?;
        }
    }
    if candidates.selected >= candidates.batch {
        return Err(format!(
            "a stage selected candidate {} of {}",
            candidates.selected, candidates.batch
        )
        .into());
    }
    Ok(())
}

/// A policy and its chunk stages: one inference samples the candidates, the
/// stages choose, and the chosen one fills the chunk along with what the stages
/// chose from and the initial noise it started from. The inference worker runs
/// one, and so does `reflex serve`.
pub struct ChunkPipeline {
    pub policy: Box<dyn Policy>,
    stages: Vec<Box<dyn ChunkStage>>,
    candidates: Candidates,
}

impl ChunkPipeline {
    pub fn new(policy: Box<dyn Policy>, stages: Vec<Box<dyn ChunkStage>>) -> Self {
        let candidates = Candidates::zeros(
            policy.candidates().max(1),
            policy.horizon(),
            policy.action_dim(),
        );
        Self {
            policy,
            stages,
            candidates,
        }
    }

    /// Whether `other` may replace the policy: the chunk buffers fit it.
    pub fn fits(&self, other: &dyn Policy) -> bool {
        (other.horizon(), other.action_dim()) == (self.policy.horizon(), self.policy.action_dim())
            && other.candidates().max(1) == self.candidates.batch
    }

    /// One inference into `chunk` (its id, tick and model version are the
    /// caller's); `steering` switches ranking stages and the latent-noise policy.
    /// Allocates nothing once the chunk's buffers have their size.
    pub fn run(
        &mut self,
        obs: &Observation,
        chunk: &mut ActionChunk,
        steering: &SteeringSwitch,
    ) -> Result<(), PolicyError> {
        let started = Instant::now();
        self.policy
            .set_latent_noise(steering.is_on(Steering::LatentNoise));
        chunk.horizon = self.policy.horizon();
        chunk.dim = self.policy.action_dim();
        chunk.actions.resize(chunk.horizon * chunk.dim, 0.0);
        let result = if self.stages.is_empty() {
            self.policy.infer(obs, chunk)
        } else {
            let ranking = steering.is_on(Steering::Ranking);
            let candidates = &mut self.candidates;
            run_stages(
                &mut *self.policy,
                &mut self.stages,
                obs,
                candidates,
                ranking,
            )
            .map(|()| {
                chunk
                    .actions
                    .copy_from_slice(candidates.chunk(candidates.selected));
                record_choice(candidates, &mut chunk.choice);
            })
        };
        let selected = if self.stages.is_empty() {
            0
        } else {
            self.candidates.selected
        };
        record_noise(&*self.policy, selected, chunk);
        chunk.infer_ns = started.elapsed().as_nanos() as u64;
        result
    }
}

/// Keeps what a scoring stage chose from, in the chunk's own buffers (they
/// keep their capacity across chunks: no allocation after the first).
fn record_choice(candidates: &Candidates, choice: &mut crate::types::ChunkChoice) {
    choice.scores.clear();
    choice.candidates.clear();
    choice.selected = candidates.selected as u32;
    if candidates.scored {
        choice.scores.extend_from_slice(&candidates.scores);
        choice.candidates.extend_from_slice(&candidates.values);
    }
}

/// Keeps the executed candidate's initial noise with the chunk when a
/// latent-noise policy steers the sampler (the chunk's buffer keeps its capacity).
fn record_noise(policy: &dyn Policy, selected: usize, chunk: &mut ActionChunk) {
    chunk.noise.clear();
    chunk.noise_from_latent = false;
    if let Some(noise) = policy.initial_noise() {
        let per = noise.len() / policy.candidates().max(1);
        if let Some(row) = noise.get(selected * per..(selected + 1) * per) {
            chunk.noise.extend_from_slice(row);
            chunk.noise_from_latent = selected == 0;
        }
    }
}

/// A model loaded at run time, waiting to replace the running one.
pub struct SwapIn {
    pub policy: Box<dyn Policy>,
    /// Stamped on its chunks (`ActionChunk::model_version`).
    pub version: u32,
}

/// Hands loaded models to the inference worker, which swaps between two
/// inferences: the tick never waits for it, and never sees half a swap.
#[derive(Clone, Default)]
pub struct PolicySwaps {
    pending: Arc<Mutex<Option<SwapIn>>>,
    running: Arc<AtomicU32>,
}

impl PolicySwaps {
    /// Queues `swap`; a model offered earlier and not yet taken is dropped for it.
    pub fn offer(&self, swap: SwapIn) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(swap);
    }

    /// The version whose chunks the worker produces now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Acquire)
    }

    /// Called by the worker before an inference; never waits on the offering thread.
    fn take(&self) -> Option<SwapIn> {
        match self.pending.try_lock() {
            Ok(mut pending) => pending.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// The tick's handle on the worker.
pub struct InferenceWorker {
    free_observations: Arc<ArrayQueue<Box<Observation>>>,
    requests: Arc<Mailbox<Box<Observation>>>,
    results: Arc<ArrayQueue<Inference>>,
    /// Chunks go back here once the tick (or the recorder) is done with them.
    pub free_chunks: Arc<ArrayQueue<Box<ActionChunk>>>,
    errors: Arc<AtomicU64>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
    max_in_flight: usize,
    swaps: PolicySwaps,
}

impl InferenceWorker {
    /// Starts the worker thread; `template` sizes the observation buffers.
    /// The worker hands `prompt` to the policy before the first inference and
    /// again whenever it changes.
    ///
    /// With `stages`, every inference samples the policy's candidates and the
    /// stages pick the executed one.
    pub fn spawn(
        policy: Box<dyn Policy>,
        template: &Observation,
        prompt: PromptCell,
        stages: Vec<Box<dyn ChunkStage>>,
        steering: SteeringSwitch,
    ) -> std::io::Result<Self> {
        let free_observations = Arc::new(ArrayQueue::new(MAX_IN_FLIGHT + 1));
        for _ in 0..MAX_IN_FLIGHT + 1 {
            let _ = free_observations.push(Box::new(template.clone()));
        }
        let free_chunks = Arc::new(ArrayQueue::new(16));
        for _ in 0..8 {
            let _ = free_chunks.push(Box::new(ActionChunk::zeros(
                policy.horizon(),
                policy.action_dim(),
            )));
        }
        let requests: Arc<Mailbox<Box<Observation>>> = Mailbox::new(MAX_IN_FLIGHT);
        let results = Arc::new(ArrayQueue::new(MAX_IN_FLIGHT + 1));
        let errors = Arc::new(AtomicU64::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let swaps = PolicySwaps::default();
        let thread = {
            let (free_observations, requests, results, free_chunks, errors, shutdown, swaps) = (
                free_observations.clone(),
                requests.clone(),
                results.clone(),
                free_chunks.clone(),
                errors.clone(),
                shutdown.clone(),
                swaps.clone(),
            );
            std::thread::Builder::new()
                .name("reflex-inference".into())
                .spawn(move || {
                    let mut next_id = 1;
                    let mut prompt_seen = 0;
                    let mut model_version = 0;
                    let mut pipeline = ChunkPipeline::new(policy, stages);
                    let failures = WarnLimiter::new(5, Duration::from_secs(1));
                    while !shutdown.load(Ordering::Acquire) {
                        let Some(obs) = requests.recv_timeout(Duration::from_millis(50)) else {
                            continue;
                        };
                        if let Some(swap) = swaps.take() {
                            // The loader checked the same; a mismatch here would
                            // break the chunk buffers, so it is refused again.
                            if pipeline.fits(&*swap.policy) {
                                pipeline.policy = swap.policy;
                                model_version = swap.version;
                                swaps.running.store(model_version, Ordering::Release);
                                // The new model hears the current instruction too.
                                prompt_seen = 0;
                            } else {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(
                                    "model version {} refused at the swap: its chunk shape differs",
                                    swap.version
                                );
                            }
                        }
                        if let Some((version, text)) = prompt.newer_than(prompt_seen) {
                            prompt_seen = version;
                            if let Err(e) = pipeline.policy.set_prompt(&text) {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!("the policy refused the instruction: {e}");
                            }
                        }
                        let mut chunk = free_chunks.pop().unwrap_or_else(|| {
                            Box::new(ActionChunk::zeros(
                                pipeline.policy.horizon(),
                                pipeline.policy.action_dim(),
                            ))
                        });
                        chunk.id = next_id;
                        next_id += 1;
                        chunk.conditioned_on_tick = obs.tick;
                        chunk.model_version = model_version;
                        let ok = match pipeline.run(&obs, &mut chunk, &steering) {
                            Ok(()) => true,
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                // A policy that keeps failing (a remote server
                                // gone) fails at every request: the summary
                                // counts them all, the terminal shows a few.
                                match failures.hit() {
                                    Some(0) => {
                                        tracing::error!("inference failed on tick {}: {e}", obs.tick)
                                    }
                                    Some(left_out) => tracing::error!(
                                        "inference failed on tick {}: {e} ({left_out} more failures \
                                         since the last line)",
                                        obs.tick
                                    ),
                                    None => {}
                                }
                                false
                            }
                        };
                        let _ = free_observations.push(obs);
                        if let Err(lost) = results.push(Inference { chunk, ok }) {
                            let _ = free_chunks.push(lost.chunk);
                        }
                    }
                })?
        };
        Ok(Self {
            free_observations,
            requests,
            results,
            free_chunks,
            errors,
            shutdown,
            thread: Some(thread),
            in_flight: 0,
            max_in_flight: 1,
            swaps,
        })
    }

    /// Where models loaded at run time are handed to the worker.
    pub fn swaps(&self) -> PolicySwaps {
        self.swaps.clone()
    }

    /// True while a request has not come back.
    pub fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Lets up to `n` requests be in flight (1..=MAX_IN_FLIGHT; the worker still
    /// runs them one after the other, in order).
    pub fn set_max_in_flight(&mut self, n: usize) {
        self.max_in_flight = n.clamp(1, MAX_IN_FLIGHT);
    }

    /// True when another request may be sent.
    pub fn can_request(&self) -> bool {
        self.in_flight < self.max_in_flight
    }

    /// Copies `obs` into a free buffer and hands it to the worker. Returns false
    /// (and sends nothing) while `max_in_flight` requests have not come back.
    pub fn request(&mut self, obs: &Observation) -> bool {
        if !self.can_request() {
            return false;
        }
        let Some(mut buffer) = self.free_observations.pop() else {
            return false;
        };
        buffer.copy_from(obs);
        self.requests.send(buffer);
        self.in_flight += 1;
        true
    }

    /// A finished inference, if one is ready.
    pub fn poll(&mut self) -> Option<Inference> {
        let result = self.results.pop();
        if result.is_some() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        result
    }

    /// Waits for the in-flight inference (simulated clock only: there, waiting is
    /// what makes inference latency a fixed number of ticks).
    pub fn wait(&mut self, timeout: Duration) -> Option<Inference> {
        let deadline = Instant::now() + timeout;
        while self.in_flight > 0 && Instant::now() < deadline {
            if let Some(result) = self.poll() {
                return Some(result);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        None
    }

    /// Returns a chunk buffer to the pool.
    pub fn recycle(&self, chunk: Box<ActionChunk>) {
        let _ = self.free_chunks.push(chunk);
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl Drop for InferenceWorker {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::JointState;

    struct Echo;
    impl Policy for Echo {
        fn horizon(&self) -> usize {
            2
        }
        fn action_dim(&self) -> usize {
            1
        }
        fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
            if obs.joints.position[0] < 0.0 {
                return Err("negative".into());
            }
            out.actions
                .copy_from_slice(&[obs.joints.position[0] as f32; 2]);
            Ok(())
        }
    }

    fn obs(tick: u64, x: f64) -> Observation {
        let mut joints = JointState::empty(1);
        joints.position[0] = x;
        Observation::of_joints(tick, joints)
    }

    /// Answers with the length of the instruction it was given.
    struct Prompted(usize);
    impl Policy for Prompted {
        fn horizon(&self) -> usize {
            1
        }
        fn action_dim(&self) -> usize {
            1
        }
        fn infer(&mut self, _obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
            out.actions[0] = self.0 as f32;
            Ok(())
        }
        fn set_prompt(&mut self, prompt: &str) -> Result<(), PolicyError> {
            self.0 = prompt.len();
            Ok(())
        }
    }

    #[test]
    fn the_instruction_reaches_the_policy_before_the_next_inference() {
        let prompt = PromptCell::new("ab");
        let mut worker = InferenceWorker::spawn(
            Box::new(Prompted(0)),
            &obs(0, 0.0),
            prompt.clone(),
            Vec::new(),
            SteeringSwitch::default(),
        )
        .unwrap();
        let mut ask = |tick| {
            assert!(worker.request(&obs(tick, 0.0)));
            let done = worker.wait(Duration::from_secs(5)).expect("result");
            let value = done.chunk.actions[0];
            worker.recycle(done.chunk);
            value
        };
        assert_eq!(ask(1), 2.0);
        prompt.set("abcd").unwrap();
        assert_eq!(ask(2), 4.0);
        assert_eq!(ask(3), 4.0);
    }

    /// Answers with the first committed target and the expected delay.
    struct Committed;
    impl Policy for Committed {
        fn horizon(&self) -> usize {
            1
        }
        fn action_dim(&self) -> usize {
            2
        }
        fn infer(&mut self, obs: &Observation, out: &mut ActionChunk) -> Result<(), PolicyError> {
            let first = obs.committed_rows().next().map_or(-1.0, |row| row[0]);
            out.actions[0] = first as f32;
            out.actions[1] = obs.expected_delay_ticks as f32;
            Ok(())
        }
    }

    #[test]
    fn requests_carry_the_committed_actions_and_the_expected_delay() {
        let mut template = obs(0, 0.0);
        template.committed = vec![0.0; 4];
        let mut worker = InferenceWorker::spawn(
            Box::new(Committed),
            &template,
            PromptCell::default(),
            Vec::new(),
            SteeringSwitch::default(),
        )
        .unwrap();
        let mut request = template.clone();
        request.committed[..2].copy_from_slice(&[0.7, 0.9]);
        request.committed_len = 2;
        request.expected_delay_ticks = 12;
        assert!(worker.request(&request));
        let done = worker.wait(Duration::from_secs(5)).expect("result");
        assert_eq!(done.chunk.actions, vec![0.7, 12.0]);
    }

    /// Doubles every action, or selects a candidate that does not exist.
    struct Doubler {
        select: usize,
    }
    impl ChunkStage for Doubler {
        fn apply(&mut self, _obs: &Observation, c: &mut Candidates) -> Result<(), PolicyError> {
            c.values.iter_mut().for_each(|v| *v *= 2.0);
            c.selected = self.select;
            Ok(())
        }
    }

    #[test]
    fn stages_run_on_the_candidates_and_a_bad_selection_fails_the_chunk() {
        let stages: Vec<Box<dyn ChunkStage>> = vec![Box::new(Doubler { select: 0 })];
        let mut worker = InferenceWorker::spawn(
            Box::new(Echo),
            &obs(0, 0.0),
            PromptCell::default(),
            stages,
            SteeringSwitch::default(),
        )
        .unwrap();
        assert!(worker.request(&obs(1, 0.25)));
        let done = worker.wait(Duration::from_secs(5)).expect("result");
        assert!(done.ok);
        assert_eq!(done.chunk.actions, vec![0.5, 0.5]);
        let stages: Vec<Box<dyn ChunkStage>> = vec![Box::new(Doubler { select: 3 })];
        let mut worker = InferenceWorker::spawn(
            Box::new(Echo),
            &obs(0, 0.0),
            PromptCell::default(),
            stages,
            SteeringSwitch::default(),
        )
        .unwrap();
        assert!(worker.request(&obs(1, 0.25)));
        assert!(!worker.wait(Duration::from_secs(5)).expect("result").ok);
        assert_eq!(worker.errors(), 1);
    }

    #[test]
    fn several_requests_may_be_in_flight_and_come_back_in_order() {
        let mut worker = InferenceWorker::spawn(
            Box::new(Echo),
            &obs(0, 0.0),
            PromptCell::default(),
            Vec::new(),
            SteeringSwitch::default(),
        )
        .unwrap();
        worker.set_max_in_flight(2);
        assert!(worker.request(&obs(1, 0.25)));
        assert!(worker.request(&obs(2, 0.5)));
        assert!(!worker.request(&obs(3, 0.75)), "two at most");
        let first = worker.wait(Duration::from_secs(5)).expect("result");
        assert_eq!(first.chunk.conditioned_on_tick, 1);
        assert!(worker.can_request());
        let second = worker.wait(Duration::from_secs(5)).expect("result");
        assert_eq!(second.chunk.conditioned_on_tick, 2);
        assert_eq!(second.chunk.actions, vec![0.5, 0.5]);
        assert!(!worker.in_flight());
        worker.set_max_in_flight(99);
        for tick in 0..MAX_IN_FLIGHT as u64 {
            assert!(worker.request(&obs(tick, 0.0)));
        }
        assert!(!worker.request(&obs(9, 0.0)), "capped at MAX_IN_FLIGHT");
    }

    #[test]
    fn runs_requests_one_at_a_time_and_reports_failures() {
        let mut worker = InferenceWorker::spawn(
            Box::new(Echo),
            &obs(0, 0.0),
            PromptCell::default(),
            Vec::new(),
            SteeringSwitch::default(),
        )
        .unwrap();
        assert!(worker.request(&obs(5, 0.25)));
        assert!(!worker.request(&obs(6, 0.5)), "one request in flight");
        let done = worker.wait(Duration::from_secs(5)).expect("result");
        assert!(done.ok);
        assert_eq!(done.chunk.conditioned_on_tick, 5);
        assert_eq!(done.chunk.actions, vec![0.25, 0.25]);
        worker.recycle(done.chunk);
        assert!(worker.request(&obs(7, -1.0)));
        let failed = worker.wait(Duration::from_secs(5)).expect("result");
        assert!(!failed.ok);
        assert_eq!(worker.errors(), 1);
    }
}
