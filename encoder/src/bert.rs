//! BERT-family encoder (BERT, MiniLM, and checkpoints with the same tensor names), written over
//! candle tensors so the attention mask, GELU and softmax use the fused kernels in `ops`.
//!
//! Tensor names follow Hugging Face `BertModel`, with or without the `bert.` prefix that
//! `BertForSequenceClassification` adds.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::attention;
use super::config::{Activation, EncoderConfig};
use super::ops::{self, Linear};

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_row: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    num_heads: usize,
    head_dim: usize,
    act: Activation,
}

/// `"bert."` if the checkpoint's tensors carry the prefix, else `""`.
pub fn prefix(vb: &VarBuilder) -> &'static str {
    if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    }
}

impl Bert {
    pub fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let vb = match prefix(&vb) {
            "" => vb,
            p => vb.pp(p.trim_end_matches('.')),
        };
        let emb = vb.pp("embeddings");
        let word_embeddings = emb.get((cfg.vocab_size, h), "word_embeddings.weight")?;
        let position_embeddings = emb.get(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type_row = emb
            .get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
        let embed_norm = ops::layer_norm(&emb.pp("LayerNorm"), h, cfg.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let s = a.pp("self");
            let (q, k, v) = (s.pp("query"), s.pp("key"), s.pp("value"));
            // One fused QKV product instead of three.
            let w = Tensor::cat(
                &[
                    q.get((h, h), "weight")?,
                    k.get((h, h), "weight")?,
                    v.get((h, h), "weight")?,
                ],
                0,
            )?;
            let b = Tensor::cat(
                &[q.get(h, "bias")?, k.get(h, "bias")?, v.get(h, "bias")?],
                0,
            )?;
            layers.push(Layer {
                qkv: Linear::new(w, Some(b))?,
                attn_out: Linear::load(&a.pp("output.dense"), h, h)?,
                attn_norm: ops::layer_norm(&a.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
                intermediate: Linear::load(&l.pp("intermediate.dense"), h, cfg.intermediate_size)?,
                output: Linear::load(&l.pp("output.dense"), cfg.intermediate_size, h)?,
                out_norm: ops::layer_norm(&l.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            });
        }
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_row,
            embed_norm,
            layers,
            num_heads: cfg.num_heads,
            head_dim: h / cfg.num_heads,
            act: cfg.hidden_act,
        })
    }

    /// `input_ids` `(b, t)` right-padded, `lengths[b]` real tokens per row -> hidden `(b, t, h)`.
    pub fn forward(&self, input_ids: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.num_heads * self.head_dim;
        let x = self
            .word_embeddings
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = self.position_embeddings.narrow(0, 0, t)?;
        let x = x.broadcast_add(&(pos.broadcast_add(&self.token_type_row)?))?;
        let mut x = self.embed_norm.forward(&x)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = attention::attend(&qkv, self.num_heads, lengths, None, None)?;
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let i = ops::activate(&layer.intermediate.forward(&a)?, self.act)?;
            x = layer.out_norm.forward(&(layer.output.forward(&i)? + &a)?)?;
        }
        Ok(x)
    }
}
