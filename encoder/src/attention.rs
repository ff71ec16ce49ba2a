//! Multi-head self-attention from a fused QKV projection, shared by both encoders: the fused CPU
//! kernel for short sequences (`ops::fused_attention`), batched gemm otherwise, with the padding
//! mask, an optional sliding window and optional rotary embeddings.

use candle_core::{DType, Device, Result, Tensor};

use super::ops;

/// Rotary position embeddings (non-interleaved halves, as Hugging Face's `rotate_half`).
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// The same tables as f32 rows, for the fused CPU attention kernel.
    cos_f32: Vec<f32>,
    sin_f32: Vec<f32>,
}

impl Rotary {
    pub fn new(
        head_dim: usize,
        max_len: usize,
        theta: f64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let inv: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f64 / head_dim as f64) as f32)
            .collect();
        let n = inv.len();
        let inv = Tensor::from_vec(inv, (1, n), dev)?;
        let t = Tensor::arange(0u32, max_len as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let freqs = t.matmul(&inv)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        Ok(Self {
            cos_f32: cos.flatten_all()?.to_vec1()?,
            sin_f32: sin.flatten_all()?.to_vec1()?,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
        })
    }

    fn tables(&self) -> ops::RopeTables<'_> {
        ops::RopeTables {
            cos: &self.cos_f32,
            sin: &self.sin_f32,
        }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(2)?;
        candle_nn::rotary_emb::rope(
            x,
            &self.cos.narrow(0, 0, t)?.contiguous()?,
            &self.sin.narrow(0, 0, t)?.contiguous()?,
        )
    }
}

/// `qkv` `(b, t, 3 * h)` -> context `(b, t, h)`, each row attending to its first `lengths[row]`
/// keys (and only those within `window` of the query, if set).
pub fn attend(
    qkv: &Tensor,
    num_heads: usize,
    lengths: &[usize],
    window: Option<usize>,
    rope: Option<&Rotary>,
) -> Result<Tensor> {
    if let Some(ctx) =
        ops::fused_attention(qkv, num_heads, lengths, window, rope.map(Rotary::tables))?
    {
        return Ok(ctx);
    }
    let (b, t, three_h) = qkv.dims3()?;
    let h = three_h / 3;
    let head_dim = h / num_heads;
    let qkv = qkv.reshape((b, t, 3, num_heads, head_dim))?;
    let split = |i: usize| {
        qkv.narrow(2, i, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()
    };
    let (mut q, mut k, v) = (split(0)?, split(1)?, split(2)?);
    if let Some(r) = rope {
        q = r.apply(&q)?;
        k = r.apply(&k)?;
    }
    let scores = q.matmul(&k.t()?)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let probs = ops::masked_softmax(&scores, lengths, window, scale)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))
}
