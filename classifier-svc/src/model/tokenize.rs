//! Text -> token ids with truncation to the model's max length (special tokens included).
//! Runs on request tasks, never on the inference thread.

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the first `max_length` tokens and report it.
    #[default]
    Truncate,
    /// Refuse texts over `max_length`.
    Reject,
}

#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    pub fn load(path: &std::path::Path, max_length: usize, model: &str) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| Error::load(model, format!("tokenizer.json: {e}")))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::load(model, format!("tokenizer truncation: {e}")))?;
        inner.with_padding(None);
        Ok(Self { inner, max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn encode(&self, text: &str, truncation: Truncation) -> Result<Encoded> {
        if text.trim().is_empty() {
            return Err(Error::InvalidArgument("text is empty".into()));
        }
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let truncated = !enc.get_overflowing().is_empty();
        if truncated && truncation == Truncation::Reject {
            return Err(Error::InvalidArgument(format!(
                "text is longer than the model's max length of {} tokens and truncation is REJECT",
                self.max_length
            )));
        }
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            truncated,
        })
    }
}
