//! `reflex serve LAUNCH`: the launch file's policy, with its chunk stages
//! (action targets, V-GPS, DSRL), answering inference requests from other
//! machines in openpi's websocket protocol (`[serve]`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use reflex_openpi::ServeConfig;
use reflex_openpi::server::ServerConfig;
use reflex_openpi::service::{PolicyService, ServedModel};
use reflex_policies::config::{ObservationSource, inputs_of};
use reflex_runtime::policy::ChunkPipeline;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Launch file whose policy to serve (`[serve]` says how).
    pub launch: PathBuf,
    /// Listen here instead of `[serve] listen` (port 0: any free port; the
    /// address is printed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Override a launch-file field.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let launch = crate::load_launch(Some(&args.launch), &args.overrides)?;
    let config = launch
        .section::<ServeConfig>("serve")
        .cloned()
        .unwrap_or_else(|| unreachable!("[serve] is registered"));
    config.keys.check(&launch, "serve.keys")?;
    if launch.policy().history() > 1 {
        return Err(launch
            .error_at(
                "policy",
                format!(
                    "conditions on {} observations; a served policy sees one per request",
                    launch.policy().history()
                ),
            )
            .into());
    }
    // Every camera the policy must see needs a key to arrive under.
    for input in inputs_of(launch.policy()).unwrap_or_default() {
        if let ObservationSource::Camera(camera) = &input.source
            && !input.optional
            && !config.keys.images.contains_key(camera)
        {
            return Err(launch
                .error_at(
                    "serve.keys.images",
                    format!(
                        "maps no key to camera `{camera}`, which input `{}` reads (e.g. \
                         {camera} = \"observation/image\")",
                        input.name
                    ),
                )
                .into());
        }
    }
    let api_key = match &config.api_key_env {
        None => None,
        Some(var) => Some(std::env::var(var).map_err(|_| {
            launch.error_at(
                "serve.api_key_env",
                format!("the environment variable `{var}` is not set"),
            )
        })?),
    };
    let models = crate::run::model_files(&launch)?;
    let loaded = crate::load_policy(&launch)?;
    let stages = launch
        .chunk_stages()
        .map_err(|e| anyhow::anyhow!("cannot build the chunk stages: {e}"))?;
    let pipeline = ChunkPipeline::new(loaded.policy, stages);
    let listen = args.listen.unwrap_or_else(|| config.listen.clone());
    let listener =
        TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let service = PolicyService::new(
        &launch,
        config.keys.clone(),
        pipeline,
        ServedModel {
            robot: launch.config.robot.name.clone(),
            policy_kind: launch.policy().kind().to_string(),
            joints: launch
                .config
                .robot
                .joints
                .iter()
                .map(|j| j.name.clone())
                .collect(),
            models,
        },
    );
    println!(
        "reflex serve: {} policy of {} on {} ({:.0} ms warm-up), openpi protocol on ws://{address}{}",
        launch.policy().kind(),
        launch.config.robot.name,
        loaded.provider,
        loaded.warm_up_ms,
        if api_key.is_some() {
            " (Api-Key required)"
        } else {
            ""
        }
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let service = Arc::new(service);
    if config.status_interval_s > 0.0 {
        let (service, interval) = (service.clone(), config.status_interval_s);
        std::thread::Builder::new()
            .name("reflex-serve-status".into())
            .spawn(move || status_lines(&service, interval))?;
    }
    reflex_openpi::server::serve(
        listener,
        service,
        ServerConfig {
            api_key,
            max_connections: config.max_connections,
            ..ServerConfig::default()
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Every `interval` seconds in which something was served: one line on stderr.
fn status_lines(service: &PolicyService, interval: f64) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        let mut report = service.take_report();
        if report.infer_ms.is_empty() && report.errors == 0 {
            continue;
        }
        let (p50, p99) = match report.infer_ms.is_empty() {
            true => (0.0, 0.0),
            false => (
                crate::infer::percentile(&mut report.infer_ms, 0.5),
                crate::infer::percentile(&mut report.infer_ms, 0.99),
            ),
        };
        eprintln!(
            "reflex serve: {} requests ({} in the last {interval} s), server time p50 {p50:.2} ms \
             p99 {p99:.2} ms, {} errors",
            report.total,
            report.infer_ms.len(),
            report.errors
        );
    }
}
