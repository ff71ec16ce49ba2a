//! Fast CPU kernels for the non-matmul hot spots of an encoder forward pass.
//!
//! candle's CPU GELU and softmax call scalar `erf`/`exp` per element; at classifier sizes they cost
//! as much as the matmuls. These kernels use branch-free polynomial `exp`/`erf` that LLVM vectorises
//! (AVX2+FMA chosen at run time), split work over rayon, and fuse the attention mask and scale into
//! softmax. Other devices and dtypes fall back to candle's own ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, D};
use rayon::prelude::*;

// ---------- scalar building blocks (written so that LLVM vectorises loops over them) ----------

#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    // exp(x) = 2^n * exp(r), r in [-ln2/2, ln2/2]; degree-6 Taylor on r (rel. error < 2e-7).
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to nearest
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    p * scale
}

#[inline(always)]
fn gelu_erf_one(x: f32) -> f32 {
    // 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * exp_poly(-a * a);
    let erf = f32::copysign(erf_abs, z);
    0.5 * x * (1.0 + erf)
}

#[inline(always)]
fn gelu_slice_generic(src: &[f32], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = gelu_erf_one(*s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_slice_avx2(src: &[f32], dst: &mut [f32]) {
    gelu_slice_generic(src, dst)
}

fn gelu_slice(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { gelu_slice_avx2(src, dst) };
    }
    gelu_slice_generic(src, dst)
}

/// Max of a slice with 8 independent lanes, so the loop vectorises (a single running max is a
/// serial dependency chain LLVM must keep in order).
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.iter().chain(chunks.remainder()) {
        m = m.max(*v);
    }
    m
}

/// Sum of a slice with 8 independent lanes (vectorises; a running sum would not).
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// In place: `x = softmax(x * scale)`, in three vectorisable passes.
#[inline(always)]
fn softmax_in_place(x: &mut [f32], scale: f32) {
    let max = max_lanes(x);
    for v in x.iter_mut() {
        *v = exp_poly((*v - max) * scale);
    }
    let inv = 1.0 / sum_lanes(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Softmax of `row[lo..hi] * scale` in place; the rest of the row becomes 0 (masked keys).
#[inline(always)]
fn softmax_row_generic(row: &mut [f32], lo: usize, hi: usize, scale: f32) {
    let (head, rest) = row.split_at_mut(hi);
    rest.fill(0.0);
    let (dead, live) = head.split_at_mut(lo);
    dead.fill(0.0);
    softmax_in_place(live, scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(rows: &mut [f32], cols: usize, mask: KeyMask, scale: f32) {
    softmax_rows_generic(rows, cols, mask, scale)
}

#[inline(always)]
fn softmax_rows_generic(rows: &mut [f32], cols: usize, mask: KeyMask, scale: f32) {
    for (i, row) in rows.chunks_exact_mut(cols).enumerate() {
        let (lo, hi) = mask.range(i);
        softmax_row_generic(row, lo, hi, scale)
    }
}

/// Which keys a query row may attend to: the first `valid` ones, optionally only those within
/// `window` positions of the query (ModernBERT's local attention).
#[derive(Clone, Copy)]
struct KeyMask {
    valid: usize,
    window: Option<usize>,
}

impl KeyMask {
    #[inline(always)]
    fn range(&self, query: usize) -> (usize, usize) {
        match self.window {
            None => (0, self.valid),
            Some(w) => {
                let lo = query.saturating_sub(w).min(self.valid);
                let hi = (query + w + 1).min(self.valid).max(lo);
                if lo == hi {
                    // A padding query past every real key: attend to the last real key.
                    (self.valid.saturating_sub(1), self.valid)
                } else {
                    (lo, hi)
                }
            }
        }
    }
}

fn softmax_rows(rows: &mut [f32], cols: usize, mask: KeyMask, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { softmax_rows_avx2(rows, cols, mask, scale) };
    }
    softmax_rows_generic(rows, cols, mask, scale)
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fast kernels need a contiguous tensor"),
    }
}

const CHUNK: usize = 16 * 1024;

// ---------- GELU ----------

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l)?;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| gelu_slice(s, d));
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

fn is_fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Exact (erf) GELU, as Hugging Face's "gelu".
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if is_fast_path(x) {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

// ---------- masked, scaled softmax for attention ----------

/// Softmax over the last dim of attention scores `(b, h, q, k)` after multiplying by `scale`,
/// where only the first `lengths[b]` keys of batch row `b` are real tokens (right padding).
struct MaskedSoftmax<'a> {
    lengths: &'a [usize],
    window: Option<usize>,
    scale: f32,
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l)?;
        let (b, h, q, k) = l.shape().dims4()?;
        if self.lengths.len() != b {
            candle_core::bail!(
                "masked softmax: {} lengths for batch {b}",
                self.lengths.len()
            )
        }
        let mut dst = src.to_vec();
        let per_batch = h * q * k;
        dst.par_chunks_mut(q * k).enumerate().for_each(|(i, rows)| {
            let valid = self.lengths[i * q * k / per_batch].min(k);
            let mask = KeyMask {
                valid,
                window: self.window,
            };
            softmax_rows(rows, k, mask, self.scale)
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

/// Attention probabilities from raw scores `(b, h, q, k)`: `softmax(scores * scale)` with keys past
/// `lengths[b]` masked out, and with `window` only keys within that distance of the query.
/// Falls back to an additive mask + candle softmax off the CPU fast path.
pub fn masked_softmax(
    scores: &Tensor,
    lengths: &[usize],
    window: Option<usize>,
    scale: f32,
) -> Result<Tensor> {
    if is_fast_path(scores) {
        return scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax {
            lengths,
            window,
            scale,
        });
    }
    let (b, _h, q, k) = scores.dims4()?;
    let mut mask = Vec::with_capacity(b * q * k);
    for &n in lengths {
        let n = n.min(k);
        for qi in 0..q {
            let (lo, hi) = KeyMask { valid: n, window }.range(qi);
            mask.extend((0..k).map(|j| {
                if (lo..hi).contains(&j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    let mask = Tensor::from_vec(mask, (b, 1, q, k), scores.device())?.to_dtype(scores.dtype())?;
    let s = (scores.affine(scale as f64, 0.0)?).broadcast_add(&mask)?;
    candle_nn::ops::softmax_last_dim(&s)
}

// ---------- Linear over (.., in) inputs as one 2-D matmul ----------

/// `x @ W^T + b` computed as one matrix product over all leading dims (candle's `Linear` runs a
/// batched product per batch row, which wastes the gemm kernel on short sequences).
#[derive(Clone, Debug)]
pub struct Linear {
    /// Stored transposed and contiguous: `(in, out)`.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }
    pub fn out_dim(&self) -> usize {
        self.weight_t.dims()[1]
    }
    pub fn dtype(&self) -> candle_core::DType {
        self.weight_t.dtype()
    }
    /// The weights `(in, out)` and bias, for a copy outside candle (`fast`).
    pub(crate) fn parts(&self) -> (&Tensor, Option<&Tensor>) {
        (&self.weight_t, self.bias.as_ref())
    }
    /// Splits the inputs at `at`: a `Linear` over the first `at` (with the bias) and the
    /// weights of the others, `(in - at, out)`, one row per input.
    pub fn split_inputs(&self, at: usize) -> Result<(Linear, Tensor)> {
        let inputs = self.weight_t.dim(0)?;
        let head = Linear {
            weight_t: self.weight_t.narrow(0, 0, at)?.contiguous()?,
            bias: self.bias.clone(),
        };
        Ok((
            head,
            self.weight_t.narrow(0, at, inputs - at)?.contiguous()?,
        ))
    }
    /// Loads `<prefix>.weight` `(out, in)` and `<prefix>.bias` if the checkpoint has it.
    pub fn load(vb: &candle_nn::VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = if vb.contains_tensor("bias") {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::new(w, b)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.out_dim();
        y.reshape(out)
    }
}

/// LayerNorm through candle's fused kernel; a missing bias (ModernBERT) becomes zeros so the
/// fused path still applies.
pub fn layer_norm(
    vb: &candle_nn::VarBuilder,
    size: usize,
    eps: f64,
) -> Result<candle_nn::LayerNorm> {
    let w = vb.get(size, "weight").or_else(|_| vb.get(size, "gamma"))?;
    let b = if vb.contains_tensor("bias") {
        vb.get(size, "bias")?
    } else if vb.contains_tensor("beta") {
        vb.get(size, "beta")?
    } else {
        Tensor::zeros(size, w.dtype(), w.device())?
    };
    Ok(candle_nn::LayerNorm::new(w, b, eps))
}

/// Applies a Hugging Face activation.
pub fn activate(x: &Tensor, act: crate::config::Activation) -> Result<Tensor> {
    use crate::config::Activation::*;
    match act {
        GeluErf => gelu_erf(x),
        GeluTanh => x.gelu(),
        Relu => x.relu(),
        Silu => x.silu(),
        Tanh => x.tanh(),
    }
}

/// Sum over dim 1 of `(b, t, h)` hidden states, keeping only the first `lengths[b]` positions,
/// divided by the length: masked mean pooling -> `(b, h)`.
pub fn mean_pool(hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let rows = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| hidden.get(i)?.narrow(0, 0, n.max(1))?.mean(0))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

/// First token of each sequence: `(b, t, h)` -> `(b, h)`.
pub fn cls_pool(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)?.contiguous()
}

/// Row-wise L2 normalisation of `(b, h)`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gelu_matches_candle() {
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 / 200.0).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let fast: Vec<f32> = gelu_erf(&t).unwrap().to_vec1().unwrap();
        let slow: Vec<f32> = t.gelu_erf().unwrap().to_vec1().unwrap();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn exp_is_accurate() {
        for i in -800..800 {
            let x = i as f32 / 10.0;
            let (a, b) = (exp_poly(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "exp({x}): {a} vs {b}");
        }
    }

    #[test]
    fn masked_softmax_matches_additive_mask() {
        let dev = Device::Cpu;
        let scores = Tensor::randn(0f32, 3.0, (2, 3, 4, 5), &dev).unwrap();
        let lengths = [5usize, 2];
        let fast = masked_softmax(&scores, &lengths, None, 0.5).unwrap();
        let mask = Tensor::new(
            &[[0f32, 0., 0., 0., 0.], [0., 0., -1e30, -1e30, -1e30]],
            &dev,
        )
        .unwrap()
        .reshape((2, 1, 1, 5))
        .unwrap();
        let slow = candle_nn::ops::softmax_last_dim(
            &(scores * 0.5).unwrap().broadcast_add(&mask).unwrap(),
        )
        .unwrap();
        let diff: f32 = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}

// ---------- fused attention for short sequences ----------

/// Sequences up to this many tokens use [`fused_attention`]; longer ones go through gemm, which
/// measured faster from ~256 tokens at batch 1 (see classifier-svc/BENCH.md).
pub const FUSED_ATTENTION_MAX_LEN: usize = 128;

/// The threshold in force: `SEMROUTE_FUSED_MAX_LEN` overrides it, to measure the crossover.
pub fn fused_max_len() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("SEMROUTE_FUSED_MAX_LEN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(FUSED_ATTENTION_MAX_LEN)
    })
}

/// Rotary tables `(positions, head_dim / 2)`, row-major, for the fused kernel.
#[derive(Clone, Copy)]
pub struct RopeTables<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

struct FusedAttention<'a> {
    lengths: &'a [usize],
    window: Option<usize>,
    scale: f32,
    num_heads: usize,
    rope: Option<RopeTables<'a>>,
}

#[inline(always)]
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for d in 0..half {
        let (x1, x2) = (x[d], x[d + half]);
        x[d] = x1 * cos[d] - x2 * sin[d];
        x[d + half] = x2 * cos[d] + x1 * sin[d];
    }
}

/// One (batch row, head): softmax(q k^T) v over the allowed keys, written to `out`
/// (`len x head_dim`). `q` (`len x hd`, already scaled), `kt` (`hd x len`, keys transposed so
/// score rows are contiguous FMA streams) and `v` (`len x hd`).
#[inline(always)]
fn attend_head(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    hd: usize,
    mask: KeyMask,
) {
    let len = mask.valid;
    for i in 0..len {
        let (lo, hi) = mask.range(i);
        let row = &mut scores[lo..hi];
        row.fill(0.0);
        for d in 0..hd {
            let qd = q[i * hd + d];
            let keys = &kt[d * len + lo..d * len + hi];
            for (s, k) in row.iter_mut().zip(keys) {
                *s += qd * k;
            }
        }
        softmax_in_place(row, 1.0);
        let oi = &mut out[i * hd..(i + 1) * hd];
        oi.fill(0.0);
        for (j, p) in (lo..hi).zip(row.iter()) {
            for (o, vv) in oi.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                *o += p * vv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_head_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    hd: usize,
    mask: KeyMask,
) {
    attend_head(q, k, v, out, scores, hd, mask)
}

impl FusedAttention<'_> {
    /// Gathers one head's q/k/v rows from `(b, t, 3, nh, hd)`, applies rotary, attends.
    fn head(&self, src: &[f32], t: usize, hd: usize, bi: usize, head: usize) -> Vec<f32> {
        let nh = self.num_heads;
        let h = nh * hd;
        let len = self.lengths[bi].min(t);
        let gather = |which: usize| {
            let mut m = vec![0f32; len * hd];
            for i in 0..len {
                let at = ((bi * t + i) * 3 + which) * h + head * hd;
                m[i * hd..(i + 1) * hd].copy_from_slice(&src[at..at + hd]);
            }
            m
        };
        let (mut q, mut k, v) = (gather(0), gather(1), gather(2));
        if let Some(r) = self.rope {
            let half = hd / 2;
            for i in 0..len {
                let (c, s) = (
                    &r.cos[i * half..(i + 1) * half],
                    &r.sin[i * half..(i + 1) * half],
                );
                rotate(&mut q[i * hd..(i + 1) * hd], c, s);
                rotate(&mut k[i * hd..(i + 1) * hd], c, s);
            }
        }
        for x in q.iter_mut() {
            *x *= self.scale;
        }
        let mut kt = vec![0f32; len * hd];
        for i in 0..len {
            for d in 0..hd {
                kt[d * len + i] = k[i * hd + d];
            }
        }
        let k = kt;
        let mut out = vec![0f32; len * hd];
        let mut scores = vec![0f32; len];
        let mask = KeyMask {
            valid: len,
            window: self.window,
        };
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { attend_head_avx2(&q, &k, &v, &mut out, &mut scores, hd, mask) };
            return out;
        }
        attend_head(&q, &k, &v, &mut out, &mut scores, hd, mask);
        out
    }
}

impl CustomOp1 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l)?;
        let dims = l.shape().dims();
        let [b, t, 3, nh, hd] = dims else {
            candle_core::bail!("fused attention wants (b, t, 3, heads, head_dim), got {dims:?}")
        };
        let (b, t, nh, hd) = (*b, *t, *nh, *hd);
        if nh != self.num_heads || self.lengths.len() != b {
            candle_core::bail!(
                "fused attention: shape {dims:?} vs {} heads, {} lengths",
                self.num_heads,
                self.lengths.len()
            )
        }
        if let Some(r) = self.rope {
            if r.cos.len() < t * hd / 2 || r.sin.len() < t * hd / 2 {
                candle_core::bail!("fused attention: rotary tables shorter than {t} positions")
            }
        }
        let h = nh * hd;
        let heads: Vec<(usize, usize, Vec<f32>)> = (0..b * nh)
            .into_par_iter()
            .map(|job| {
                let (bi, head) = (job / nh, job % nh);
                (bi, head, self.head(src, t, hd, bi, head))
            })
            .collect();
        // Padded query rows stay zero: nothing downstream reads them.
        let mut dst = vec![0f32; b * t * h];
        for (bi, head, out) in heads {
            for (i, row) in out.chunks_exact(hd).enumerate() {
                let at = (bi * t + i) * h + head * hd;
                dst[at..at + hd].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(dst), Shape::from((b, t, h))))
    }
}

/// Attention straight from the fused QKV projection `(b, t, 3 * h)` -> context `(b, t, h)`, for
/// short f32 CPU batches: no transposes, no per-head gemm calls, mask/window/rotary fused.
/// Returns `None` when the batch should take the gemm path instead.
pub fn fused_attention(
    qkv: &Tensor,
    num_heads: usize,
    lengths: &[usize],
    window: Option<usize>,
    rope: Option<RopeTables<'_>>,
) -> Result<Option<Tensor>> {
    let (b, t, three_h) = qkv.dims3()?;
    if !is_fast_path(qkv) || t > fused_max_len() {
        return Ok(None);
    }
    let hd = three_h / 3 / num_heads;
    let x = qkv.reshape((b, t, 3, num_heads, hd))?.contiguous()?;
    let scale = 1.0 / (hd as f32).sqrt();
    let op = FusedAttention {
        lengths,
        window,
        scale,
        num_heads,
        rope,
    };
    Ok(Some(x.apply_op1_no_bwd(&op)?))
}
