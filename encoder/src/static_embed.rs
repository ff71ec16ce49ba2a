//! Static token embeddings (the model2vec format): one vector per vocabulary token, distilled
//! from a sentence encoder (`semroute-train distill`), or any model2vec model from the hub. A
//! text's embedding is the mean of its tokens' vectors: no layers, no attention, so it costs a
//! table look-up per token. The fast tier of the classification cascade, where the encoder's
//! few hundred texts a second per core would leave requests unclassified.
//!
//! Files: `config.json` (`model_type: model2vec`, `hidden_dim`), `model.safetensors` (one
//! tensor `embeddings`, vocabulary x dimensions, token weights already folded in) and
//! `tokenizer.json`. Special tokens that the tokenizer adds carry zero vectors in a distilled
//! table, so they take no part in the (L2-normalised) mean.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// The token table, `(vocab, dim)`.
pub struct StaticEmbed {
    table: Tensor,
}

impl StaticEmbed {
    /// The `embeddings` tensor of the checkpoint, checked against the configured dimension.
    pub fn load(vb: &VarBuilder, dim: usize, id: &str) -> Result<Self> {
        let table = vb
            .get_unchecked("embeddings")
            .map_err(|e| Error::load(id, format!("model.safetensors: {e}")))?;
        match table.dims() {
            [v, d] if *d == dim && *v > 0 => Ok(Self { table }),
            dims => Err(Error::load(
                id,
                format!("embeddings of shape {dims:?}: expected (vocab, {dim})"),
            )),
        }
    }

    pub fn table(&self) -> &Tensor {
        &self.table
    }

    pub fn vocab_size(&self) -> usize {
        self.table.dims()[0]
    }

    /// `(b, t)` token ids to `(b, t, dim)` token vectors. Ids past the table (a tokenizer
    /// larger than the table) are an error, not a panic.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let max = flat.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.vocab_size() {
            return Err(Error::InvalidArgument(format!(
                "token id {max} is past the static table's {} rows (tokenizer and table differ)",
                self.vocab_size()
            )));
        }
        let rows = candle_nn::Embedding::new(self.table.clone(), self.table.dims()[1]);
        Ok(rows.forward(&flat)?.reshape((b, t, self.table.dims()[1]))?)
    }
}
