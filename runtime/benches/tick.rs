//! The tick's decision core in isolation: the state snapshot, the executor and
//! safety filter (`TickCore::step`), the command hand-off to the arm and bus
//! mailboxes and the recorder queue. The tick as it runs in a deployment (status,
//! histograms, recorder, drivers and inference all on) is measured by
//! `benches/real_tick.rs`, through `reflex run` itself.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use reflex_runtime::control::{TickCore, TickParams};
use reflex_runtime::launch::JointConfig;
use reflex_runtime::log::{LogEvent, TickRecord};
use reflex_runtime::mailbox::Mailbox;
use reflex_runtime::robot_model::{RobotModel, WorkspaceBox};
use reflex_runtime::safety::WorkspaceGuard;
use reflex_runtime::slot::latest_slot;
use reflex_runtime::types::{ActionChunk, JointState};

fn params(joints: usize) -> TickParams {
    TickParams {
        joints: (0..joints)
            .map(|j| JointConfig {
                name: format!("j{j}"),
                position: [-2.8, 2.8],
                velocity: 1.5,
                acceleration: 8.0,
                jerk: Some(400.0),
            })
            .collect(),
        rate_hz: 1000.0,
        max_state_age_ms: 50.0,
        estop_after_stale_ms: 500.0,
        safety: Default::default(),
        workspace: None,
        horizon: 50,
        action_rate_hz: 50.0,
        replan_after: 25,
        interpolation: Default::default(),
        executor: reflex_runtime::executor::ExecutorFactory::replace(),
        gripper: None,
        reset: None,
        tip: None,
    }
}

fn chunk(start: u64, joints: usize) -> ActionChunk {
    let mut chunk = ActionChunk::zeros(50, joints);
    for (i, a) in chunk.actions.iter_mut().enumerate() {
        *a = ((i / joints) as f32 * 0.01).sin();
    }
    chunk.conditioned_on_tick = start;
    chunk
}

fn bench_tick(c: &mut Criterion) {
    for joints in [7, 14] {
        let p = params(joints);
        let mut core = TickCore::new(&p).unwrap();
        let mut state = JointState::empty(joints);
        state.seq = 1;
        core.start(state.positions(), None).expect("a valid start");
        let (mut writer, mut reader) = latest_slot(&state);
        let arm = Mailbox::new(64);
        let bus = Mailbox::new(1024);
        let log: ArrayQueue<LogEvent> = ArrayQueue::new(1024);
        let mut tick = 0u64;
        core.apply_chunk(&chunk(0, joints), 0).unwrap();
        c.bench_function(&format!("tick_core_step/{joints}_joints"), |b| {
            b.iter(|| {
                tick += 1;
                if tick.is_multiple_of(1000) {
                    core.apply_chunk(&chunk(tick, joints), tick).unwrap();
                }
                state.stamp_ns = tick * 1_000_000;
                state.seq += 1;
                core.observe(black_box(&state), tick * 1_000_000);
                black_box(core.step(tick, tick * 1_000_000, black_box(&state)))
            })
        });
        c.bench_function(&format!("tick_without_inference/{joints}_joints"), |b| {
            b.iter(|| {
                tick += 1;
                if tick.is_multiple_of(1000) {
                    core.apply_chunk(&chunk(tick, joints), tick).unwrap();
                }
                // The driver thread's side, so the slot always has news.
                state.stamp_ns = tick * 1_000_000;
                state.seq += 1;
                writer.publish_with(|s| *s = state);
                let now = *reader.latest();
                core.observe(&now, tick * 1_000_000);
                let (command, flags) = core.step(tick, tick * 1_000_000, &now);
                arm.send(command);
                bus.send(command);
                let _ = log.push(LogEvent::Tick(TickRecord {
                    tick,
                    now_ns: 0,
                    state: now,
                    command,
                    flags,
                }));
                // The consumers' side, so the queues never fill.
                black_box(arm.try_recv());
                black_box(bus.try_recv());
                black_box(log.pop());
            })
        });
    }
}

/// Per-tick timings of `TickCore::observe` + `step` on a moving 7-joint arm, as a
/// distribution (criterion reports means; the loop's budget is about the tail).
fn tick_percentiles(_: &mut Criterion) {
    let joints = 7;
    let mut p = params(joints);
    // The 7-joint URDF arm, with a workspace box on its hand: forward kinematics
    // of the braking rest point runs every tick.
    let urdf = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/arm7.urdf");
    let model = RobotModel::from_file(urdf.as_ref(), None).expect("arm7.urdf");
    let link = model
        .chain
        .link_id(model.chain.link_names().last().unwrap_or(""))
        .unwrap();
    p.workspace = Some(WorkspaceGuard {
        chain: std::sync::Arc::new(model.chain.clone()),
        bounds: WorkspaceBox {
            link,
            min: [-2.0, -2.0, -2.0].into(),
            max: [2.0, 2.0, 2.0].into(),
        },
    });
    let mut core = TickCore::new(&p).unwrap();
    let mut state = JointState::empty(joints);
    state.seq = 1;
    core.start(state.positions(), None).expect("a valid start");
    let mut samples = Vec::with_capacity(200_000);
    for tick in 1..=200_000u64 {
        if tick % 50 == 1 {
            core.apply_chunk(&chunk(tick, joints), tick).unwrap();
        }
        state.seq += 1;
        state.stamp_ns = tick * 1_000_000;
        let started = std::time::Instant::now();
        core.observe(black_box(&state), tick * 1_000_000);
        black_box(core.step(tick, tick * 1_000_000, black_box(&state)));
        samples.push(started.elapsed().as_nanos() as u64);
        state.position = core.safety.command();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    println!(
        "tick_core (observe + step, safety filter with jerk limits, URDF workspace box), 7 joints, {} ticks: p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us",
        samples.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

criterion_group!(benches, bench_tick, tick_percentiles);
criterion_main!(benches);
