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
    /// The same ids for ASCII texts without the general pipeline (uncased BERT tokenizers).
    ascii: Option<crate::wordpiece::AsciiWordPiece>,
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
        let ascii = crate::wordpiece::AsciiWordPiece::from_tokenizer(&whole);
        Ok(Self {
            inner,
            whole,
            wrap,
            max_length,
            ascii,
        })
    }

    /// The text's own token ids, untruncated (no special tokens).
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.ascii.as_ref().and_then(|a| a.content_ids(text)) {
            return Ok(ids);
        }
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
        if !offsets {
            if let Some(content) = self.ascii.as_ref().and_then(|a| a.content_ids(text)) {
                return self.wrap_content(content, truncation);
            }
        }
        let enc = if offsets {
            self.inner.encode(text, true)
        } else {
            self.inner.encode_fast(text, true)
        }
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let truncated = !enc.get_overflowing().is_empty();
        self.allow(truncated, truncation)?;
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

    /// A text's own ids with the special tokens around them, truncated as the pipeline does.
    pub(crate) fn wrap_content(
        &self,
        mut content: Vec<u32>,
        truncation: Truncation,
    ) -> Result<Encoded> {
        let (pre, post) = (&self.wrap.0, &self.wrap.1);
        let room = self.max_length.saturating_sub(pre.len() + post.len());
        let truncated = content.len() > room;
        self.allow(truncated, truncation)?;
        content.truncate(room);
        let mut ids = Vec::with_capacity(pre.len() + content.len() + post.len());
        ids.extend_from_slice(pre);
        ids.extend_from_slice(&content);
        ids.extend_from_slice(post);
        Ok(Encoded {
            ids,
            truncated,
            offsets: Vec::new(),
            word_starts: Vec::new(),
        })
    }

    /// A truncated text is an error under `Truncation::Reject`.
    fn allow(&self, truncated: bool, truncation: Truncation) -> Result<()> {
        if truncated && truncation == Truncation::Reject {
            return Err(Error::InvalidArgument(format!(
                "text is longer than the model's max length of {} tokens and truncation is REJECT",
                self.max_length
            )));
        }
        Ok(())
    }
}
