//! `reflex fast`: fit a FAST tokenizer, and encode / decode action chunks as JSON,
//! for checking reflex against other FAST implementations.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reflex_policies::fast::{self, DecodeMode, FastCodec};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum FastCommand {
    /// Fit a tokenizer on action chunks from an .npy file [N, T, D] or a reflex run log.
    Fit(FitArgs),
    /// Encode one chunk (JSON `[[...], ...]` or `{"actions": ...}`) to token ids.
    Encode {
        /// Directory with tokenizer.json and processor_config.json.
        #[arg(long)]
        tokenizer: PathBuf,
        /// JSON file (default: standard input).
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Decode token ids (JSON `[...]` or `{"ids": [...]}`) to a chunk.
    Decode {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        input: Option<PathBuf>,
        /// Pad missing trailing coefficients with zeros instead of rejecting.
        #[arg(long)]
        pad_missing: bool,
    },
}

#[derive(Args)]
pub struct FitArgs {
    /// .npy file of chunks [N, T, D], or a reflex run log (its applied chunks).
    #[arg(long)]
    input: PathBuf,
    /// T (read from the data when it has it).
    #[arg(long)]
    horizon: Option<usize>,
    /// D (read from the data when it has it).
    #[arg(long)]
    dim: Option<usize>,
    #[arg(long, default_value_t = 10.0)]
    scale: f64,
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    /// Output directory for tokenizer.json and processor_config.json.
    #[arg(long)]
    out: PathBuf,
}

fn read_input(path: Option<&Path>) -> anyhow::Result<Value> {
    let mut text = String::new();
    match path {
        Some(p) => {
            text = reflex_runtime::files::read_to_string(p, reflex_runtime::files::MAX_DATA_BYTES)
                .with_context(|| format!("cannot read {}", p.display()))?
        }
        None => {
            let limit = reflex_runtime::files::MAX_DATA_BYTES;
            std::io::stdin().take(limit + 1).read_to_string(&mut text)?;
            if text.len() as u64 > limit {
                anyhow::bail!(
                    "standard input is larger than the limit of {}",
                    reflex_runtime::files::human(limit)
                );
            }
        }
    }
    serde_json::from_str(&text).context("input is not JSON")
}

/// Chunks [N][T*D] and their shape, from an .npy file or a run log.
fn load_chunks(args: &FitArgs) -> anyhow::Result<(Vec<Vec<f64>>, usize, usize)> {
    if args.input.extension().is_some_and(|e| e == "npy") {
        let (shape, values) = crate::npy::read_f64(&args.input)?;
        let [n, t, d] = shape[..] else {
            bail!(
                "{} has shape {shape:?}, expected [N, T, D]",
                args.input.display()
            )
        };
        let chunks = values
            .chunks_exact(t * d)
            .map(<[f64]>::to_vec)
            .collect::<Vec<_>>();
        debug_assert_eq!(chunks.len(), n);
        return Ok((chunks, t, d));
    }
    let records = reflex_runtime::log::read_log(&args.input)
        .with_context(|| format!("{} is neither .npy nor a reflex log", args.input.display()))?
        .records;
    let mut shape = None;
    let mut chunks = Vec::new();
    for record in records {
        if let reflex_runtime::log::Record::Chunk {
            accepted: true,
            chunk,
            ..
        } = record
        {
            shape.get_or_insert((chunk.horizon, chunk.dim));
            chunks.push(chunk.actions.iter().map(|&a| f64::from(a)).collect());
        }
    }
    let Some((t, d)) = shape else {
        bail!("{} holds no applied chunks", args.input.display())
    };
    Ok((chunks, t, d))
}

pub fn run(command: FastCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        FastCommand::Fit(args) => {
            let (chunks, t, d) = load_chunks(&args)?;
            let (t, d) = (args.horizon.unwrap_or(t), args.dim.unwrap_or(d));
            let codec = fast::fit(&chunks, t, d, args.scale, args.vocab_size)?;
            codec.save(&args.out)?;
            println!(
                "fitted on {} chunks of [{t}, {d}]: min_token {}, vocab {}; wrote {}",
                chunks.len(),
                codec.config.min_token,
                args.vocab_size,
                args.out.display()
            );
        }
        FastCommand::Encode { tokenizer, input } => {
            let codec = FastCodec::load(&tokenizer)?;
            let value = read_input(input.as_deref())?;
            let rows = value.get("actions").unwrap_or(&value);
            let rows: Vec<Vec<f64>> =
                serde_json::from_value(rows.clone()).context("expected [[f64; D]; T]")?;
            let ids = codec.encode(&rows.concat())?;
            println!("{}", json!({ "ids": ids }));
        }
        FastCommand::Decode {
            tokenizer,
            input,
            pad_missing,
        } => {
            let codec = FastCodec::load(&tokenizer)?;
            let value = read_input(input.as_deref())?;
            let ids: Vec<u32> = serde_json::from_value(value.get("ids").unwrap_or(&value).clone())
                .context("expected a list of token ids")?;
            let mode = if pad_missing {
                DecodeMode::PadMissing
            } else {
                DecodeMode::Strict
            };
            match codec.decode(&ids, mode) {
                Ok(actions) => {
                    let rows: Vec<&[f64]> = actions.chunks(codec.config.action_dim).collect();
                    println!("{}", json!({ "actions": rows }));
                }
                Err(e) => {
                    println!("{}", json!({ "error": e.to_string() }));
                    return Ok(std::process::ExitCode::from(1));
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
