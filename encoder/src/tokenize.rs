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
    /// Byte range of each token in the text (`(0, 0)` for special tokens); empty unless asked
    /// for (token-classification heads need them; computing them costs time).
    pub offsets: Vec<(usize, usize)>,
    /// Per token: whether it starts a word (the pre-tokenizer's words: whitespace and punctuation
    /// split them); filled with `offsets`.
    pub word_starts: Vec<bool>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer without truncation: windows over a whole long text.
    whole: Tokenizer,
    /// Special tokens the model adds before and after a text's own tokens.
    wrap: (Vec<u32>, Vec<u32>),
    max_length: usize,
}

impl TextTokenizer {
    pub fn load(path: &std::path::Path, max_length: usize, model: &str) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| Error::load(model, format!("tokenizer.json: {e}")))?;
        let mut whole = inner.clone();
        whole
            .with_truncation(None)
            .map_err(|e| Error::load(model, format!("tokenizer truncation: {e}")))?;
        whole.with_padding(None);
        let probe = |special: bool| {
            whole
                .encode_fast("a", special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::load(model, format!("tokenizer: {e}")))
        };
        let (with, without) = (probe(true)?, probe(false)?);
        let at = with
            .windows(without.len().max(1))
            .position(|w| w == without.as_slice())
            .unwrap_or(0);
        let wrap = if without.is_empty() {
            (with.clone(), Vec::new())
        } else {
            (with[..at].to_vec(), with[at + without.len()..].to_vec())
        };
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::load(model, format!("tokenizer truncation: {e}")))?;
        inner.with_padding(None);
        Ok(Self {
            inner,
            whole,
            wrap,
            max_length,
        })
    }

    /// The text's own token ids, untruncated (no special tokens).
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .whole
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Special tokens added before and after a text's own tokens.
    pub fn wrap(&self) -> (&[u32], &[u32]) {
        (&self.wrap.0, &self.wrap.1)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn encode(&self, text: &str, truncation: Truncation) -> Result<Encoded> {
        self.encode_with(text, truncation, false)
    }

    /// `encode`, with each token's byte offsets when `offsets` is set.
    pub fn encode_with(
        &self,
        text: &str,
        truncation: Truncation,
        offsets: bool,
    ) -> Result<Encoded> {
        if text.trim().is_empty() {
            return Err(Error::InvalidArgument("text is empty".into()));
        }
        let enc = if offsets {
            self.inner.encode(text, true)
        } else {
            self.inner.encode_fast(text, true)
        }
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
            offsets: if offsets {
                enc.get_offsets().to_vec()
            } else {
                Vec::new()
            },
            word_starts: if offsets {
                let w = enc.get_word_ids();
                (0..w.len())
                    .map(|i| w[i].is_some() && (i == 0 || w[i] != w[i - 1]))
                    .collect()
            } else {
                Vec::new()
            },
        })
    }
}
