//! launch/sim_arm.urdf describes the simulated arm: the URDF chain's forward
//! kinematics puts the tool where the simulator's own planar kinematics puts the
//! end effector, on random configurations inside and beyond the joint limits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reflex_drivers::sim_arm::SimArmSpec;
use reflex_drivers::sim_arm::SimWorld;

#[test]
fn the_urdf_chain_matches_the_simulated_arm() {
    let launch = reflex::embedded_launch(&[]).expect("demo launch file");
    let model = launch.robot_model.as_ref().expect("the demo names a URDF");
    let arm = &(launch.drivers[0].as_any())
        .downcast_ref::<SimArmSpec>()
        .expect("a sim_arm driver")
        .config;
    let mut world = SimWorld::new(arm, &launch.config.robot.joints, 0);
    let tool = model.chain.link_id("tool").expect("tool link");
    let hand = model.chain.link_id("hand").expect("hand link");
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for _ in 0..1000 {
        let q: Vec<f64> = (0..3).map(|_| rng.random_range(-3.5..3.5)).collect();
        world.set_positions(&q);
        let [x, y] = world.effector();
        let p = model.chain.link_position(&q, tool);
        assert!(
            (p[0] - x).abs() < 1e-12 && (p[1] - y).abs() < 1e-12 && p[2] == 0.0,
            "q {q:?}: URDF {p:?}, sim ({x}, {y})"
        );
        // The wrist joint's frame is the last link point before the effector.
        let points = world.link_points();
        let h = model.chain.link_position(&q, hand);
        assert!((h[0] - points[2][0]).abs() < 1e-12 && (h[1] - points[2][1]).abs() < 1e-12);
    }
}

#[test]
fn the_urdf_limits_are_the_launch_files() {
    let launch = reflex::embedded_launch(&[]).expect("demo launch file");
    let joints = &launch.config.robot.joints;
    let limits: Vec<_> = joints
        .iter()
        .map(|j| (j.name.as_str(), j.position, j.velocity, j.acceleration))
        .collect();
    assert_eq!(
        limits,
        [
            ("shoulder", [-2.8, 2.8], 1.5, 8.0),
            ("elbow", [-2.8, 2.8], 1.5, 8.0),
            ("wrist", [-2.8, 2.8], 2.0, 10.0),
        ]
    );
}
