//! `reflex demos`: scripted demonstrations on the simulated arm, written as `.npy`
//! files of exactly the inputs the policy will see (same renderer, same
//! preprocessing) and the expert's action chunks. `policies/export/train_sim_reach.py`
//! trains on them.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reflex_drivers::sim_arm::{SimArmSpec, SimWorld};
use reflex_drivers::sim_senses::{Hearing, Touch};
use reflex_policies::config::ChunkPolicyConfig;
use reflex_policies::preprocess::InputMapper;
use reflex_runtime::types::{Image, JointState, Observation, TensorSample};

#[derive(Args)]
pub struct DemoArgs {
    /// Launch file (default: the embedded launch/sim_arm.toml).
    launch: Option<PathBuf>,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 500)]
    episodes: usize,
    /// Chunks recorded per episode, one per action period.
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// Expert joint speed, rad/s.
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    speed: f64,
    /// Uniform noise added to executed actions, rad (widens the visited states).
    #[arg(long, default_value_t = 0.05, value_parser = non_negative)]
    noise: f64,
    /// Fraction of episodes in which the expert reaches for the target's mirror
    /// image across the x axis instead of the target (a flawed demonstrator: the
    /// policy trained on them is bimodal, and some of its samples fail).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    mistakes: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override a launch-file field, e.g. `--set drivers[0].episode_seconds=4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn number(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("`{text}` is not a finite number")),
    }
}

fn positive(text: &str) -> Result<f64, String> {
    number(text).and_then(|x| match x > 0.0 {
        true => Ok(x),
        false => Err(format!("must be positive, found {text}")),
    })
}

fn fraction(text: &str) -> Result<f64, String> {
    number(text).and_then(|x| match (0.0..=1.0).contains(&x) {
        true => Ok(x),
        false => Err(format!("must be in [0, 1], found {text}")),
    })
}

fn non_negative(text: &str) -> Result<f64, String> {
    number(text).and_then(|x| match x >= 0.0 {
        true => Ok(x),
        false => Err(format!("must be zero or positive, found {text}")),
    })
}

pub fn record(args: DemoArgs) -> anyhow::Result<()> {
    let launch = crate::load_launch(args.launch.as_ref(), &args.overrides)?;
    let c = &launch.config;
    let Some(arm) = launch
        .arm()
        .and_then(|d| d.as_any().downcast_ref::<SimArmSpec>())
        .map(|spec| &spec.config)
    else {
        bail!("demos need a `sim_arm` driver")
    };
    let Some(camera) = &arm.camera else {
        bail!("demos need the sim arm's camera")
    };
    let Some(policy) = launch.policy().as_any().downcast_ref::<ChunkPolicyConfig>() else {
        bail!("demos train a `chunk` policy; this launch file has another kind")
    };
    let horizon = policy.actions.horizon;
    let joints = c.robot.joints.len();
    let action_dt = 1.0 / c.execution.action_rate_hz;
    let physics_dt = 1.0 / arm.physics_hz;
    let physics_steps = (action_dt / physics_dt).round() as usize;
    let mut mapper = InputMapper::new(
        &policy.inputs,
        &launch.camera_names(),
        &launch.tensor_names(),
    )
    .map_err(anyhow::Error::msg)?;
    let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); mapper.inputs.len()];
    let mut actions = Vec::new();
    // The arm's extra senses, each at its place among the launch file's tensor
    // streams (the arm is the only driver of a demo launch file).
    let tensor_names = launch.tensor_names();
    let position = |name: &str| tensor_names.iter().position(|n| n == name);
    let mut hearing = (arm.sound.as_ref()).map(|c| (Hearing::new(c, args.seed), position(&c.name)));
    let touch = (arm.touch.as_ref()).map(|c| (Touch::new(c), position(&c.name)));
    let mut obs = Observation {
        images: vec![Image::black(camera.width, camera.height)],
        tensors: (launch.streams.iter())
            .filter(|s| s.is_tensor())
            .map(|s| TensorSample::zeros(s.kind.values()))
            .collect(),
        ..Observation::of_joints(0, JointState::empty(joints))
    };
    let mut samples = 0;
    for episode in 0..args.episodes {
        let mut world = SimWorld::new(
            arm,
            &c.robot.joints,
            args.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(episode as u64),
        );
        let start = world.random_configuration();
        world.set_positions(&start);
        world.new_target();
        // Drawn only when asked for, so that demonstrations without mistakes
        // stay those of earlier versions.
        let goal = match args.mistakes > 0.0 && world.noise(0.5) + 0.5 < args.mistakes {
            true => [world.target()[0], -world.target()[1]],
            false => world.target(),
        };
        for _ in 0..args.steps {
            let Some(chunk) = world.expert_chunk_to(goal, horizon, action_dt, args.speed) else {
                break;
            };
            world.state(0, &mut obs.joints);
            world.render(&mut obs.images[0]);
            if let Some((hearing, Some(i))) = &mut hearing {
                world.listen(hearing, world.time_ns(), &mut obs.tensors[*i].values);
                obs.tensors[*i].seq = 1;
            }
            if let Some((touch, Some(i))) = &touch {
                world.feel(touch, &mut obs.tensors[*i].values);
                obs.tensors[*i].seq = 1;
            }
            mapper.fill(&obs);
            for (store, input) in inputs.iter_mut().zip(&mapper.inputs) {
                store.extend_from_slice(&input.values);
            }
            actions.extend_from_slice(&chunk);
            samples += 1;
            let command: Vec<f64> = (0..joints)
                .map(|j| f64::from(chunk[j]) + world.noise(args.noise))
                .collect();
            world.set_command(&command);
            for _ in 0..physics_steps {
                world.step(physics_dt);
            }
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for (input, values) in mapper.inputs.iter().zip(&inputs) {
        let mut shape = vec![samples];
        shape.extend_from_slice(&input.shape[1..]);
        crate::npy::write_f32(
            &args.out.join(format!("{}.npy", input.name)),
            &shape,
            values,
        )?;
    }
    crate::npy::write_f32(
        &args.out.join("actions.npy"),
        &[samples, horizon, joints],
        &actions,
    )?;
    let meta = serde_json::json!({
        "samples": samples, "episodes": args.episodes, "horizon": horizon, "joints": joints,
        "action_rate_hz": c.execution.action_rate_hz, "expert_speed": args.speed, "noise": args.noise,
        "mistakes": args.mistakes, "seed": args.seed, "inputs": mapper.inputs.iter().map(|i| &i.name).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.out.join("meta.json"),
        serde_json::to_vec_pretty(&meta)?,
    )?;
    println!(
        "wrote {samples} samples from {} episodes to {}",
        args.episodes,
        args.out.display()
    );
    Ok(())
}
