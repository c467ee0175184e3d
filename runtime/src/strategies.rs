//! The built-in execution strategies (`[execution] strategy`), all run by
//! [`ChunkExecutor`]:
//!
//! - `replace` (the default): the newest chunk replaces the queue; the next is
//!   asked for after `replan_after` actions, or once the queue is down to
//!   `chunk_size_threshold` of a chunk. One request in flight.
//! - `synchronous`: infer, execute `replan_after` actions, infer again, holding
//!   while the policy thinks (openpi's `ActionChunkBroker`): the baseline.
//! - `aggregate`: LeRobot's asynchronous inference. Requests go out once the
//!   queue is down to `chunk_size_threshold` (one per action period, several in
//!   flight); the timesteps an arriving chunk shares with the queue are combined
//!   by `aggregate_fn`.
//! - `temporal_ensemble`: ACT. A request every `replan_after` actions; each
//!   timestep runs the average of every prediction made for it, the i-th oldest
//!   weighted `exp(-m * i)`.
//!
//! - `rtc`: real-time chunking (Black, Galliker, Levine 2025) for flow and
//!   diffusion policies.
//!   Executes like `replace` (s = `replan_after`); the policy's sampler is guided
//!   toward the plan it replaces ([`RtcParams`]).
//!
//! Every strategy drops the actions whose time passed while the chunk was computed
//! (except `synchronous`, which times a chunk from its arrival).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::executor::{ChunkExecutor, Executor, ExecutorParams, Merge, Requests};
use crate::launch::LaunchError;
use crate::policy::MAX_IN_FLIGHT;
use crate::registry::{KindTable, StrategyKind, schema_of};

/// The largest queue length `n` with `n / horizon <= threshold` (LeRobot's test).
fn queue_threshold(threshold: f64, horizon: usize) -> usize {
    (0..=horizon)
        .rev()
        .find(|&n| n as f64 / horizon as f64 <= threshold)
        .unwrap_or(0)
}

/// Parameters as checked, or the defaults when a log has none (`null`).
fn parse_params<T: DeserializeOwned + Default>(params: &serde_json::Value) -> Result<T, String> {
    if params.is_null() {
        Ok(T::default())
    } else {
        serde_json::from_value(params.clone()).map_err(|e| e.to_string())
    }
}

/// `first_action` + `replan_after` must fit the policy's horizon.
fn check_first_action(
    table: &KindTable<'_>,
    first_action: usize,
    executes: usize,
) -> Result<(), LaunchError> {
    let launch = table.launch();
    let horizon = launch.policy().horizon();
    if first_action + executes > horizon {
        let replan_after = launch.config.execution.replan_after;
        return Err(table.error_at(
            "first_action",
            format!(
                "{first_action} skipped + replan_after {replan_after} is more than the policy's horizon {horizon}"
            ),
        ));
    }
    Ok(())
}

fn check_threshold(table: &KindTable<'_>, threshold: Option<f64>) -> Result<(), LaunchError> {
    match threshold {
        Some(t) if !(0.0..1.0).contains(&t) => Err(table.error_at(
            "chunk_size_threshold",
            format!("must be in [0, 1) (a fraction of the chunk), found {t}"),
        )),
        _ => Ok(()),
    }
}

fn check_in_flight(table: &KindTable<'_>, n: usize) -> Result<(), LaunchError> {
    if (1..=MAX_IN_FLIGHT).contains(&n) {
        Ok(())
    } else {
        Err(table.error_at(
            "max_in_flight",
            format!("must be 1 to {MAX_IN_FLIGHT}, found {n}"),
        ))
    }
}

fn to_json<T: Serialize>(
    table: &KindTable<'_>,
    params: T,
) -> Result<serde_json::Value, LaunchError> {
    serde_json::to_value(params).map_err(|e| table.error_at("", e.to_string()))
}

/// The executor's horizon and first action, checked again at build (a log may
/// have been edited).
fn base(p: &ExecutorParams, first_action: usize, executes: usize) -> Result<ChunkExecutor, String> {
    if first_action + executes.max(1) > p.horizon {
        return Err(format!(
            "first_action {first_action} + replan_after {executes} exceeds the horizon {}",
            p.horizon
        ));
    }
    Ok(
        ChunkExecutor::new(p.dim, p.horizon, p.ticks_per_action, p.replan_after)
            .starting_at(first_action)
            .interpolating(p.interpolation),
    )
}

/// `[execution] strategy = "replace"` (the default).
pub struct ReplaceStrategy;

/// The `replace` strategy's own fields of `[execution]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceParams {
    /// Index of the first action executed: LeRobot's Diffusion Policy executes
    /// from `n_obs_steps - 1`, the earlier actions being the past it denoised too.
    #[serde(default)]
    pub first_action: usize,
    /// Ask for the next chunk once the actions left are at most this fraction of
    /// a chunk (LeRobot's `chunk_size_threshold`) instead of after `replan_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size_threshold: Option<f64>,
}

impl StrategyKind for ReplaceStrategy {
    fn name(&self) -> &'static str {
        "replace"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ReplaceParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: ReplaceParams = table.parse()?;
        let replan_after = table.launch().config.execution.replan_after;
        check_first_action(table, params.first_action, replan_after)?;
        check_threshold(table, params.chunk_size_threshold)?;
        to_json(table, params)
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let params: ReplaceParams = parse_params(params)?;
        let mut executor = base(p, params.first_action, p.replan_after)?;
        if let Some(threshold) = params.chunk_size_threshold {
            let executed = p.horizon - params.first_action;
            executor =
                executor.requesting(Requests::AtMostQueued(queue_threshold(threshold, executed)));
        }
        Ok(Box::new(executor))
    }
}

/// `[execution] strategy = "synchronous"`.
pub struct SynchronousStrategy;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SynchronousParams {
    /// As for `replace`.
    #[serde(default)]
    pub first_action: usize,
}

impl StrategyKind for SynchronousStrategy {
    fn name(&self) -> &'static str {
        "synchronous"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<SynchronousParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: SynchronousParams = table.parse()?;
        let replan_after = table.launch().config.execution.replan_after;
        check_first_action(table, params.first_action, replan_after)?;
        to_json(table, params)
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let params: SynchronousParams = parse_params(params)?;
        Ok(Box::new(
            base(p, params.first_action, p.replan_after)?
                .merging(Merge::Synchronous { n: p.replan_after })
                .requesting(Requests::WhenDone),
        ))
    }
}

/// LeRobot's `aggregate_fn` names: how an overlapping old and new action combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFn {
    /// 0.3 old + 0.7 new.
    #[default]
    WeightedAverage,
    /// The new action.
    LatestOnly,
    /// 0.5 old + 0.5 new.
    Average,
    /// 0.7 old + 0.3 new.
    Conservative,
}

impl AggregateFn {
    /// (old weight, new weight).
    pub fn weights(self) -> (f64, f64) {
        match self {
            AggregateFn::WeightedAverage => (0.3, 0.7),
            AggregateFn::LatestOnly => (0.0, 1.0),
            AggregateFn::Average => (0.5, 0.5),
            AggregateFn::Conservative => (0.7, 0.3),
        }
    }
}

/// `[execution] strategy = "aggregate"`.
pub struct AggregateStrategy;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateParams {
    #[serde(default)]
    pub aggregate_fn: AggregateFn,
    /// Ask for chunks once the actions left are at most this fraction of a chunk.
    #[serde(default = "default_threshold")]
    pub chunk_size_threshold: f64,
    /// Requests in flight at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub first_action: usize,
}

fn default_threshold() -> f64 {
    0.5
}

fn default_in_flight() -> usize {
    MAX_IN_FLIGHT
}

impl Default for AggregateParams {
    fn default() -> Self {
        Self {
            aggregate_fn: AggregateFn::default(),
            chunk_size_threshold: default_threshold(),
            max_in_flight: default_in_flight(),
            first_action: 0,
        }
    }
}

impl StrategyKind for AggregateStrategy {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<AggregateParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: AggregateParams = table.parse()?;
        check_first_action(table, params.first_action, 1)?;
        check_threshold(table, Some(params.chunk_size_threshold))?;
        check_in_flight(table, params.max_in_flight)?;
        to_json(table, params)
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let params: AggregateParams = parse_params(params)?;
        let executed = p.horizon.saturating_sub(params.first_action);
        let (old_weight, new_weight) = params.aggregate_fn.weights();
        Ok(Box::new(
            base(p, params.first_action, 1)?
                .merging(Merge::Aggregate {
                    old_weight,
                    new_weight,
                })
                .requesting(Requests::AtMostQueued(queue_threshold(
                    params.chunk_size_threshold,
                    executed,
                )))
                .in_flight(params.max_in_flight.clamp(1, MAX_IN_FLIGHT)),
        ))
    }
}

/// `[execution] strategy = "temporal_ensemble"`.
pub struct TemporalEnsembleStrategy;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemporalEnsembleParams {
    /// The i-th oldest prediction of a timestep weighs `exp(-m * i)` (ACT: 0.01;
    /// larger m trusts the older predictions more).
    #[serde(default = "default_m")]
    pub m: f64,
    /// Requests in flight at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub first_action: usize,
}

fn default_m() -> f64 {
    0.01
}

impl Default for TemporalEnsembleParams {
    fn default() -> Self {
        Self {
            m: default_m(),
            max_in_flight: default_in_flight(),
            first_action: 0,
        }
    }
}

impl StrategyKind for TemporalEnsembleStrategy {
    fn name(&self) -> &'static str {
        "temporal_ensemble"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<TemporalEnsembleParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: TemporalEnsembleParams = table.parse()?;
        if !(params.m.is_finite() && params.m >= 0.0) {
            return Err(table.error_at(
                "m",
                format!("must be finite and at least 0, found {}", params.m),
            ));
        }
        let replan_after = table.launch().config.execution.replan_after;
        check_first_action(table, params.first_action, replan_after)?;
        check_in_flight(table, params.max_in_flight)?;
        to_json(table, params)
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let params: TemporalEnsembleParams = parse_params(params)?;
        Ok(Box::new(
            base(p, params.first_action, p.replan_after)?
                .merging(Merge::Ensemble { m: params.m })
                .requesting(Requests::EveryActions(p.replan_after))
                .in_flight(params.max_in_flight.clamp(1, MAX_IN_FLIGHT)),
        ))
    }
}

/// The soft mask over the previous plan (the paper's prefix weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrefixSchedule {
    /// 1 for the whole overlap up to H - s.
    Ones,
    /// 1 for the first d actions, 0 after (a hard mask).
    Zeros,
    /// 1 for the first d, falling linearly to 0 at H - s.
    Linear,
    /// The linear weight w mapped to `w * (e^w - 1) / (e - 1)` (the paper's choice).
    #[default]
    Exp,
}

impl PrefixSchedule {
    /// Weight of action `i` of H with delay `d` and execution horizon `s`:
    /// 1 for i < d, decaying to 0 at `H - s`, 0 beyond.
    pub fn weight(self, i: usize, d: usize, s: usize, horizon: usize) -> f64 {
        let end = horizon.saturating_sub(s);
        let start = d.min(end);
        if i >= end {
            return 0.0;
        }
        let linear =
            || ((start as f64 - 1.0 - i as f64) / (end - start + 1) as f64 + 1.0).clamp(0.0, 1.0);
        match self {
            PrefixSchedule::Ones => 1.0,
            PrefixSchedule::Zeros => f64::from(u8::from(i < start)),
            PrefixSchedule::Linear => linear(),
            PrefixSchedule::Exp => {
                let w = linear();
                w * w.exp_m1() / (std::f64::consts::E - 1.0)
            }
        }
    }
}

/// How the new chunk is made to continue the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RtcMode {
    /// Inference-time guidance through the velocity network's VJP (`[policy]
    /// vjp_model`), with the soft mask.
    #[default]
    Guided,
    /// Training-time RTC (arXiv 2512.05964): the model takes the frozen prefix
    /// itself (its step graph has a `prefix_mask` [B, H] input), no guidance.
    Trained,
}

/// `[execution] strategy = "rtc"`.
pub struct RtcStrategy;

/// The `rtc` strategy's own fields; the policy reads them too (its sampler does
/// the guiding, with `[policy] vjp_model`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtcParams {
    #[serde(default)]
    pub mode: RtcMode,
    #[serde(default)]
    pub schedule: PrefixSchedule,
    /// The guidance weight's clip (the paper's beta).
    #[serde(default = "default_guidance")]
    pub max_guidance_weight: f64,
}

fn default_guidance() -> f64 {
    5.0
}

impl Default for RtcParams {
    fn default() -> Self {
        Self {
            mode: RtcMode::default(),
            schedule: PrefixSchedule::default(),
            max_guidance_weight: default_guidance(),
        }
    }
}

impl RtcParams {
    /// The launch file's, when its strategy is `rtc`.
    pub fn of(launch: &crate::launch::Launch) -> Option<Self> {
        let executor = launch.executor();
        (executor.strategy == "rtc").then(|| parse_params(&executor.params).unwrap_or_default())
    }

    /// The guidance weight at paper time `tau` (0 noise, 1 data):
    /// `min(beta, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2)`, beta at tau = 0.
    pub fn guidance_weight(&self, tau: f64) -> f64 {
        let beta = self.max_guidance_weight;
        if tau <= 0.0 {
            return beta;
        }
        let inv_r2 = (tau * tau + (1.0 - tau) * (1.0 - tau)) / ((1.0 - tau) * (1.0 - tau));
        ((1.0 - tau) / tau * inv_r2).min(beta)
    }

    /// ΠGDM's weight of the likelihood score at a diffusion step with cumulative
    /// alpha `alpha_bar`: `min(beta, 1 / r²)`, r² = 1 - alpha_bar (beta at alpha_bar = 1).
    pub fn diffusion_guidance_weight(&self, alpha_bar: f64) -> f64 {
        let beta = self.max_guidance_weight;
        if alpha_bar >= 1.0 {
            return beta;
        }
        (1.0 / (1.0 - alpha_bar)).min(beta)
    }
}

impl StrategyKind for RtcStrategy {
    fn name(&self) -> &'static str {
        "rtc"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<RtcParams>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<serde_json::Value, LaunchError> {
        let params: RtcParams = table.parse()?;
        if !(params.max_guidance_weight.is_finite() && params.max_guidance_weight >= 0.0) {
            return Err(table.error_at(
                "max_guidance_weight",
                format!(
                    "must be finite and at least 0, found {}",
                    params.max_guidance_weight
                ),
            ));
        }
        let launch = table.launch();
        if !launch.policy().real_time_chunking() {
            return Err(launch.error_at(
                "execution.strategy",
                format!(
                    "real-time chunking guides a flow or diffusion policy's sampler; \
                     this policy (`{}`) cannot take the plan it continues",
                    launch.policy().kind()
                ),
            ));
        }
        let c = &launch.config;
        let horizon = launch.policy().horizon();
        let s = c.execution.replan_after;
        // The delay the simulated clock imposes, in actions.
        let ticks_per_action = c.control.rate_hz / c.execution.action_rate_hz;
        let d = (c.control.sim_inference_ticks as f64 / ticks_per_action).ceil() as usize;
        if d > s || s + d > horizon {
            return Err(launch.error_at(
                "execution.replan_after",
                format!(
                    "real-time chunking needs d <= s <= H - d: s = replan_after = {s}, H = {horizon}, \
                     d = {d} actions (control.sim_inference_ticks {} at {ticks_per_action} ticks per action)",
                    c.control.sim_inference_ticks
                ),
            ));
        }
        to_json(table, params)
    }

    fn build(
        &self,
        params: &serde_json::Value,
        p: &ExecutorParams,
    ) -> Result<Box<dyn Executor>, String> {
        let _: RtcParams = parse_params(params)?;
        Ok(Box::new(base(p, 0, p.replan_after)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::tests::chunk;

    fn params(horizon: usize, replan_after: usize) -> ExecutorParams {
        ExecutorParams {
            dim: 1,
            horizon,
            ticks_per_action: 10.0,
            replan_after,
            interpolation: Default::default(),
        }
    }

    fn build(
        kind: &dyn StrategyKind,
        json: serde_json::Value,
        p: ExecutorParams,
    ) -> Box<dyn Executor> {
        let mut executor = kind.build(&json, &p).unwrap();
        executor.hold(&[0.0]);
        executor
    }

    /// The plan at the action times of a chunk requested at `now` (on the action
    /// grid: the queued actions themselves).
    fn planned(executor: &dyn Executor, now: u64) -> Vec<f64> {
        let mut out = [0.0; 32];
        let rows = executor.committed(now, &mut out);
        out[..rows].to_vec()
    }

    fn assert_close(got: &[f64], expected: &[f64]) {
        assert_eq!(got.len(), expected.len(), "{got:?} vs {expected:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-12, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn thresholds_follow_lerobots_test() {
        assert_eq!(queue_threshold(0.5, 10), 5);
        assert_eq!(queue_threshold(0.29, 100), 29);
        assert_eq!(queue_threshold(0.0, 10), 0);
        assert_eq!(queue_threshold(0.7, 10), 7);
    }

    #[test]
    fn synchronous_runs_its_actions_from_arrival_then_holds_and_asks() {
        let mut ex = build(&SynchronousStrategy, serde_json::json!({}), params(4, 2));
        assert!(ex.wants_chunk(0));
        ex.requested(0);
        // Conditioned on tick 0, it arrives at tick 5: actions 0 and 1 run at 15, 25.
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0]), 5).unwrap();
        assert_close(&planned(ex.as_ref(), 5), &[1.0, 2.0]);
        assert!(
            (ex.target(10)[0] - 6.0 / 11.0).abs() < 1e-12,
            "from 0 at tick 4"
        );
        assert_eq!(ex.target(15)[0], 1.0);
        assert_eq!(ex.target(25)[0], 2.0);
        assert_eq!(ex.target(40)[0], 2.0, "holds while the policy thinks");
        assert!(!ex.wants_chunk(24));
        assert!(ex.wants_chunk(25));
        assert_eq!(ex.max_in_flight(), 1);
    }

    #[test]
    fn replace_with_a_threshold_asks_when_half_the_chunk_is_left() {
        let mut ex = build(
            &ReplaceStrategy,
            serde_json::json!({"chunk_size_threshold": 0.5}),
            params(10, 1),
        );
        ex.accept(&chunk(0, &[0.0; 10]), 1).unwrap();
        assert_eq!(ex.queued(49), 6);
        assert!(!ex.wants_chunk(49));
        assert!(ex.wants_chunk(50));
        // Conditioned on tick 50, arriving at tick 75: actions due at 60 and 70
        // passed while it was computed and are dropped.
        ex.accept(
            &chunk(50, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]),
            75,
        )
        .unwrap();
        assert_close(
            &planned(ex.as_ref(), 70),
            &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        );
        // The target starts from the previous one (0) and heads for action 2 (tick 80).
        assert!((ex.target(75)[0] - 3.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn aggregate_combines_overlapping_timesteps_as_lerobot_does() {
        // Old chunk due at 10, 20, 30, 40; the new one (conditioned on tick 20,
        // arriving at 25) at 30, 40, 50, 60: 30 and 40 overlap.
        for (name, expected) in [
            (
                "weighted_average",
                [0.3 * 3.0 + 0.7 * 10.0, 0.3 * 4.0 + 0.7 * 20.0],
            ),
            ("latest_only", [10.0, 20.0]),
            ("average", [0.5 * 3.0 + 0.5 * 10.0, 0.5 * 4.0 + 0.5 * 20.0]),
            (
                "conservative",
                [0.7 * 3.0 + 0.3 * 10.0, 0.7 * 4.0 + 0.3 * 20.0],
            ),
        ] {
            let mut ex = build(
                &AggregateStrategy,
                serde_json::json!({"aggregate_fn": name}),
                params(4, 1),
            );
            ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0]), 1).unwrap();
            ex.accept(&chunk(20, &[10.0, 20.0, 30.0, 40.0]), 25)
                .unwrap();
            let got = planned(ex.as_ref(), 20);
            assert_close(&got, &[expected[0], expected[1], 30.0, 40.0]);
        }
    }

    #[test]
    fn aggregate_drops_what_passed_and_keeps_several_requests_in_flight() {
        let mut ex = build(&AggregateStrategy, serde_json::json!({}), params(4, 1));
        assert_eq!(ex.max_in_flight(), MAX_IN_FLIGHT);
        assert!(ex.wants_chunk(0));
        ex.requested(0);
        assert!(!ex.wants_chunk(5), "one request per action period");
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0]), 1).unwrap();
        // Threshold 0.5 of 4 actions: asks once 2 are left (after tick 20).
        assert!(!ex.wants_chunk(19));
        assert!(ex.wants_chunk(20));
        ex.requested(20);
        assert!(!ex.wants_chunk(29));
        assert!(ex.wants_chunk(30), "and again an action period later");
        // Conditioned on 20 but arriving at 35: its action due at 30 is dropped,
        // the one at 40 merged, 50 and 60 queued.
        ex.accept(&chunk(20, &[10.0, 20.0, 30.0, 40.0]), 35)
            .unwrap();
        assert_close(
            &planned(ex.as_ref(), 30),
            &[0.3 * 4.0 + 0.7 * 20.0, 30.0, 40.0],
        );
        // An older chunk arriving after a newer one is refused.
        assert!(ex.accept(&chunk(10, &[0.0; 4]), 36).is_err());
    }

    #[test]
    fn temporal_ensemble_weighs_every_prediction_of_a_timestep() {
        let m = 0.5_f64;
        let mut ex = build(
            &TemporalEnsembleStrategy,
            serde_json::json!({"m": m}),
            params(4, 1),
        );
        ex.accept(&chunk(0, &[1.0, 2.0, 3.0, 4.0]), 1).unwrap();
        ex.accept(&chunk(10, &[5.0, 6.0, 7.0, 8.0]), 11).unwrap();
        ex.accept(&chunk(20, &[9.0, 10.0, 11.0, 12.0]), 21).unwrap();
        // ACT: weights exp(-m * i) over the predictions, oldest first, normalized.
        let act = |predictions: &[f64]| {
            let weights: Vec<f64> = (0..predictions.len())
                .map(|i| (-m * i as f64).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            predictions
                .iter()
                .zip(&weights)
                .map(|(p, w)| p * w)
                .sum::<f64>()
                / total
        };
        assert_close(
            &planned(ex.as_ref(), 20),
            &[
                act(&[3.0, 6.0, 9.0]),
                act(&[4.0, 7.0, 10.0]),
                act(&[8.0, 11.0]),
                act(&[12.0]),
            ],
        );
        // A flush forgets every prediction.
        ex.flush(&[0.0], 22);
        ex.accept(&chunk(22, &[1.0, 2.0, 3.0, 4.0]), 23).unwrap();
        assert_close(&planned(ex.as_ref(), 22), &[1.0, 2.0, 3.0, 4.0]);
        // A request every replan_after actions.
        ex.requested(23);
        assert!(!ex.wants_chunk(32));
        assert!(ex.wants_chunk(33));
    }

    #[test]
    fn prefix_weights_follow_the_papers_soft_mask() {
        // The reference implementation's example: start 2, end 6, total 10
        // (d = 2, s = 4, H = 10): 1 1 4/5 3/5 2/5 1/5 0 0 0 0.
        let linear: Vec<f64> = (0..10)
            .map(|i| PrefixSchedule::Linear.weight(i, 2, 4, 10))
            .collect();
        let expected = [1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0, 0.0];
        for (w, e) in linear.iter().zip(expected) {
            assert!((w - e).abs() < 1e-12, "{linear:?}");
        }
        let e = std::f64::consts::E;
        for (i, w) in expected.into_iter().enumerate() {
            let exp = PrefixSchedule::Exp.weight(i, 2, 4, 10);
            assert!((exp - w * (w.exp() - 1.0) / (e - 1.0)).abs() < 1e-12);
        }
        assert_eq!(PrefixSchedule::Zeros.weight(1, 2, 4, 10), 1.0);
        assert_eq!(PrefixSchedule::Zeros.weight(2, 2, 4, 10), 0.0);
        assert_eq!(PrefixSchedule::Ones.weight(5, 2, 4, 10), 1.0);
        assert_eq!(PrefixSchedule::Ones.weight(6, 2, 4, 10), 0.0);
        // A delay past H - s: the end wins (start pushed down to it).
        assert_eq!(PrefixSchedule::Linear.weight(5, 8, 4, 10), 1.0);
        assert_eq!(PrefixSchedule::Linear.weight(6, 8, 4, 10), 0.0);
    }

    #[test]
    fn guidance_weight_is_clipped_and_beta_at_the_start() {
        let rtc = RtcParams::default();
        assert_eq!(rtc.guidance_weight(0.0), 5.0);
        // tau = 0.5: (1 - tau) / tau = 1, inv_r2 = 0.5 / 0.25 = 2.
        assert!((rtc.guidance_weight(0.5) - 2.0).abs() < 1e-12);
        // tau = 0.9: 0.111 * 82 = 9.1, clipped.
        assert_eq!(rtc.guidance_weight(0.9), 5.0);
        let off = RtcParams {
            max_guidance_weight: 0.0,
            ..RtcParams::default()
        };
        assert_eq!(off.guidance_weight(0.3), 0.0);
        // Diffusion: 1 / (1 - alpha_bar), clipped; pure noise weighs 1.
        assert_eq!(rtc.diffusion_guidance_weight(0.0), 1.0);
        assert!((rtc.diffusion_guidance_weight(0.5) - 2.0).abs() < 1e-12);
        assert_eq!(rtc.diffusion_guidance_weight(0.9), 5.0);
        assert_eq!(rtc.diffusion_guidance_weight(1.0), 5.0);
        assert_eq!(off.diffusion_guidance_weight(0.5), 0.0);
    }

    #[test]
    fn bad_parameters_are_refused_at_build() {
        let p = params(4, 2);
        assert!(
            AggregateStrategy
                .build(&serde_json::json!({"aggregate_fn": "median"}), &p)
                .is_err()
        );
        assert!(
            TemporalEnsembleStrategy
                .build(&serde_json::json!({"k": 1}), &p)
                .is_err()
        );
        assert!(
            SynchronousStrategy
                .build(&serde_json::json!({"first_action": 3}), &p)
                .is_err()
        );
        for kind in [
            &ReplaceStrategy as &dyn StrategyKind,
            &SynchronousStrategy,
            &AggregateStrategy,
            &TemporalEnsembleStrategy,
        ] {
            assert!(
                kind.build(&serde_json::Value::Null, &p).is_ok(),
                "{}",
                kind.name()
            );
        }
    }
}
