//! ModernBERT encoder (answerdotai/ModernBERT and its fine-tunes), over candle tensors.
//!
//! Same computation as Hugging Face `ModernBertModel` (pre-norm layers, rotary embeddings with a
//! global and a local theta, sliding-window attention on all but every n-th layer, GeGLU MLP); the
//! attention (mask, window, rotary) is `attention::attend`, shared with BERT.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::attention::{self, Rotary};
use super::config::{Activation, EncoderConfig};
use super::ops::{self, Linear};

struct Layer {
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    local: bool,
}

pub struct ModernBert {
    tok_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    global_rope: Rotary,
    local_rope: Rotary,
    window: usize,
    num_heads: usize,
    head_dim: usize,
    intermediate: usize,
    act: Activation,
}

impl ModernBert {
    pub fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let m = vb.pp("model");
        let tok_embeddings = m.get((cfg.vocab_size, h), "embeddings.tok_embeddings.weight")?;
        let embed_norm = ops::layer_norm(&m.pp("embeddings.norm"), h, eps)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let l = m.pp(format!("layers.{i}"));
            // Layer 0 has no attn_norm in Hugging Face checkpoints (an Identity).
            let attn_norm = if l.contains_tensor("attn_norm.weight") {
                Some(ops::layer_norm(&l.pp("attn_norm"), h, eps)?)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm,
                wqkv: Linear::load(&l.pp("attn.Wqkv"), h, 3 * h)?,
                wo: Linear::load(&l.pp("attn.Wo"), h, h)?,
                mlp_norm: ops::layer_norm(&l.pp("mlp_norm"), h, eps)?,
                wi: Linear::load(&l.pp("mlp.Wi"), h, 2 * cfg.intermediate_size)?,
                mlp_wo: Linear::load(&l.pp("mlp.Wo"), cfg.intermediate_size, h)?,
                local: i % cfg.global_attn_every_n_layers != 0,
            });
        }
        let final_norm = ops::layer_norm(&m.pp("final_norm"), h, eps)?;
        let head_dim = h / cfg.num_heads;
        let max_len = cfg.max_position_embeddings;
        Ok(Self {
            tok_embeddings,
            embed_norm,
            layers,
            final_norm,
            global_rope: Rotary::new(
                head_dim,
                max_len,
                cfg.global_rope_theta,
                vb.dtype(),
                vb.device(),
            )?,
            local_rope: Rotary::new(
                head_dim,
                max_len,
                cfg.local_rope_theta,
                vb.dtype(),
                vb.device(),
            )?,
            window: cfg.local_attention / 2,
            num_heads: cfg.num_heads,
            head_dim,
            intermediate: cfg.intermediate_size,
            act: cfg.hidden_act,
        })
    }

    /// `input_ids` `(b, t)` right-padded, `lengths[b]` real tokens per row -> hidden `(b, t, h)`.
    pub fn forward(&self, input_ids: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.num_heads * self.head_dim;
        let x = self
            .tok_embeddings
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let mut x = self.embed_norm.forward(&x)?;
        for layer in &self.layers {
            let normed = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let qkv = layer.wqkv.forward(&normed)?;
            let (rope, window) = if layer.local {
                (&self.local_rope, Some(self.window))
            } else {
                (&self.global_rope, None)
            };
            let ctx = attention::attend(&qkv, self.num_heads, lengths, window, Some(rope))?;
            x = (x + layer.wo.forward(&ctx)?)?;
            let wi = layer.wi.forward(&layer.mlp_norm.forward(&x)?)?;
            let input = wi.narrow(2, 0, self.intermediate)?;
            let gate = wi.narrow(2, self.intermediate, self.intermediate)?;
            let mlp = (ops::activate(&input, self.act)? * gate)?;
            x = (x + layer.mlp_wo.forward(&mlp)?)?;
        }
        self.final_norm.forward(&x)
    }
}
