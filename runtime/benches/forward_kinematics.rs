//! Forward kinematics as the safety filter calls it every tick: the tool position
//! of the 7-joint Panda-like fixture (tests/fixtures/arm7.urdf) and the workspace
//! box test on it.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use nalgebra::Vector3;
use reflex_runtime::robot_model::{RobotModel, WorkspaceBox};

fn forward_kinematics(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arm7.urdf");
    let model = RobotModel::from_file(&path, None).expect("arm7.urdf");
    let tool = model.chain.link_id("panda_hand_tcp").expect("tcp link");
    let q = [0.1, -0.4, 0.2, -2.0, 0.3, 1.6, 0.5];
    c.bench_function("link_position arm7 tcp", |b| {
        b.iter(|| model.chain.link_position(black_box(&q), black_box(tool)))
    });
    let workspace = WorkspaceBox {
        link: tool,
        min: Vector3::new(-0.8, -0.8, 0.0),
        max: Vector3::new(0.8, 0.8, 1.2),
    };
    c.bench_function("workspace contains arm7 tcp", |b| {
        b.iter(|| workspace.contains(&model.chain, black_box(&q)))
    });
}

criterion_group!(benches, forward_kinematics);
criterion_main!(benches);
