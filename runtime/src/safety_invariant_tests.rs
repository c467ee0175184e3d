//! The command invariant, as property tests through the real tick ([`TickCore`]:
//! state validation, executor, operator requests, safety filter) and through the
//! filter alone (for targets the executor never lets through, such as NaN).
//!
//! Every command is checked by finite differences of the published positions:
//! finite, inside the position limits, velocity, acceleration and jerk within the
//! limits, and every latched stop at rest within the filter's stop bound. The
//! mutation tests at the end break one guarantee at a time and require the same
//! properties to find a counterexample: the properties can fail.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use super::{Motion, Mutant, SafetyFilter};
use crate::control::{Request, TickCore, TickParams};
use crate::launch::{JointConfig, SafetyConfig};
use crate::types::{ActionChunk, JointState, MAX_JOINTS};

const JOINTS: usize = 2;
const HORIZON: usize = 5;

#[derive(Debug, Clone)]
struct Setup {
    joints: Vec<JointConfig>,
    rate_hz: f64,
    /// Where the arm is at start, as a fraction of each joint's range.
    start: [f64; JOINTS],
}

fn setup() -> impl Strategy<Value = Setup> {
    let joint = (
        -3.0..-0.3f64,
        0.3..3.0f64,
        0.2..3.0f64,
        1.0..20.0f64,
        prop::option::weighted(0.7, 20.0..800.0f64),
    )
        .prop_map(|(lo, hi, velocity, acceleration, jerk)| JointConfig {
            name: "j".into(),
            position: [lo, hi],
            velocity,
            acceleration,
            jerk,
        });
    (
        prop::collection::vec(joint, JOINTS),
        prop::sample::select(vec![50.0, 100.0, 500.0]),
        [0.05..0.95f64, 0.05..0.95f64],
    )
        .prop_map(|(joints, rate_hz, start)| Setup {
            joints,
            rate_hz,
            start,
        })
}

/// What the robot side sends on one tick.
#[derive(Debug, Clone)]
enum StateEvent {
    /// Follows the last command, off by `noise`, moving at `velocity`.
    Good {
        noise: f64,
        velocity: f64,
    },
    /// The same sample again (no news: it ages).
    Silent,
    NonFinite(f64),
    FarOut(f64),
    /// An old sample replayed.
    Reordered,
    /// The robot driver restarted.
    NewEpoch,
    WrongJointCount,
}

fn state_event() -> impl Strategy<Value = StateEvent> {
    prop_oneof![
        8 => (-0.03..0.03f64, -0.2..0.2f64)
            .prop_map(|(noise, velocity)| StateEvent::Good { noise, velocity }),
        3 => Just(StateEvent::Silent),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
            .prop_map(StateEvent::NonFinite),
        1 => prop::sample::select(vec![10.0, -50.0, 1e300]).prop_map(StateEvent::FarOut),
        1 => Just(StateEvent::Reordered),
        1 => Just(StateEvent::NewEpoch),
        1 => Just(StateEvent::WrongJointCount),
    ]
}

#[derive(Debug, Clone)]
enum ChunkEvent {
    Values(Vec<f32>),
    Huge(f32),
    NonFinite,
    WrongShape,
}

fn chunk_event() -> impl Strategy<Value = ChunkEvent> {
    prop_oneof![
        6 => prop::collection::vec(-4.0..4.0f32, HORIZON * JOINTS).prop_map(ChunkEvent::Values),
        1 => prop::sample::select(vec![1e30f32, -1e30, f32::MAX]).prop_map(ChunkEvent::Huge),
        1 => Just(ChunkEvent::NonFinite),
        1 => Just(ChunkEvent::WrongShape),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop::sample::select(vec![Request::Estop, Request::Rearm, Request::Resume])
}

#[derive(Debug, Clone)]
struct TickEvent {
    state: StateEvent,
    chunk: Option<ChunkEvent>,
    request: Option<Request>,
}

fn tick_events() -> impl Strategy<Value = Vec<TickEvent>> {
    let event = (
        state_event(),
        prop::option::weighted(0.08, chunk_event()),
        prop::option::weighted(0.04, request()),
    )
        .prop_map(|(state, chunk, request)| TickEvent {
            state,
            chunk,
            request,
        });
    prop::collection::vec(event, 50..400)
}

/// Checks consecutive commands by finite differences at the control period.
struct InvariantCheck {
    joints: Vec<JointConfig>,
    dt: f64,
    /// The last three published positions per joint (oldest first).
    history: Vec<[f64; 3]>,
    stop_bound: usize,
    /// Commands since the stop latched, when latched and not yet at rest.
    stopping_for: Option<usize>,
}

impl InvariantCheck {
    fn new(joints: &[JointConfig], dt: f64, start: &[f64], stop_bound: usize) -> Self {
        Self {
            joints: joints.to_vec(),
            dt,
            // Starting at rest: two earlier commands equal to the start.
            history: start.iter().map(|p| [*p; 3]).collect(),
            stop_bound,
            stopping_for: None,
        }
    }

    fn check(&mut self, command: &[f64], latched: bool) -> Result<(), TestCaseError> {
        let dt = self.dt;
        let mut moving = false;
        for (j, joint) in self.joints.iter().enumerate() {
            let p = command[j];
            prop_assert!(p.is_finite(), "joint {j}: command {p}");
            let [lo, hi] = joint.position;
            prop_assert!(p >= lo && p <= hi, "joint {j}: {p} outside [{lo}, {hi}]");
            let [p0, p1, p2] = self.history[j];
            let (v, v1, v0) = ((p - p2) / dt, (p2 - p1) / dt, (p1 - p0) / dt);
            let (a, a1) = ((v - v1) / dt, (v1 - v0) / dt);
            let jerk = (a - a1) / dt;
            // Rounding of positions near |p| shows up divided by dt, dt^2, dt^3.
            let ulp = 8.0 * f64::EPSILON * lo.abs().max(hi.abs());
            let (tv, ta, tj) = (ulp / dt, 2.0 * ulp / (dt * dt), 4.0 * ulp / (dt * dt * dt));
            let over = |x: f64, limit: f64, tol: f64| x.abs() > limit * (1.0 + 1e-9) + tol;
            prop_assert!(!over(v, joint.velocity, tv), "joint {j}: velocity {v}");
            prop_assert!(
                !over(a, joint.acceleration, ta),
                "joint {j}: acceleration {a} (limit {})",
                joint.acceleration
            );
            if let Some(limit) = joint.jerk {
                prop_assert!(
                    !over(jerk, limit, tj),
                    "joint {j}: jerk {jerk} (limit {limit})"
                );
            }
            moving |= p != p2;
            self.history[j] = [p1, p2, p];
        }
        self.stopping_for = match (latched, self.stopping_for) {
            (false, _) => None,
            (true, _) if !moving => None,
            (true, None) => Some(1),
            (true, Some(n)) => Some(n + 1),
        };
        if let Some(n) = self.stopping_for {
            prop_assert!(
                n <= self.stop_bound,
                "still moving {n} ticks after the stop latched (bound {})",
                self.stop_bound
            );
        }
        Ok(())
    }
}

fn params(setup: &Setup) -> TickParams {
    TickParams {
        joints: setup.joints.clone(),
        rate_hz: setup.rate_hz,
        max_state_age_ms: 50.0,
        estop_after_stale_ms: 200.0,
        horizon: HORIZON,
        action_rate_hz: setup.rate_hz / 5.0,
        replan_after: 2,
        interpolation: Default::default(),
        safety: SafetyConfig {
            estop_after_stale_ms: 200.0,
            ..SafetyConfig::default()
        },
        workspace: None,
        executor: crate::executor::ExecutorFactory::replace(),
        gripper: None,
        reset: None,
        tip: None,
    }
}

/// Runs one random episode through the real tick and checks every command.
fn tick_property(setup: &Setup, events: &[TickEvent], mutant: Mutant) -> Result<(), TestCaseError> {
    let p = params(setup);
    let mut core = TickCore::new(&p).unwrap();
    core.safety.mutate(mutant);
    let period_ns = (1e9 / setup.rate_hz) as u64;
    let mut start = [0.0; JOINTS];
    for (j, joint) in setup.joints.iter().enumerate() {
        let [lo, hi] = joint.position;
        start[j] = lo + setup.start[j] * (hi - lo);
    }
    core.start(&start, None)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut check = InvariantCheck::new(
        &setup.joints,
        1.0 / setup.rate_hz,
        &start,
        core.safety.stop_bound_ticks(),
    );
    let mut state = JointState::empty(JOINTS);
    (state.epoch, state.seq) = (1, 1);
    state.position[..JOINTS].copy_from_slice(&start);
    let mut previous = state;
    let mut chunk_id = 0;
    for (i, event) in events.iter().enumerate() {
        let tick = i as u64 + 1;
        let now_ns = tick * period_ns;
        let command = core.safety.command();
        let sent = match &event.state {
            StateEvent::Good { noise, velocity } => {
                previous = state;
                state.seq += 1;
                state.stamp_ns = now_ns;
                for j in 0..JOINTS {
                    state.position[j] = command[j] + noise;
                    state.velocity[j] = *velocity;
                }
                state
            }
            StateEvent::Silent => state,
            StateEvent::NonFinite(x) | StateEvent::FarOut(x) => {
                let mut bad = state;
                bad.seq += 1;
                bad.stamp_ns = now_ns;
                bad.position[i % JOINTS] = *x;
                bad
            }
            StateEvent::Reordered => previous,
            StateEvent::NewEpoch => {
                state.epoch += 1;
                state.seq = 1;
                state.stamp_ns = now_ns;
                state
            }
            StateEvent::WrongJointCount => {
                let mut bad = state;
                bad.seq += 1;
                bad.joints = JOINTS + 1;
                bad
            }
        };
        core.observe(&sent, now_ns);
        if let Some(chunk) = &event.chunk {
            chunk_id += 1;
            let mut c = ActionChunk::zeros(HORIZON, JOINTS);
            c.id = chunk_id;
            c.conditioned_on_tick = tick.saturating_sub(3);
            match chunk {
                ChunkEvent::Values(values) => c.actions.copy_from_slice(values),
                ChunkEvent::Huge(x) => c.actions.fill(*x),
                ChunkEvent::NonFinite => c.actions[3] = f32::NAN,
                ChunkEvent::WrongShape => c.horizon = HORIZON + 1,
            }
            let _ = core.apply_chunk(&c, tick);
        }
        if let Some(request) = event.request {
            let _ = core.operator(request, &sent, tick);
        }
        let (command, _) = core.step(tick, now_ns, &sent);
        let latched = core.safety.motion() == Motion::Latched;
        check.check(&command.position[..JOINTS], latched)?;
    }
    Ok(())
}

/// What the filter alone receives on one tick.
#[derive(Debug, Clone)]
enum FilterEvent {
    Target([f64; JOINTS]),
    NonFinite(f64),
    Stale,
    Estop,
    Rearm,
    Resume,
}

fn filter_events() -> impl Strategy<Value = Vec<FilterEvent>> {
    let event = prop_oneof![
        20 => [-5.0..5.0f64, -5.0..5.0f64].prop_map(FilterEvent::Target),
        2 => prop::sample::select(vec![f64::NAN, f64::INFINITY, -f64::INFINITY, 1e300])
            .prop_map(FilterEvent::NonFinite),
        2 => Just(FilterEvent::Stale),
        1 => Just(FilterEvent::Estop),
        1 => Just(FilterEvent::Rearm),
        1 => Just(FilterEvent::Resume),
    ];
    // Targets persist for a while, like a policy's.
    prop::collection::vec((event, 1..30usize), 5..40).prop_map(|runs| {
        runs.into_iter()
            .flat_map(|(e, n)| std::iter::repeat_n(e, n))
            .collect()
    })
}

/// Any target sequence, stale states and operator calls, straight into the filter.
fn filter_property(
    setup: &Setup,
    events: &[FilterEvent],
    mutant: Mutant,
) -> Result<(), TestCaseError> {
    let dt = 1.0 / setup.rate_hz;
    let config = SafetyConfig {
        estop_after_stale_ms: 200.0,
        ..SafetyConfig::default()
    };
    let mut f = SafetyFilter::new(&setup.joints, dt, &config);
    f.mutate(mutant);
    let mut start = [0.0; JOINTS];
    for (j, joint) in setup.joints.iter().enumerate() {
        let [lo, hi] = joint.position;
        start[j] = lo + setup.start[j] * (hi - lo);
    }
    f.arm(&start)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut check = InvariantCheck::new(&setup.joints, dt, &start, f.stop_bound_ticks());
    let mut target = start;
    for (i, event) in events.iter().enumerate() {
        let now_ns = (i as f64 * dt * 1e9) as u64;
        let mut fresh = true;
        let mut goal = target;
        match event {
            FilterEvent::Target(t) => {
                target = *t;
                goal = target;
            }
            FilterEvent::NonFinite(x) => goal[i % JOINTS] = *x,
            FilterEvent::Stale => fresh = false,
            FilterEvent::Estop => f.estop(),
            FilterEvent::Rearm => {
                let mut s = JointState::empty(JOINTS);
                s.seq = 1;
                s.position[..JOINTS].copy_from_slice(&f.command()[..JOINTS]);
                let _ = f.rearm(Some(&s));
            }
            FilterEvent::Resume => {
                let _ = f.resume();
            }
        }
        f.apply(&goal, fresh, now_ns);
        let command: [f64; MAX_JOINTS] = f.command();
        check.check(&command[..JOINTS], f.motion() == Motion::Latched)?;
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn every_command_through_the_tick_keeps_the_invariant() {
    let result = runner(1500).run(&(setup(), tick_events()), |(setup, events)| {
        tick_property(&setup, &events, Mutant::None)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn every_command_of_the_filter_keeps_the_invariant_for_any_target() {
    let result = runner(1500).run(&(setup(), filter_events()), |(setup, events)| {
        filter_property(&setup, &events, Mutant::None)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Each deliberately broken filter must be caught by one of the two properties.
#[test]
fn each_broken_guarantee_is_caught() {
    for mutant in [
        Mutant::NoPositionLimit,
        Mutant::NoVelocityLimit,
        Mutant::NoAccelerationLimit,
        Mutant::NoJerkLimit,
        Mutant::NoNanGuard,
        Mutant::NoStop,
    ] {
        let fast = |cases| {
            let mut r = runner(cases);
            // A counterexample is all we need: no shrinking.
            r = TestRunner::new(Config {
                max_shrink_iters: 0,
                ..r.config().clone()
            });
            r
        };
        let through_tick = fast(500).run(&(setup(), tick_events()), |(setup, events)| {
            tick_property(&setup, &events, mutant)
        });
        let caught = match through_tick {
            Err(TestError::Fail(why, _)) => Some(why.to_string()),
            _ => match fast(500).run(&(setup(), filter_events()), |(setup, events)| {
                filter_property(&setup, &events, mutant)
            }) {
                Err(TestError::Fail(why, _)) => Some(why.to_string()),
                _ => None,
            },
        };
        let Some(why) = caught else {
            panic!("{mutant:?}: no counterexample found: the properties cannot see it");
        };
        eprintln!("{mutant:?} caught: {why}");
    }
}

/// One tick of a robot with a gripper: a chunk (its gripper column anything from
/// NaN to huge) and maybe an operator request.
#[derive(Debug, Clone)]
struct GripperTick {
    gripper_action: Option<f64>,
    request: Option<Request>,
}

fn gripper_ticks() -> impl Strategy<Value = Vec<GripperTick>> {
    let action = prop_oneof![
        6 => -1.0..2.0f64,
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, -f64::INFINITY, 1e300, -1e300]),
    ];
    let request = prop_oneof![
        20 => Just(None),
        1 => Just(Some(Request::Estop)),
        1 => Just(Some(Request::Rearm)),
        1 => Just(Some(Request::Resume)),
    ];
    prop::collection::vec(
        (prop::option::weighted(0.3, action), request).prop_map(|(gripper_action, request)| {
            GripperTick {
                gripper_action,
                request,
            }
        }),
        20..200,
    )
}

/// The gripper's command through the real tick: finite, inside its range, moving
/// at most `max_speed`, and still while the arm is stopped or held. With `filtered`
/// false the raw executor target is checked instead, which must fail (the check can
/// see a violation).
fn gripper_property(
    range: [f64; 2],
    max_speed: f64,
    ticks: &[GripperTick],
    filtered: bool,
) -> Result<(), TestCaseError> {
    let joint = JointConfig {
        name: "j".into(),
        position: [-1.0, 1.0],
        velocity: 1.0,
        acceleration: 10.0,
        jerk: None,
    };
    let setup = Setup {
        joints: vec![joint.clone(), joint],
        rate_hz: 100.0,
        start: [0.5, 0.5],
    };
    let gripper = crate::gripper::GripperConfig {
        column: None,
        range,
        max_speed,
        mode: crate::gripper::GripperMode::Continuous,
        threshold: 0.5,
        open: None,
        closed: None,
    };
    let p = TickParams {
        gripper: Some(gripper),
        ..params(&setup)
    };
    let mut core = TickCore::new(&p).unwrap();
    core.start(&[0.0, 0.0], Some(range[0] - 5.0))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let max_step = max_speed / setup.rate_hz + 1e-12;
    let mut last = core
        .gripper
        .as_ref()
        .map(|g| g.command())
        .unwrap_or(f64::NAN);
    let mut state = JointState::empty(JOINTS);
    state.epoch = 1;
    for (i, t) in ticks.iter().enumerate() {
        let tick = i as u64 + 1;
        let now_ns = tick * 10_000_000;
        state.seq += 1;
        state.stamp_ns = now_ns;
        state.position[..JOINTS].copy_from_slice(&core.safety.command()[..JOINTS]);
        core.observe(&state, now_ns);
        if let Some(action) = t.gripper_action {
            let mut c = ActionChunk::zeros(HORIZON, JOINTS + 1);
            (c.id, c.conditioned_on_tick) = (tick, tick);
            for row in c.actions.chunks_mut(JOINTS + 1) {
                row[JOINTS] = action as f32;
            }
            let _ = core.apply_chunk(&c, tick);
        }
        if let Some(request) = t.request {
            let _ = core.operator(request, &state, tick);
        }
        let held = core.safety.motion() != Motion::Tracking;
        let (command, _) = core.step(tick, now_ns, &state);
        let value = if filtered {
            command.gripper.unwrap_or(f64::NAN)
        } else {
            core.executor.target(tick)[JOINTS]
        };
        prop_assert!(value.is_finite(), "tick {tick}: gripper command {value}");
        prop_assert!(
            (range[0]..=range[1]).contains(&value),
            "tick {tick}: {value} outside {range:?}"
        );
        prop_assert!(
            (value - last).abs() <= max_step,
            "tick {tick}: moved {} > {max_step}",
            (value - last).abs()
        );
        if held {
            prop_assert!(value == last, "tick {tick}: moved while the arm was held");
        }
        last = value;
    }
    Ok(())
}

#[test]
fn every_gripper_command_through_the_tick_is_finite_in_range_and_slow_enough() {
    let strategy = ((0.0..0.05f64, 0.06..0.2f64), 0.01..1.0f64, gripper_ticks());
    let result = runner(500).run(&strategy, |((lo, hi), speed, ticks)| {
        gripper_property([lo, hi], speed, &ticks, true)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Negative control: the executor's raw gripper targets break the same check.
    let unfiltered = runner(200).run(&strategy, |((lo, hi), speed, ticks)| {
        gripper_property([lo, hi], speed, &ticks, false)
    });
    assert!(
        matches!(unfiltered, Err(TestError::Fail(..))),
        "the check cannot see an unfiltered gripper"
    );
}
