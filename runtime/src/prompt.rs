//! The task instruction given to language-conditioned policies (VLAs): set from
//! the launch file's `[task]`, changed at run time through the control socket
//! (`reflex prompt`). Only the inference thread reads it, between inferences, and
//! hands a new one to the policy, which tokenizes it; the tick never touches it.

use std::sync::{Arc, Mutex, PoisonError};

/// Longest instruction, bytes (a paragraph; tokenizers cost grows with it).
pub const MAX_PROMPT_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptError {
    #[error("the instruction is {0} bytes; at most {MAX_PROMPT_BYTES}")]
    TooLong(usize),
    #[error("the instruction has control characters other than newlines and tabs")]
    ControlCharacters,
}

/// Checks an instruction before it is accepted.
pub fn check_prompt(text: &str) -> Result<(), PromptError> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(PromptError::TooLong(text.len()));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(PromptError::ControlCharacters);
    }
    Ok(())
}

/// The current instruction and how often it changed.
#[derive(Debug, Clone, Default)]
pub struct PromptCell {
    inner: Arc<Mutex<(u64, String)>>,
}

impl PromptCell {
    pub fn new(text: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new((1, text.to_string()))),
        }
    }

    /// Replaces the instruction (the next inference uses it).
    pub fn set(&self, text: &str) -> Result<(), PromptError> {
        check_prompt(text)?;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0 += 1;
        inner.1 = text.to_string();
        Ok(())
    }

    /// The instruction and its version when it changed after version `seen`.
    pub fn newer_than(&self, seen: u64) -> Option<(u64, String)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.0 > seen).then(|| (inner.0, inner.1.clone()))
    }

    pub fn get(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_changes_and_bad_text_is_refused() {
        let cell = PromptCell::new("pick up the block");
        let (v1, text) = cell.newer_than(0).unwrap();
        assert_eq!(text, "pick up the block");
        assert!(cell.newer_than(v1).is_none());
        cell.set("open the drawer").unwrap();
        assert_eq!(cell.newer_than(v1).unwrap().1, "open the drawer");
        assert_eq!(cell.set(&"x".repeat(5000)), Err(PromptError::TooLong(5000)));
        assert_eq!(cell.set("a\u{7}b"), Err(PromptError::ControlCharacters));
        assert_eq!(cell.get(), "open the drawer");
    }
}
