//! FAST action tokens (Pertsch et al. 2025): an action chunk `[T, D]` becomes a
//! short sequence of BPE tokens over its quantized DCT coefficients, and back.
//!
//! Encode: orthonormal DCT-II along time per action dimension, times `scale`,
//! rounded half to even, flattened frequency-major, shifted by `-min_token`
//! (negative values clip to 0), each integer mapped to the character with that
//! code point, then BPE-encoded with a Hugging Face `tokenizer.json`. Decode runs
//! the same steps backwards (orthonormal DCT-III).
//!
//! Unlike the reference, decoding never invents actions: a sequence that does not
//! give exactly `T * D` coefficients is rejected (the reference returns an all-zero
//! normalized chunk, i.e. the middle of every joint's range). An opt-in relaxed
//! mode pads missing trailing (high-frequency) coefficients with zeros.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rustdct::{DctPlanner, TransformType2And3};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// The processor parameters, as in a Hugging Face FAST `processor_config.json`
/// (other keys in that file are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FastConfig {
    pub scale: f64,
    pub min_token: i64,
    pub vocab_size: usize,
    pub time_horizon: usize,
    pub action_dim: usize,
}

/// Bounds of `processor_config.json` values; beyond them decoding would allocate
/// without bound or produce actions far outside any joint range.
pub const MAX_TIME_HORIZON: usize = 10_000;
pub const MAX_ACTION_DIM: usize = 4096;
/// Coefficients per chunk (`time_horizon * action_dim`).
pub const MAX_COEFFICIENTS: usize = 1 << 20;
/// Above Unicode's code points a coefficient has no character to stand for.
pub const MAX_VOCAB_SIZE: usize = 1 << 20;
pub const SCALE_RANGE: (f64, f64) = (1e-3, 1e6);

impl FastConfig {
    /// Checks every value; on error returns the field and what is wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let (lo, hi) = SCALE_RANGE;
        if !(self.scale >= lo && self.scale <= hi) {
            return Err((
                "scale",
                format!("must be in [{lo}, {hi}], found {}", self.scale),
            ));
        }
        if !(1..=MAX_TIME_HORIZON).contains(&self.time_horizon) {
            return Err((
                "time_horizon",
                format!(
                    "must be in 1..={MAX_TIME_HORIZON}, found {}",
                    self.time_horizon
                ),
            ));
        }
        if !(1..=MAX_ACTION_DIM).contains(&self.action_dim) {
            return Err((
                "action_dim",
                format!("must be in 1..={MAX_ACTION_DIM}, found {}", self.action_dim),
            ));
        }
        if self.time_horizon * self.action_dim > MAX_COEFFICIENTS {
            return Err((
                "action_dim",
                format!(
                    "time_horizon x action_dim = {} x {} is more than {MAX_COEFFICIENTS} coefficients",
                    self.time_horizon, self.action_dim
                ),
            ));
        }
        if !(1..=MAX_VOCAB_SIZE).contains(&self.vocab_size) {
            return Err((
                "vocab_size",
                format!("must be in 1..={MAX_VOCAB_SIZE}, found {}", self.vocab_size),
            ));
        }
        // The quantized coefficients span fewer than vocab_size values and almost
        // always include 0 (high frequencies of smooth chunks): their minimum lies
        // within vocab_size of 0. Beyond it decoded actions are far off any range.
        let vocab = self.vocab_size as i64;
        if !(-vocab..=vocab).contains(&self.min_token) {
            return Err((
                "min_token",
                format!(
                    "must be in -vocab_size..=vocab_size ({}..={vocab}), found {}",
                    -vocab, self.min_token
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FastError {
    #[error("cannot read {path}: {message}")]
    Load { path: String, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: String,
        field: &'static str,
        message: String,
    },
    #[error("chunk has {found} values, expected {horizon} x {dim} = {}", horizon * dim)]
    ChunkShape {
        found: usize,
        horizon: usize,
        dim: usize,
    },
    #[error("action value {0} is not finite")]
    NonFinite(f64),
    #[error(
        "coefficient {index} quantizes to {value}, whose character U+{value:04X} is a UTF-16 surrogate (or beyond Unicode) and cannot be encoded"
    )]
    Unencodable { index: usize, value: i64 },
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    UnknownToken { id: u32, vocab: usize },
    #[error(
        "tokens do not decode to valid characters (byte-level decoding produced invalid UTF-8)"
    )]
    InvalidBytes,
    #[error("tokens decode to {found} coefficients, expected {expected} ({horizon} x {dim})")]
    Length {
        found: usize,
        expected: usize,
        horizon: usize,
        dim: usize,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// What to do with a token sequence that decodes to too few coefficients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeMode {
    /// Reject it (the default): the executor keeps what it had.
    #[default]
    Strict,
    /// Pad the missing trailing coefficients (the highest frequencies of the last
    /// dimensions) with zeros. Risk: a sequence cut short early loses low
    /// frequencies too, and the result is smoothed, not the policy's intent.
    PadMissing,
}

/// Orthonormal DCT along time for chunks of one horizon.
struct TimeDct {
    transform: Arc<dyn TransformType2And3<f64>>,
    len: usize,
}

impl TimeDct {
    fn new(len: usize) -> Self {
        Self {
            transform: DctPlanner::new().plan_dct2(len),
            len,
        }
    }

    /// rustdct's DCT-II is half of scipy's unnormalized one; these factors make it
    /// scipy's `norm="ortho"`.
    fn ortho(&self, k: usize) -> f64 {
        let n = self.len as f64;
        if k == 0 {
            (1.0 / n).sqrt()
        } else {
            (2.0 / n).sqrt()
        }
    }

    fn buffers(&self) -> (Vec<f64>, Vec<f64>) {
        (
            Vec::with_capacity(self.len),
            vec![0.0; self.transform.get_scratch_len()],
        )
    }

    /// In place, per column of a row-major [len][dim] buffer.
    fn forward(&self, data: &mut [f64], dim: usize) {
        let (mut column, mut scratch) = self.buffers();
        let (column, scratch) = (&mut column, &mut scratch[..]);
        for d in 0..dim {
            column.clear();
            column.extend((0..self.len).map(|t| data[t * dim + d]));
            self.transform.process_dct2_with_scratch(column, scratch);
            for (k, c) in column.iter().enumerate() {
                data[k * dim + d] = c * self.ortho(k);
            }
        }
    }

    /// Inverse of `forward` (orthonormal DCT-III).
    fn inverse(&self, data: &mut [f64], dim: usize) {
        let (mut column, mut scratch) = self.buffers();
        let (column, scratch) = (&mut column, &mut scratch[..]);
        for d in 0..dim {
            column.clear();
            // rustdct's DCT-III takes X_0 at half weight: undo both that and ortho.
            column.extend(
                (0..self.len)
                    .map(|k| data[k * dim + d] * self.ortho(k) * if k == 0 { 2.0 } else { 1.0 }),
            );
            self.transform.process_dct3_with_scratch(column, scratch);
            for (t, x) in column.iter().enumerate() {
                data[t * dim + d] = *x;
            }
        }
    }
}

pub struct FastCodec {
    pub config: FastConfig,
    tokenizer: Tokenizer,
    dct: TimeDct,
    /// The bytes each token id stands for, when the tokenizer is a plain byte-level
    /// BPE (then decoding is a table lookup, no strings); `None` otherwise.
    token_bytes: Option<Vec<Vec<u8>>>,
}

/// GPT-2's byte-to-character table that byte-level BPE uses: printable bytes map to
/// themselves, the others to U+0100 onwards, in byte order.
fn byte_level_char_to_byte() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
            };
            (c, b)
        })
        .collect()
}

/// The per-id byte table, if `tokenizer` decodes by byte-level mapping alone.
fn token_byte_table(tokenizer: &Tokenizer) -> Option<Vec<Vec<u8>>> {
    use tokenizers::DecoderWrapper;
    let plain = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)))
        && tokenizer.get_normalizer().is_none()
        && tokenizer.get_added_tokens_decoder().is_empty();
    if !plain {
        return None;
    }
    let map = byte_level_char_to_byte();
    (0..tokenizer.get_vocab_size(false) as u32)
        .map(|id| {
            let token = tokenizer.id_to_token(id)?;
            // Like the byte-level decoder: a token with any unmapped character
            // stands for its own UTF-8 bytes.
            let mapped: Option<Vec<u8>> = token.chars().map(|c| map.get(&c).copied()).collect();
            Some(mapped.unwrap_or_else(|| token.into_bytes()))
        })
        .collect()
}

impl FastCodec {
    pub fn new(tokenizer: Tokenizer, config: FastConfig) -> Self {
        let dct = TimeDct::new(config.time_horizon);
        let token_bytes = token_byte_table(&tokenizer);
        Self {
            config,
            tokenizer,
            dct,
            token_bytes,
        }
    }

    /// The characters the ids decode to (what `tokenizer.decode` gives, faster).
    fn decode_text(&self, ids: &[u32]) -> Result<String, FastError> {
        let Some(table) = &self.token_bytes else {
            let text = self
                .tokenizer
                .decode(ids, false)
                .map_err(|e| FastError::Tokenizer(e.to_string()))?;
            if text.contains(char::REPLACEMENT_CHARACTER) {
                return Err(FastError::InvalidBytes);
            }
            return Ok(text);
        };
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(&table[id as usize]);
        }
        String::from_utf8(bytes).map_err(|_| FastError::InvalidBytes)
    }

    /// Loads `tokenizer.json` and `processor_config.json` from a directory.
    pub fn load(dir: &Path) -> Result<Self, FastError> {
        let load_err = |path: &Path, message: String| FastError::Load {
            path: path.display().to_string(),
            message,
        };
        use reflex_runtime::files;
        let config_path = dir.join("processor_config.json");
        let text = files::read_to_string(&config_path, files::MAX_CONFIG_BYTES)
            .map_err(|e| load_err(&config_path, e.reason()))?;
        let config: FastConfig =
            serde_json::from_str(&text).map_err(|e| load_err(&config_path, e.to_string()))?;
        config
            .check()
            .map_err(|(field, message)| FastError::Config {
                path: config_path.display().to_string(),
                field,
                message,
            })?;
        let tokenizer_path = dir.join("tokenizer.json");
        let bytes = files::read(&tokenizer_path, files::MAX_DATA_BYTES)
            .map_err(|e| load_err(&tokenizer_path, e.reason()))?;
        let tokenizer =
            Tokenizer::from_bytes(&bytes).map_err(|e| load_err(&tokenizer_path, e.to_string()))?;
        Ok(Self::new(tokenizer, config))
    }

    /// Writes `tokenizer.json` and `processor_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), FastError> {
        std::fs::create_dir_all(dir).map_err(|e| FastError::Tokenizer(e.to_string()))?;
        self.tokenizer
            .save(dir.join("tokenizer.json"), true)
            .map_err(|e| FastError::Tokenizer(e.to_string()))?;
        let config = serde_json::json!({
            "scale": self.config.scale,
            "min_token": self.config.min_token,
            "vocab_size": self.config.vocab_size,
            "time_horizon": self.config.time_horizon,
            "action_dim": self.config.action_dim,
            "processor_class": "UniversalActionProcessor",
        });
        std::fs::write(
            dir.join("processor_config.json"),
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(|e| FastError::Tokenizer(e.to_string()))
    }

    fn shape(&self) -> (usize, usize) {
        (self.config.time_horizon, self.config.action_dim)
    }

    /// Quantized DCT coefficients of a row-major `[T, D]` chunk (frequency-major).
    pub fn quantize(&self, actions: &[f64]) -> Result<Vec<i64>, FastError> {
        let (horizon, dim) = self.shape();
        if actions.len() != horizon * dim {
            return Err(FastError::ChunkShape {
                found: actions.len(),
                horizon,
                dim,
            });
        }
        if let Some(bad) = actions.iter().find(|a| !a.is_finite()) {
            return Err(FastError::NonFinite(*bad));
        }
        let mut data = actions.to_vec();
        self.dct.forward(&mut data, dim);
        Ok(data
            .iter()
            .map(|c| (c * self.config.scale).round_ties_even() as i64)
            .collect())
    }

    /// The character string BPE sees for a chunk.
    pub fn to_text(&self, actions: &[f64]) -> Result<String, FastError> {
        self.quantize(actions)?
            .into_iter()
            .enumerate()
            .map(|(index, q)| {
                let value = (q - self.config.min_token).max(0);
                u32::try_from(value)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or(FastError::Unencodable { index, value })
            })
            .collect()
    }

    /// Token ids for a row-major `[T, D]` chunk.
    pub fn encode(&self, actions: &[f64]) -> Result<Vec<u32>, FastError> {
        let text = self.to_text(actions)?;
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| FastError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The row-major `[T, D]` chunk for token ids, or why there is none.
    pub fn decode(&self, ids: &[u32], mode: DecodeMode) -> Result<Vec<f64>, FastError> {
        let (horizon, dim) = self.shape();
        let vocab = self.tokenizer.get_vocab_size(true);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(FastError::UnknownToken { id, vocab });
        }
        let text = self.decode_text(ids)?;
        let expected = horizon * dim;
        let found = text.chars().count();
        let too_short = found < expected && mode == DecodeMode::PadMissing;
        if found != expected && !too_short {
            return Err(FastError::Length {
                found,
                expected,
                horizon,
                dim,
            });
        }
        let mut data = vec![0.0; expected];
        for (slot, c) in data.iter_mut().zip(text.chars()) {
            *slot = (i64::from(u32::from(c)) + self.config.min_token) as f64 / self.config.scale;
        }
        self.dct.inverse(&mut data, dim);
        Ok(data)
    }
}

/// Fits a FAST tokenizer on chunks (each row-major `[horizon, dim]`): the
/// coefficient range sets `min_token`, and a byte-level BPE with `vocab_size`
/// entries (min frequency 2) is trained on the chunks' character strings.
pub fn fit(
    chunks: &[Vec<f64>],
    horizon: usize,
    dim: usize,
    scale: f64,
    vocab_size: usize,
) -> Result<FastCodec, FastError> {
    let provisional = FastConfig {
        scale,
        min_token: 0,
        vocab_size,
        time_horizon: horizon,
        action_dim: dim,
    };
    let invalid = |(field, message): (&'static str, String)| FastError::Config {
        path: "the fit parameters".into(),
        field,
        message,
    };
    provisional.check().map_err(invalid)?;
    let probe = FastCodec::new(Tokenizer::new(BPE::default()), provisional.clone());
    let quantized = chunks
        .iter()
        .map(|c| probe.quantize(c))
        .collect::<Result<Vec<_>, _>>()?;
    let min_token = quantized.iter().flatten().copied().min().unwrap_or(0);
    let max_token = quantized.iter().flatten().copied().max().unwrap_or(0);
    let span = (max_token - min_token) as usize;
    if span + 1 > vocab_size {
        return Err(FastError::Tokenizer(format!(
            "the coefficients span {} values, more than vocab_size {vocab_size}; raise vocab_size or lower scale",
            span + 1
        )));
    }
    let config = FastConfig {
        min_token,
        ..provisional
    };
    config.check().map_err(invalid)?;
    let codec = FastCodec::new(Tokenizer::new(BPE::default()), config.clone());
    let texts = chunks
        .iter()
        .map(|c| codec.to_text(c))
        .collect::<Result<Vec<_>, _>>()?;

    let byte_level = ByteLevel::new(false, true, true);
    let mut alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.extend((0..=span as u32).filter_map(char::from_u32));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(alphabet)
        .max_token_length(Some(10_000))
        .show_progress(false)
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer
        .train(&mut trainer, texts.into_iter())
        .map_err(|e| FastError::Tokenizer(e.to_string()))?;
    Ok(FastCodec::new(tokenizer, config))
}

/// Synthetic action chunks shaped like real joint trajectories after normalization,
/// for fitting fixtures, tests and benchmarks.
pub mod synthetic {
    /// `n` row-major `[horizon, dim]` chunks: per dimension an offset plus a sine
    /// of random amplitude (< 0.8), frequency (< 1.5 periods per chunk) and phase.
    /// Deterministic for a seed.
    pub fn smooth_chunks(n: usize, horizon: usize, dim: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut uniform = move |lo: f64, hi: f64| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            lo + (state >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
        };
        (0..n)
            .map(|_| {
                let params: Vec<[f64; 4]> = (0..dim)
                    .map(|_| {
                        [
                            uniform(-0.8, 0.8),
                            uniform(0.0, 3.0),
                            uniform(-3.1, 3.1),
                            uniform(-0.5, 0.5),
                        ]
                    })
                    .collect();
                (0..horizon)
                    .flat_map(|t| {
                        let x = t as f64 / (horizon.max(2) - 1) as f64;
                        params.iter().map(move |[amp, freq, phase, offset]| {
                            offset + amp * (std::f64::consts::PI * freq * x + phase).sin()
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::synthetic::smooth_chunks;
    use super::*;

    #[test]
    fn dct_round_trip_is_exact_without_quantization() {
        let dct = TimeDct::new(10);
        let chunk = &smooth_chunks(1, 10, 3, 1)[0];
        let mut data = chunk.clone();
        dct.forward(&mut data, 3);
        dct.inverse(&mut data, 3);
        for (a, b) in data.iter().zip(chunk) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn ortho_dct_matches_the_definition() {
        // X_k = sqrt(2/N) * c_k * sum_n x_n cos(pi/N (n + 1/2) k), c_0 = 1/sqrt(2).
        let n = 8;
        let x: Vec<f64> = (0..n)
            .map(|i| (i as f64 * 0.7).cos() + i as f64 * 0.1)
            .collect();
        let mut data = x.clone();
        TimeDct::new(n).forward(&mut data, 1);
        for (k, coefficient) in data.iter().enumerate() {
            let sum: f64 = x
                .iter()
                .enumerate()
                .map(|(i, xi)| {
                    xi * (std::f64::consts::PI / n as f64 * (i as f64 + 0.5) * k as f64).cos()
                })
                .sum();
            let c = if k == 0 { 1.0 / 2f64.sqrt() } else { 1.0 };
            assert!((coefficient - (2.0 / n as f64).sqrt() * c * sum).abs() < 1e-12);
        }
    }

    #[test]
    fn fitted_codec_round_trips_within_quantization_error() {
        let chunks = smooth_chunks(300, 10, 3, 7);
        let codec = fit(&chunks, 10, 3, 10.0, 512).unwrap();
        for chunk in smooth_chunks(50, 10, 3, 8) {
            let ids = codec.encode(&chunk).unwrap();
            assert!(ids.len() < 30, "BPE compresses: {} tokens", ids.len());
            let back = codec.decode(&ids, DecodeMode::Strict).unwrap();
            // Each coefficient is off by at most 0.5 / scale; the orthonormal inverse
            // keeps the error's L2 norm, so per value it is at most sqrt(T) * 0.05.
            for (a, b) in back.iter().zip(&chunk) {
                assert!((a - b).abs() <= 0.05 * 10f64.sqrt() + 1e-9, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn wrong_lengths_are_rejected_or_padded_on_request() {
        let chunks = smooth_chunks(200, 10, 2, 3);
        let codec = fit(&chunks, 10, 2, 10.0, 256).unwrap();
        let ids = codec.encode(&chunks[0]).unwrap();
        let short = &ids[..ids.len() - 1];
        assert!(matches!(
            codec.decode(short, DecodeMode::Strict),
            Err(FastError::Length { .. })
        ));
        let padded = codec.decode(short, DecodeMode::PadMissing).unwrap();
        assert_eq!(padded.len(), 20);
        let mut long = ids.clone();
        long.extend_from_slice(&ids);
        assert!(matches!(
            codec.decode(&long, DecodeMode::PadMissing),
            Err(FastError::Length { .. })
        ));
        assert!(matches!(
            codec.decode(&[999_999], DecodeMode::Strict),
            Err(FastError::UnknownToken { .. })
        ));
    }

    #[test]
    fn surrogate_coefficients_are_an_error_not_garbage() {
        let config = FastConfig {
            scale: 1.0,
            min_token: 0,
            vocab_size: 1024,
            time_horizon: 1,
            action_dim: 1,
        };
        let codec = FastCodec::new(Tokenizer::new(BPE::default()), config);
        assert!(matches!(
            codec.to_text(&[55_296.0]),
            Err(FastError::Unencodable { value: 55_296, .. })
        ));
        assert!(codec.to_text(&[55_295.0]).is_ok());
    }

    #[test]
    fn rounding_is_half_to_even_like_numpy() {
        let config = FastConfig {
            scale: 1.0,
            min_token: -10,
            vocab_size: 64,
            time_horizon: 1,
            action_dim: 1,
        };
        let codec = FastCodec::new(Tokenizer::new(BPE::default()), config);
        assert_eq!(codec.quantize(&[2.5]).unwrap(), vec![2]);
        assert_eq!(codec.quantize(&[3.5]).unwrap(), vec![4]);
        assert_eq!(codec.quantize(&[-2.5]).unwrap(), vec![-2]);
    }

    #[test]
    fn processor_config_values_are_checked_naming_file_and_field() {
        let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/fast"));
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture.join("processor_config.json")).unwrap())
                .unwrap();
        let dir = std::env::temp_dir().join(format!("reflex-fast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut config = good.clone();
            config[key] = value;
            std::fs::write(
                dir.join("processor_config.json"),
                serde_json::to_vec(&config).unwrap(),
            )
            .unwrap();
            FastCodec::load(&dir)
        };
        assert!(with("scale", good["scale"].clone()).is_ok());
        for (key, value, field) in [
            (
                "time_horizon",
                serde_json::json!(100_000_000u64),
                "time_horizon",
            ),
            (
                "action_dim",
                serde_json::json!(100_000_000u64),
                "action_dim",
            ),
            ("action_dim", serde_json::json!(4097), "action_dim"),
            ("action_dim", serde_json::json!(0), "action_dim"),
            ("scale", serde_json::json!(0.0), "scale"),
            ("scale", serde_json::json!(-10.0), "scale"),
            ("scale", serde_json::json!(1e300), "scale"),
            ("min_token", serde_json::json!(100_000), "min_token"),
            ("min_token", serde_json::json!(-100_000), "min_token"),
            ("vocab_size", serde_json::json!(0), "vocab_size"),
        ] {
            let err = match with(key, value.clone()) {
                Ok(_) => panic!("{key} = {value} was accepted"),
                Err(err) => err,
            };
            let text = err.to_string();
            assert!(
                text.contains("processor_config.json: field `") && text.contains(field),
                "{key} = {value}: {text}"
            );
        }
        // 80 PB of coefficients from two values that are each in range.
        let mut config = good.clone();
        config["time_horizon"] = serde_json::json!(10_000);
        config["action_dim"] = serde_json::json!(4000);
        std::fs::write(
            dir.join("processor_config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        let err = FastCodec::load(&dir).err().expect("too many coefficients");
        assert!(
            err.to_string().contains("time_horizon x action_dim"),
            "{err}"
        );
        // A directory where the config should be is said to be one.
        std::fs::remove_file(dir.join("processor_config.json")).unwrap();
        std::fs::create_dir(dir.join("processor_config.json")).unwrap();
        let err = FastCodec::load(&dir).err().expect("a directory is refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fit_refuses_parameters_a_load_would_refuse() {
        let chunks = smooth_chunks(20, 10, 2, 3);
        assert!(matches!(
            fit(&chunks, 10, 2, 0.0, 256),
            Err(FastError::Config { field: "scale", .. })
        ));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn fixture() -> &'static FastCodec {
            static CODEC: std::sync::OnceLock<FastCodec> = std::sync::OnceLock::new();
            CODEC.get_or_init(|| {
                FastCodec::load(Path::new(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/models/fast"
                )))
                .unwrap()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any id sequence gives a complete finite chunk or a rejection, never a panic.
            #[test]
            fn decode_never_panics(ids in prop::collection::vec(0u32..1100, 0..120), pad in any::<bool>()) {
                let codec = fixture();
                let mode = if pad { DecodeMode::PadMissing } else { DecodeMode::Strict };
                if let Ok(actions) = codec.decode(&ids, mode) {
                    prop_assert_eq!(actions.len(), 70);
                    prop_assert!(actions.iter().all(|a| a.is_finite()));
                }
            }

            /// The byte-table decoding gives exactly what the tokenizer's own decode gives.
            #[test]
            fn byte_table_matches_the_tokenizer(ids in prop::collection::vec(0u32..1024, 0..80)) {
                let codec = fixture();
                prop_assert!(codec.token_bytes.is_some(), "the fixture takes the fast path");
                let reference = codec.tokenizer.decode(&ids, false).unwrap();
                match codec.decode_text(&ids) {
                    Ok(text) => prop_assert_eq!(text, reference),
                    Err(_) => prop_assert!(reference.contains(char::REPLACEMENT_CHARACTER)),
                }
            }

            /// Encoding a valid chunk and decoding it is always accepted.
            #[test]
            fn own_encodings_always_decode(values in prop::collection::vec(-1.0f64..1.0, 70)) {
                let codec = fixture();
                let ids = codec.encode(&values).unwrap();
                prop_assert!(codec.decode(&ids, DecodeMode::Strict).is_ok());
            }
        }
    }
}
