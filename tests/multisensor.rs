//! The task where the extra senses matter (launch/sim_arm_multisensor.toml): two
//! identical red targets, only the true one sounds. The trained policy
//! (policies/models/sim_multisensor.onnx, trained on demonstrations recorded by
//! `reflex demos`) must reach the true target over 48 seeded episodes with all its
//! senses, and must not with the sound shuffled across episodes (negative
//! control) or the extra senses masked.

mod common;

use common::{task_success, wilson_interval};

const LAUNCH: &str = "launch/sim_arm_multisensor.toml";

/// Episodes reached and run over `seeds` x 12 episodes (5 s each, simulated clock).
fn success(label: &str, seeds: std::ops::Range<u64>, sets: &[&str]) -> (usize, usize) {
    task_success(LAUNCH, &format!("multisensor-{label}"), seeds, 60, sets)
}

#[test]
fn hearing_finds_the_target_vision_cannot_tell_apart() {
    let all = success("all", 1..5, &[]);
    let shuffled = success("shuffled", 1..5, &["drivers[0].sound.shuffle=true"]);
    let masked = success(
        "masked",
        1..5,
        &["streams.sound.masked=true", "streams.touch.masked=true"],
    );
    eprintln!("all senses {all:?}, sound shuffled {shuffled:?}, sound and touch masked {masked:?}");
    assert_eq!(all.1, 48);
    // Measured 46/48 with all senses, 21/48 shuffled (chance: one of two
    // identical targets), 0/48 masked.
    assert!(all.0 >= 40, "all senses: {all:?}");
    // At 95% confidence, hearing beats chance (one of two targets) and the controls.
    let (all_low, _) = wilson_interval(all);
    let (_, shuffled_high) = wilson_interval(shuffled);
    assert!(
        all_low > 0.5 && all_low > shuffled_high,
        "{all:?} vs {shuffled:?}"
    );
    assert!(
        shuffled.0 <= 32 && shuffled.0 + 10 <= all.0,
        "the shuffled sound must not find the target: {shuffled:?} vs {all:?}"
    );
    assert!(
        masked.0 <= 24,
        "without hearing and touch: {masked:?} vs {all:?}"
    );
}
