//! reflex-policies: policies on ONNX Runtime.
//!
//! - [`onnxruntime`]: finds and loads `libonnxruntime.so` once per process;
//! - [`preprocess`]: turns an observation into model inputs (resize, normalize);
//! - [`chunk`]: the `chunk` policy, a model mapping observations to `[1, H, D]`;
//! - [`fast`]: the FAST action-token codec; [`fast_policy`]: the autoregressive `fast` policy;
//! - [`prompt`]: a VLA's task instruction as fixed-length `input_ids` / `attention_mask`.

pub mod chunk;
pub mod fast;
pub mod fast_policy;
pub mod generative;
pub mod inspect;
pub mod normalize;
pub mod onnxruntime;
pub mod preprocess;
pub mod prompt;

pub use chunk::{ChunkPolicy, PolicyLoadError};
