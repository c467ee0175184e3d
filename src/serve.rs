//! `reflex serve LAUNCH`: the launch file's policy, with its chunk stages
//! (action targets, V-GPS, DSRL), answering inference requests from other
//! machines in openpi's websocket protocol (`[serve]`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use reflex_openpi::keys::Layout;
use reflex_openpi::section::Protocol;
use reflex_openpi::server::ServerConfig;
use reflex_openpi::service::{PolicyService, ServedModel};
use reflex_openpi::{ObservationKeys, ServeConfig};
use reflex_policies::config::{ObservationSource, inputs_of};
use reflex_runtime::policy::ChunkPipeline;
use zenoh::Wait;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Launch file whose policy to serve (`[serve]` says how).
    pub launch: PathBuf,
    /// Serve this protocol instead of `[serve] protocol`.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Listen here instead of `[serve] listen` (openpi: ADDR:PORT, port 0 for
    /// any free port, printed) or `[zenoh] listen` (zenoh: an endpoint such as
    /// tcp/0.0.0.0:7448).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Override a launch-file field.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProtocolArg {
    Openpi,
    Zenoh,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let launch = crate::load_launch(Some(&args.launch), &args.overrides)?;
    let mut config = launch
        .section::<ServeConfig>("serve")
        .cloned()
        .unwrap_or_else(|| unreachable!("[serve] is registered"));
    match args.protocol {
        Some(ProtocolArg::Openpi) => config.protocol = Protocol::Openpi,
        Some(ProtocolArg::Zenoh) => config.protocol = Protocol::Zenoh,
        None => {}
    }
    if config.protocol == Protocol::Zenoh {
        // reflex to reflex: every camera and stream under its own name.
        config.keys = ObservationKeys::by_name(&Layout::of(&launch));
        reflex_zenoh::bus::check_exact_key(&config.key)
            .map_err(|e| launch.error_at("serve.key", e))?;
    }
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
    let api_key = reflex_openpi::api_key_from_env(
        &launch,
        "serve.api_key_env",
        config.api_key_env.as_deref(),
    )?;
    let models = crate::run::model_files(&launch)?;
    let loaded = crate::load_policy(&launch)?;
    let stages = launch
        .chunk_stages()
        .map_err(|e| anyhow::anyhow!("cannot build the chunk stages: {e}"))?;
    let pipeline = ChunkPipeline::new(loaded.policy, stages);
    let served = ServedModel {
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
        rate_hz: launch.config.control.rate_hz,
        action_rate_hz: launch.config.execution.action_rate_hz,
        real_time_chunking: launch.policy().real_time_chunking(),
    };
    let started = format!(
        "reflex serve: {} policy of {} on {} ({:.0} ms warm-up)",
        launch.policy().kind(),
        launch.config.robot.name,
        loaded.provider,
        loaded.warm_up_ms,
    );
    if config.protocol == Protocol::Zenoh {
        let service = PolicyService::new(&launch, config.keys.clone(), pipeline, served)
            .with_image_decoder(reflex_remote::jpeg::decode);
        return serve_zenoh(&launch, &config, args.listen, service, &started);
    }
    let listen = args.listen.unwrap_or_else(|| config.listen.clone());
    let listener =
        TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let service = PolicyService::new(&launch, config.keys.clone(), pipeline, served);
    println!(
        "{started}, openpi protocol on ws://{address}{}",
        if api_key.is_some() {
            " (Api-Key required)"
        } else {
            ""
        }
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let service = Arc::new(service);
    spawn_status(&service, config.status_interval_s)?;
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

/// Answers on `[serve] key` in the session `[zenoh]` describes (its TLS and
/// access control apply), listening on `listen` instead of `[zenoh] listen`.
fn serve_zenoh(
    launch: &reflex_runtime::launch::Launch,
    config: &ServeConfig,
    listen: Option<String>,
    service: PolicyService,
    started: &str,
) -> anyhow::Result<ExitCode> {
    let mut zenoh = reflex_zenoh::config(launch);
    if let Some(endpoint) = listen {
        reflex_zenoh::bus::check_endpoint(&endpoint)
            .map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
        zenoh.listen = vec![endpoint];
    }
    let session = zenoh::open(reflex_zenoh::bus::zenoh_config(&zenoh, &launch.base_dir)?)
        .wait()
        .map_err(|e| anyhow::anyhow!("cannot open the zenoh session on {:?}: {e}", zenoh.listen))?;
    println!(
        "{started}, zenoh protocol on `{}` (listening on {})",
        config.key,
        zenoh.listen.join(", ")
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let service = Arc::new(service);
    spawn_status(&service, config.status_interval_s)?;
    reflex_remote::server::serve(&session, &config.key, service)
        .map_err(|e| anyhow::anyhow!("zenoh: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn spawn_status(service: &Arc<PolicyService>, interval: f64) -> std::io::Result<()> {
    if interval > 0.0 {
        let service = service.clone();
        std::thread::Builder::new()
            .name("reflex-serve-status".into())
            .spawn(move || status_lines(&service, interval))?;
    }
    Ok(())
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
