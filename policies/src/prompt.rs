//! The language instruction of a VLA as model inputs: a task text becomes
//! fixed-length `input_ids` and `attention_mask` tensors of `max_length` tokens,
//! tokenized with the model's own Hugging Face `tokenizer.json` (pi0 with
//! PaliGemma's, SmolVLA with SmolVLM2's).
//!
//! The ids, mask and truncation flag are exactly what Python `tokenizers` gives
//! for the same `tokenizer.json` after `enable_padding(length=L, pad_id=..,
//! direction=..)` and `enable_truncation(max_length=L)`, encoding with the same
//! `add_special_tokens`: the same library code (the `tokenizers` crate) tokenizes,
//! truncates, adds special tokens and pads. The text is first prepared the way
//! openpi and LeRobot do ([`PromptConfig::clean`], [`PromptConfig::append_newline`]).
//!
//! One step is ours: the whole text is tokenized before truncation. With truncation
//! set, the crate's `encode` (0.23.2) stops tokenizing once `max_length` tokens are
//! reached, which keeps the same ids but loses the overflowing tokens, so a prompt
//! cut short could not be told from one that fit (Python tokenizers 0.23.3 returns
//! them; the tests compare). The text is capped at [`MAX_PROMPT_BYTES`], so this costs little.
//!
//! Encoding allocates: encode when the instruction changes, not in the control tick.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use reflex_runtime::files::{self, FileError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::BPE;
use tokenizers::{
    Encoding, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor,
    PostProcessorWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Largest `max_length` (VLA prompts are tens of tokens; pi0 and SmolVLA use 48).
pub const MAX_PROMPT_TOKENS: usize = 4096;
/// Longest task text accepted, in UTF-8 bytes, before preparation.
pub const MAX_PROMPT_BYTES: usize = 4096;

/// Which end of the tensors the padding goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaddingSide {
    /// Tokens first, padding after (pi0, SmolVLA).
    #[default]
    Right,
    /// Padding first, tokens last.
    Left,
}

/// How a task instruction is tokenized for a VLA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// A `tokenizer.json` file, or a directory that contains one.
    pub tokenizer: PathBuf,
    /// L, the length of `input_ids` and `attention_mask` (1 to 4096). Longer
    /// prompts are truncated to L tokens, special tokens included (they are kept),
    /// on the side the `direction` of the `tokenizer.json`'s `truncation` section
    /// names; right (the end of the text is dropped) when it has none, the default
    /// of Python's `enable_truncation`. That section's own length, stride and
    /// strategy are ignored.
    pub max_length: usize,
    #[serde(default)]
    pub padding_side: PaddingSide,
    /// The id padding positions get. Default: the `pad_id` of the
    /// `tokenizer.json`'s `padding` section, else the id of `<pad>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_id: Option<u32>,
    /// Add the special tokens of the tokenizer's post-processor (PaliGemma's `<bos>`).
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// End the text with "\n" unless it already ends with one: PaliGemma-based
    /// VLAs (openpi's pi0, LeRobot's pi0 and SmolVLA) were trained on prompts so
    /// ended.
    #[serde(default = "yes")]
    pub append_newline: bool,
    /// openpi's cleaning, before the newline is appended: strip leading and
    /// trailing whitespace (Python's `str.strip()`), then replace each "_" and
    /// "\n" by a space.
    #[serde(default)]
    pub clean: bool,
}

fn yes() -> bool {
    true
}

impl PromptConfig {
    /// A config with every optional field at its default.
    pub fn new(tokenizer: impl Into<PathBuf>, max_length: usize) -> Self {
        Self {
            tokenizer: tokenizer.into(),
            max_length,
            padding_side: PaddingSide::default(),
            pad_id: None,
            add_special_tokens: true,
            append_newline: true,
            clean: false,
        }
    }

    /// The checks that need no file.
    pub fn check(&self) -> Result<(), PromptError> {
        if !(1..=MAX_PROMPT_TOKENS).contains(&self.max_length) {
            return Err(PromptError::MaxLength {
                value: self.max_length,
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// Missing, not a regular file, or too large; displays as `PATH: reason`.
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: not a tokenizer.json that the tokenizers library can load: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("max_length {value} is out of range (1 to {MAX_PROMPT_TOKENS})")]
    MaxLength { value: usize },
    #[error(
        "{}: max_length {max_length} leaves no room for the prompt: the tokenizer adds {added} special token(s)",
        path.display()
    )]
    NoRoom {
        path: PathBuf,
        max_length: usize,
        added: usize,
    },
    #[error(
        "{}: no pad id: the tokenizer has no padding section and no `<pad>` token; set pad_id",
        path.display()
    )]
    NoPadId { path: PathBuf },
    #[error("{}: pad_id {pad_id} is not a token of this tokenizer", path.display())]
    UnknownPadId { path: PathBuf, pad_id: u32 },
    #[error("prompt is {bytes} bytes, more than the limit of {MAX_PROMPT_BYTES}")]
    TextTooLong { bytes: usize },
    #[error("buffers hold {ids} ids and {mask} mask values; max_length is {expected}")]
    BufferLength {
        ids: usize,
        mask: usize,
        expected: usize,
    },
    #[error("{}: tokenizing the prompt failed: {message}", path.display())]
    Encode { path: PathBuf, message: String },
}

/// A prompt as model inputs: both vectors are `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    pub input_ids: Vec<i64>,
    /// 1 for real tokens (special tokens included), 0 for padding.
    pub attention_mask: Vec<i64>,
    /// The prompt had more than `max_length` tokens; the rest was dropped.
    pub truncated: bool,
}

/// A `tokenizer.json` set up to pad and truncate to one fixed length.
pub struct PromptTokenizer {
    /// The tokenizer without post-processor, truncation or padding: text to tokens.
    tokenizer: Tokenizer,
    /// Only the post-processor, truncation and padding (its model is empty): the
    /// library's `post_process` turns the tokens into the final `max_length` ids.
    finish: Tokenizer,
    /// The `tokenizer.json` read, for error messages.
    path: PathBuf,
    config: PromptConfig,
    pad_id: u32,
}

impl fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// Reads `config.tokenizer` (at most [`files::MAX_DATA_BYTES`]) and checks
    /// that every prompt can be encoded to `max_length` tokens.
    pub fn load(config: &PromptConfig) -> Result<Self, PromptError> {
        config.check()?;
        let path = if config.tokenizer.is_dir() {
            config.tokenizer.join("tokenizer.json")
        } else {
            config.tokenizer.clone()
        };
        let bytes = files::read(&path, files::MAX_DATA_BYTES)?;
        let parse_error = |e: tokenizers::Error| PromptError::Parse {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(parse_error)?;

        let pad_id = match config.pad_id {
            Some(id) => id,
            None => tokenizer
                .get_padding()
                .map(|padding| padding.pad_id)
                .or_else(|| tokenizer.token_to_id("<pad>"))
                .ok_or_else(|| PromptError::NoPadId { path: path.clone() })?,
        };
        let Some(pad_token) = tokenizer.id_to_token(pad_id) else {
            return Err(PromptError::UnknownPadId { path, pad_id });
        };

        // The library truncates to max_length minus these, an unchecked subtraction.
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(false));
        let needed = added + usize::from(config.add_special_tokens);
        if config.max_length < needed {
            return Err(PromptError::NoRoom {
                path,
                max_length: config.max_length,
                added,
            });
        }

        let direction = tokenizer
            .get_truncation()
            .map_or(TruncationDirection::Right, |t| t.direction);
        let mut finish = Tokenizer::new(BPE::default());
        finish.with_post_processor(tokenizer.get_post_processor().cloned());
        tokenizer
            .with_post_processor(None::<PostProcessorWrapper>)
            .with_padding(None)
            .with_truncation(None)
            .map_err(parse_error)?;
        finish
            .with_truncation(Some(TruncationParams {
                direction,
                max_length: config.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(parse_error)?;
        finish.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(config.max_length),
            direction: match config.padding_side {
                PaddingSide::Right => PaddingDirection::Right,
                PaddingSide::Left => PaddingDirection::Left,
            },
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self {
            tokenizer,
            finish,
            path,
            config: config.clone(),
            pad_id,
        })
    }

    pub fn max_length(&self) -> usize {
        self.config.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The `tokenizer.json` that was read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &PromptConfig {
        &self.config
    }

    /// `text` prepared as the config says (cleaning, final newline).
    pub fn prepare<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = if self.config.clean {
            Cow::Owned(clean_prompt(text))
        } else {
            Cow::Borrowed(text)
        };
        if self.config.append_newline && !text.ends_with('\n') {
            text.to_mut().push('\n');
        }
        text
    }

    pub fn encode(&self, text: &str) -> Result<EncodedPrompt, PromptError> {
        let mut input_ids = vec![0; self.max_length()];
        let mut attention_mask = vec![0; self.max_length()];
        let truncated = self.encode_into(text, &mut input_ids, &mut attention_mask)?;
        Ok(EncodedPrompt {
            input_ids,
            attention_mask,
            truncated,
        })
    }

    /// Writes the ids and mask of `text` into buffers of `max_length` values;
    /// returns whether the prompt was truncated. On error the buffers are untouched.
    pub fn encode_into(
        &self,
        text: &str,
        ids: &mut [i64],
        mask: &mut [i64],
    ) -> Result<bool, PromptError> {
        let expected = self.max_length();
        if ids.len() != expected || mask.len() != expected {
            return Err(PromptError::BufferLength {
                ids: ids.len(),
                mask: mask.len(),
                expected,
            });
        }
        let encoding = self.encoding(text)?;
        for (dst, &id) in ids.iter_mut().zip(encoding.get_ids()) {
            *dst = i64::from(id);
        }
        for (dst, &m) in mask.iter_mut().zip(encoding.get_attention_mask()) {
            *dst = i64::from(m);
        }
        Ok(!encoding.get_overflowing().is_empty())
    }

    fn encoding(&self, text: &str) -> Result<Encoding, PromptError> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(PromptError::TextTooLong { bytes: text.len() });
        }
        let encode_error = |message: String| PromptError::Encode {
            path: self.path.clone(),
            message,
        };
        let text = self.prepare(text);
        // `encode` is these two steps; offsets are not needed (`encode_fast`).
        let tokens = self
            .tokenizer
            .encode_fast(text.as_ref(), false)
            .map_err(|e| encode_error(e.to_string()))?;
        let encoding = self
            .finish
            .post_process(tokens, None, self.config.add_special_tokens)
            .map_err(|e| encode_error(e.to_string()))?;
        if encoding.len() != self.max_length() {
            return Err(encode_error(format!(
                "{} tokens after padding and truncation, expected {}",
                encoding.len(),
                self.max_length()
            )));
        }
        Ok(encoding)
    }
}

/// openpi's prompt cleaning: Python's `text.strip().replace("_", " ").replace("\n", " ")`.
pub fn clean_prompt(text: &str) -> String {
    text.trim_matches(is_python_space).replace(['_', '\n'], " ")
}

/// Python's `str.isspace()`: Unicode White_Space plus the information separators
/// U+001C..U+001F, which Python strips and Rust's `char::is_whitespace` does not.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::{Value, json};

    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/test/prompt")
    }

    fn fixture() -> PathBuf {
        fixture_dir().join("tokenizer.json")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflex-prompt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The fixture with its JSON edited by `edit`, written to a scratch directory.
    fn edited_fixture(name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
        edit(&mut json);
        let path = scratch(name).join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    /// A reference.json / live-test setting as a config for `tokenizer`.
    fn config_of(setting: &Value, tokenizer: &Path) -> PromptConfig {
        let mut fields = setting.clone();
        let fields = fields.as_object_mut().unwrap();
        fields.remove("name");
        fields.insert("tokenizer".into(), json!(tokenizer));
        serde_json::from_value(Value::Object(fields.clone())).unwrap()
    }

    fn expected(result: &Value) -> EncodedPrompt {
        EncodedPrompt {
            input_ids: serde_json::from_value(result["input_ids"].clone()).unwrap(),
            attention_mask: serde_json::from_value(result["attention_mask"].clone()).unwrap(),
            truncated: result["truncated"].as_bool().unwrap(),
        }
    }

    #[test]
    fn matches_python_reference_for_every_prompt_and_setting() {
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap(),
        )
        .unwrap();
        let prompts = reference["prompts"].as_array().unwrap();
        let (mut compared, mut truncated, mut padded) = (0, 0, 0);
        for setting in reference["settings"].as_array().unwrap() {
            let name = setting["name"].as_str().unwrap();
            let tokenizer = PromptTokenizer::load(&config_of(setting, &fixture())).unwrap();
            let results = reference["results"][name].as_array().unwrap();
            assert_eq!(results.len(), prompts.len());
            for (prompt, result) in prompts.iter().zip(results) {
                let prompt = prompt.as_str().unwrap();
                let want = expected(result);
                let got = tokenizer.encode(prompt).unwrap();
                assert_eq!(got, want, "setting {name}, prompt {prompt:?}");
                compared += 1;
                truncated += usize::from(got.truncated);
                padded += usize::from(got.attention_mask.contains(&0));
            }
        }
        // The fixture exercises both sides of the length limit.
        assert!(
            compared >= 50 && truncated >= 5 && padded >= 20,
            "{compared} {truncated} {padded}"
        );
    }

    #[test]
    fn pads_and_truncates_on_the_configured_sides() {
        let mut config = PromptConfig::new(fixture_dir(), 16);
        config.append_newline = false;
        let right = PromptTokenizer::load(&config).unwrap();
        assert_eq!(right.path(), fixture());
        let short = right.encode("pick up the cube").unwrap();
        let n = short.attention_mask.iter().filter(|&&m| m == 1).count();
        assert!(n > 1 && n < 16 && !short.truncated);
        assert_eq!(short.input_ids[0], 2, "<bos> first");
        assert_eq!(short.attention_mask[..n], vec![1; n]);
        assert_eq!(short.input_ids[n..], vec![0; 16 - n], "<pad> is id 0");

        config.padding_side = PaddingSide::Left;
        let left = PromptTokenizer::load(&config)
            .unwrap()
            .encode("pick up the cube")
            .unwrap();
        assert_eq!(left.input_ids[16 - n..], short.input_ids[..n]);
        assert_eq!(left.attention_mask[..16 - n], vec![0; 16 - n]);

        // A truncation section in tokenizer.json picks the side that is dropped.
        let long = "pick up the red cube and place it in the bowl, then wipe the table";
        config.max_length = 64;
        config.padding_side = PaddingSide::Right;
        let full = PromptTokenizer::load(&config)
            .unwrap()
            .encode(long)
            .unwrap();
        let tokens = full.attention_mask.iter().filter(|&&m| m == 1).count();
        assert!(tokens > 8 && tokens < 64);
        let left_truncating = edited_fixture("left-trunc", |json| {
            json["truncation"] = json!({"direction": "Left", "max_length": 3,
                "strategy": "LongestFirst", "stride": 0});
        });
        let mut config = PromptConfig::new(&left_truncating, 8);
        config.append_newline = false;
        let cut = PromptTokenizer::load(&config)
            .unwrap()
            .encode(long)
            .unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.attention_mask, vec![1; 8]);
        assert_eq!(cut.input_ids[0], 2, "<bos> is kept");
        assert_eq!(cut.input_ids[1..], full.input_ids[tokens - 7..tokens]);
    }

    #[test]
    fn encode_into_fills_the_callers_buffers() {
        let tokenizer = PromptTokenizer::load(&PromptConfig::new(fixture(), 8)).unwrap();
        let (mut ids, mut mask) = (vec![-7; 8], vec![-7; 8]);
        for text in [
            "open the drawer",
            "pick up the red cube and place it in the bowl",
            "",
        ] {
            let truncated = tokenizer.encode_into(text, &mut ids, &mut mask).unwrap();
            let encoded = tokenizer.encode(text).unwrap();
            assert_eq!(
                (ids.as_slice(), mask.as_slice()),
                (&encoded.input_ids[..], &encoded.attention_mask[..])
            );
            assert_eq!(truncated, encoded.truncated);
        }
        let err = tokenizer
            .encode_into("x", &mut [0; 8], &mut [0; 7])
            .unwrap_err();
        assert!(
            matches!(
                err,
                PromptError::BufferLength {
                    ids: 8,
                    mask: 7,
                    expected: 8
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn openpi_cleaning_uses_python_strip() {
        assert_eq!(
            clean_prompt("  _pick_up_\nthe cube\t"),
            " pick up  the cube"
        );
        // Python strips the information separators; Rust's trim() does not.
        assert_eq!(clean_prompt("\u{1c}open\u{1f}"), "open");
        assert_eq!(clean_prompt("\u{3000}close\u{a0}"), "close");
        assert_eq!(
            clean_prompt("\u{200b}zero width\u{200b}"),
            "\u{200b}zero width\u{200b}"
        );
        let mut config = PromptConfig::new(fixture(), 16);
        config.clean = true;
        let tokenizer = PromptTokenizer::load(&config).unwrap();
        assert_eq!(tokenizer.prepare(" wipe_the\ntable \n"), "wipe the table\n");
        config.clean = false;
        let tokenizer = PromptTokenizer::load(&config).unwrap();
        assert_eq!(
            tokenizer.prepare("wipe\n"),
            "wipe\n",
            "one final newline, not two"
        );
        assert_eq!(tokenizer.prepare(""), "\n");
    }

    #[test]
    fn default_pad_id_comes_from_the_padding_section_then_pad_token() {
        let with_padding = edited_fixture("padding", |json| {
            json["padding"] = json!({"strategy": "BatchLongest", "direction": "Right",
                "pad_to_multiple_of": null, "pad_id": 1, "pad_type_id": 0, "pad_token": "<eos>"});
        });
        let tokenizer = PromptTokenizer::load(&PromptConfig::new(&with_padding, 16)).unwrap();
        assert_eq!(tokenizer.pad_id(), 1);
        assert_eq!(
            *tokenizer.encode("open").unwrap().input_ids.last().unwrap(),
            1
        );
        assert_eq!(
            PromptTokenizer::load(&PromptConfig::new(fixture(), 16))
                .unwrap()
                .pad_id(),
            0
        );
        let mut config = PromptConfig::new(fixture(), 16);
        config.pad_id = Some(3);
        assert_eq!(PromptTokenizer::load(&config).unwrap().pad_id(), 3);
    }

    #[test]
    fn bad_configs_and_files_get_clear_errors() {
        let load = |config: PromptConfig| PromptTokenizer::load(&config).unwrap_err().to_string();

        let missing = load(PromptConfig::new("/nonexistent/reflex/tokenizer.json", 16));
        assert_eq!(missing, "/nonexistent/reflex/tokenizer.json: not found");
        let empty_dir = scratch("empty");
        let err = load(PromptConfig::new(&empty_dir, 16));
        assert!(
            err.contains(&*empty_dir.join("tokenizer.json").to_string_lossy())
                && err.ends_with("not found"),
            "{err}"
        );
        let err = load(PromptConfig::new("/dev/zero", 16));
        assert!(err.contains("not a regular file"), "{err}");

        let garbage = scratch("garbage").join("tokenizer.json");
        std::fs::write(&garbage, "{\"model\": 3}").unwrap();
        let err = load(PromptConfig::new(&garbage, 16));
        assert!(
            err.starts_with(&format!("{}: not a tokenizer.json", garbage.display())),
            "{err}"
        );

        assert_eq!(
            load(PromptConfig::new(fixture(), 0)),
            "max_length 0 is out of range (1 to 4096)"
        );
        assert_eq!(
            load(PromptConfig::new(fixture(), 4097)),
            "max_length 4097 is out of range (1 to 4096)"
        );
        // 1 token is only the <bos> the post-processor prepends.
        let err = load(PromptConfig::new(fixture(), 1));
        assert!(
            err.contains(
                "max_length 1 leaves no room for the prompt: the tokenizer adds 1 special token(s)"
            ),
            "{err}"
        );

        let no_pad = edited_fixture("no-pad", |json| {
            let text = json.to_string().replace("\"<pad>\"", "\"<blank>\"");
            *json = serde_json::from_str(&text).unwrap();
        });
        let err = load(PromptConfig::new(&no_pad, 16));
        assert_eq!(
            err,
            format!(
                "{}: no pad id: the tokenizer has no padding section and no `<pad>` token; set pad_id",
                no_pad.display()
            )
        );
        let mut config = PromptConfig::new(&no_pad, 16);
        config.pad_id = Some(0);
        assert!(
            PromptTokenizer::load(&config).is_ok(),
            "an explicit pad_id is enough"
        );
        config.pad_id = Some(100_000);
        assert!(load(config).ends_with("pad_id 100000 is not a token of this tokenizer"));

        let tokenizer = PromptTokenizer::load(&PromptConfig::new(fixture(), 16)).unwrap();
        let long = "a".repeat(MAX_PROMPT_BYTES + 1);
        let err = tokenizer.encode(&long).unwrap_err().to_string();
        assert_eq!(err, "prompt is 4097 bytes, more than the limit of 4096");
        assert!(
            tokenizer.encode(&long[1..]).unwrap().truncated,
            "4096 bytes is accepted"
        );
    }

    #[test]
    fn config_fields_have_defaults_and_typos_are_rejected() {
        let config: PromptConfig =
            toml::from_str("tokenizer = \"t.json\"\nmax_length = 48\nclean = true").unwrap();
        assert_eq!(
            config,
            PromptConfig {
                clean: true,
                ..PromptConfig::new("t.json", 48)
            }
        );
        let err = toml::from_str::<PromptConfig>("tokenizer = \"t\"\nmax_length = 48\nmax_len = 4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_len`"), "{err}");
        let err = toml::from_str::<PromptConfig>(
            "tokenizer = \"t\"\nmax_length = 48\npadding_side = \"top\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown variant `top`"), "{err}");

        let schema = serde_json::to_value(schemars::schema_for!(PromptConfig)).unwrap();
        let fields: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields.len(), 7, "{fields:?}");
        assert_eq!(schema["required"], json!(["tokenizer", "max_length"]));
        assert_eq!(schema["additionalProperties"], json!(false));
    }

    /// Python prepares and encodes each prompt under each setting; prints the ids,
    /// and the code points Python's `str.isspace()` accepts.
    const LIVE_PYTHON: &str = r#"
import json, sys
from tokenizers import Tokenizer
job = json.load(sys.stdin)
out = {"isspace": [c for c in range(0x110000) if chr(c).isspace()], "results": []}
for s in job["settings"]:
    tok = Tokenizer.from_file(s["tokenizer"])
    pad_id = s["pad_id"]
    if pad_id is None:
        pad_id = tok.padding["pad_id"] if tok.padding else tok.token_to_id("<pad>")
    direction = tok.truncation["direction"] if tok.truncation else "right"
    tok.enable_padding(length=s["max_length"], pad_id=pad_id, direction=s["padding_side"])
    tok.enable_truncation(max_length=s["max_length"], direction=direction)
    rows = []
    for text in job["prompts"]:
        if s["clean"]:
            text = text.strip().replace("_", " ").replace("\n", " ")
        if s["append_newline"] and not text.endswith("\n"):
            text += "\n"
        e = tok.encode(text, add_special_tokens=s["add_special_tokens"])
        rows.append({"input_ids": e.ids, "attention_mask": e.attention_mask,
                     "truncated": len(e.overflowing) > 0})
    out["results"].append(rows)
json.dump(out, sys.stdout)
"#;

    fn random_prompts(count: usize, seed: u64) -> Vec<String> {
        const PIECES: &[&str] = &[
            "pick", " up", " the", " red", " cube", " bowl", "place", " in", "open", " drawer",
            "_", "\n", " ", "  ", "\t", "é", "ñ", "ß", "İ", "☕", "🤖", "東京", "\u{1c}", "\u{1f}",
            "\u{a0}", "\u{3000}", "\u{200b}", "<bos>", "<eos>", "<pad>", "<unk>", "<0x41>", "A",
            "Z", "7", ".", ",", "!",
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let n = rng.random_range(0..40);
                (0..n)
                    .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_live_python_tokenizers_on_fresh_prompts() {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        if !python.exists() {
            eprintln!(
                "skipped: {} not found (make setup creates it)",
                python.display()
            );
            return;
        }
        let mut prompts = random_prompts(40, 0x5eed);
        prompts.extend(
            [
                "",
                "\n",
                "_",
                " \u{1c} ",
                "Pour the crème into the café cup 🤖\n\n",
                "put <bos><bos> down",
            ]
            .map(String::from),
        );
        let left_truncating = edited_fixture("live-left-trunc", |json| {
            json["truncation"] = json!({"direction": "Left", "max_length": 3,
                "strategy": "LongestFirst", "stride": 0});
            json["padding"] = json!({"strategy": "BatchLongest", "direction": "Right",
                "pad_to_multiple_of": null, "pad_id": 1, "pad_type_id": 0, "pad_token": "<eos>"});
        });
        let fixture = fixture();
        let setting =
            |tokenizer: &Path, max_length: usize, side: &str, clean: bool, special: bool| {
                json!({"tokenizer": tokenizer, "max_length": max_length, "padding_side": side,
                "pad_id": null, "add_special_tokens": special, "append_newline": special,
                "clean": clean})
            };
        let settings = vec![
            setting(&fixture, 12, "right", false, true),
            setting(&fixture, 12, "left", true, true),
            setting(&fixture, 48, "right", true, true),
            setting(&fixture, 5, "right", false, false),
            setting(&left_truncating, 10, "left", false, true),
        ];
        let job = json!({"settings": settings, "prompts": prompts});

        let mut child = Command::new(&python)
            .args(["-c", LIVE_PYTHON])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), job.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();

        let python_spaces: Vec<u32> = serde_json::from_value(reply["isspace"].clone()).unwrap();
        let ours: Vec<u32> = (0..0x110000u32)
            .filter(|&c| char::from_u32(c).is_some_and(is_python_space))
            .collect();
        assert_eq!(ours, python_spaces);

        let mut truncated = 0;
        for (setting, rows) in settings.iter().zip(reply["results"].as_array().unwrap()) {
            let config = config_of(setting, Path::new(setting["tokenizer"].as_str().unwrap()));
            let tokenizer = PromptTokenizer::load(&config).unwrap();
            for (prompt, row) in prompts.iter().zip(rows.as_array().unwrap()) {
                let got = tokenizer.encode(prompt).unwrap();
                assert_eq!(got, expected(row), "setting {setting}, prompt {prompt:?}");
                truncated += usize::from(got.truncated);
            }
        }
        assert!(truncated >= 20, "{truncated}");
    }
}
