//! Differentiable fused ops for the trainable model families: layer norm, RMS norm, softmax
//! over the last dimension, rotary position embeddings, and dropout with seeded masks.
//!
//! # Why
//!
//! candle-nn 0.11.1 builds its fused `layer_norm`, `rms_norm`, `softmax_last_dim` and
//! `rotary_emb::rope` with `apply_op*_no_bwd` (huggingface/candle#3011), so no gradient
//! reaches an adapter placed before one. The functions here are the project's own: each is a
//! candle custom op ([`candle_core::CustomOp1`]/[`CustomOp2`](candle_core::CustomOp2)/
//! [`CustomOp3`](candle_core::CustomOp3)) with a fused forward and an explicit, fused backward
//! (itself a custom op), recorded by `Tensor::apply_op*` so `Tensor::backward` reaches it.
//!
//! GELU (erf and tanh forms) and SiLU need nothing here: candle-core 0.11.1's
//! `Tensor::gelu_erf`, `Tensor::gelu` and `Tensor::silu` (which `candle_nn::Activation` and
//! `candle_nn::ops::silu` call) are unary ops with a backward in `candle_core::backprop`.
//!
//! # Conventions
//!
//! - Every op works over the **last dimension**; all leading dimensions are rows.
//! - Layer norm uses the **biased variance** (divisor = row width), as torch's `nn.LayerNorm`;
//!   `eps` is added to the variance (to the mean square for RMS norm) before the square root,
//!   so a row of constant value (variance 0) normalises to `beta` with finite gradients.
//! - f32 and f64 compute in their own precision. **f16 and bf16 are computed in f32** (the
//!   statistics, the exponentials and the backward's sums) and rounded once to the input dtype.
//! - Outputs and gradients have the input's dtype and shape. `gamma`, `beta`, `cos` and `sin`
//!   must have the dtype of `x`.
//! - Inputs may have any layout (transposed, narrowed or broadcast views are read through their
//!   strides); outputs are contiguous.
//! - The backward computes only the gradients of inputs that track one (`Tensor::track_op`): a
//!   frozen `gamma` costs no column sums.
//!
//! # Dropout
//!
//! candle-nn's `ops::dropout` draws a float per element from candle's CPU generator, which
//! cannot be seeded, and keeps the mask as a tensor for the backward pass (five passes over
//! memory forward). [`dropout`] keys its mask on `(seed, call, element)` with the core's
//! counter-based Philox generator: a seeded model draws the same masks on every run and
//! every device, the forward is one pass, and the backward regenerates the mask instead of
//! storing it. [`DropoutStream`] numbers the calls of one model.
//!
//! # Devices
//!
//! The fused kernels run on the CPU, multi-threaded over rows with rayon, with reductions
//! written for vectorisation. On any other device these functions run the [`composed`]
//! implementations (candle's differentiable tensor ops; same conventions, slower) instead of
//! failing: there are no CUDA kernels yet. Dropout there multiplies by the same mask, built on
//! the host.

mod cpu;
mod dropout;
mod norm;
mod rotary;
mod softmax;

use candle_core::{bail, DType, Result, Tensor};

/// Checks the dtype and element count of a per-column parameter against `x`.
fn check_param(op: &str, what: &str, x: &Tensor, p: &Tensor) -> Result<()> {
    let width = x.dim(candle_core::D::Minus1)?;
    if p.dtype() != x.dtype() {
        bail!(
            "{op}: {what} is {:?}, x is {:?} (they must match)",
            p.dtype(),
            x.dtype()
        );
    }
    if p.elem_count() != width || p.rank() > 1 && p.dims().iter().rev().skip(1).any(|&d| d != 1) {
        bail!(
            "{op}: {what} of shape {:?} for rows of width {width} (needs [{width}])",
            p.dims()
        );
    }
    if !p.device().same_device(x.device()) {
        bail!("{op}: {what} and x are on different devices");
    }
    Ok(())
}

/// Fails for dtypes the fused kernels do not compute in (integers and the 8-bit floats).
fn check_float(op: &str, x: &Tensor) -> Result<()> {
    match x.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => Ok(()),
        dtype => bail!("{op}: needs an f32, f64, f16 or bf16 tensor, got {dtype:?}"),
    }
}

/// Layer normalisation over the last dimension:
/// `y = (x − mean) / sqrt(var + eps) · gamma + beta`.
///
/// `var` is the biased variance (divisor = row width), as torch's `nn.LayerNorm`; `eps` keeps
/// rows of constant value finite. `gamma` and `beta` have shape `[width]` and the dtype of `x`.
/// Statistics are computed in f32 for f16/bf16 inputs; the result has the input's dtype.
/// Gradients reach `x`, `gamma` and `beta` (one fused backward op).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    check_float("layer_norm", x)?;
    check_param("layer_norm", "gamma", x, gamma)?;
    check_param("layer_norm", "beta", x, beta)?;
    if !x.device().is_cpu() {
        return composed::layer_norm(x, gamma, beta, eps);
    }
    x.apply_op3(gamma, beta, norm::LayerNorm { eps })
}

/// RMS normalisation over the last dimension: `y = x / sqrt(mean(x²) + eps) · gamma`.
///
/// `mean(x²)` divides by the row width; `eps` keeps all-zero rows finite. `gamma` has shape
/// `[width]` and the dtype of `x`. Statistics are computed in f32 for f16/bf16 inputs; the
/// result has the input's dtype. Gradients reach `x` and `gamma`.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    check_float("rms_norm", x)?;
    check_param("rms_norm", "gamma", x, gamma)?;
    if !x.device().is_cpu() {
        return composed::rms_norm(x, gamma, eps);
    }
    x.apply_op2(gamma, norm::RmsNorm { eps })
}

/// Softmax over the last dimension, `exp(x − max) / Σ exp(x − max)` per row (the row maximum
/// is subtracted for range and does not change the result). Computed in f32 for f16/bf16; the
/// result has the input's dtype. The backward uses the output: `dx = y·(dy − Σ dy·y)`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    check_float("softmax_last_dim", x)?;
    if !x.device().is_cpu() {
        return composed::softmax_last_dim(x);
    }
    x.apply_op1(softmax::Softmax)
}

/// Rotary position embedding, the non-interleaved ("rotate half") convention of
/// `candle_nn::rotary_emb::rope` and of Llama, Mistral and Qwen2 in Hugging Face transformers.
///
/// `x` has shape `[batch, heads, seq, head_dim]` (even `head_dim`); `cos` and `sin` have shape
/// `[seq', head_dim / 2]` with `seq' ≥ seq` (rows `0..seq` are used, as candle does, so a
/// table for the model's maximum length can be passed whole) and the dtype of `x`. With
/// `x₁, x₂` the first and second halves of the last dimension:
/// `y = [x₁·cos − x₂·sin, x₁·sin + x₂·cos]`. Computed in f32 for f16/bf16. Gradients reach `x`
/// (the inverse rotation) and, when they track one, `cos` and `sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    check_float("rope", x)?;
    let (_, _, seq, head_dim) = x.dims4()?;
    if head_dim % 2 == 1 {
        bail!("rope: head dimension {head_dim} is odd");
    }
    for (what, t) in [("cos", cos), ("sin", sin)] {
        if t.dtype() != x.dtype() {
            bail!(
                "rope: {what} is {:?}, x is {:?} (they must match)",
                t.dtype(),
                x.dtype()
            );
        }
        match t.dims() {
            &[rows, half] if rows >= seq && half * 2 == head_dim => {}
            dims => bail!(
                "rope: {what} of shape {dims:?} for x of shape {:?} (needs [≥{seq}, {}])",
                x.dims(),
                head_dim / 2
            ),
        }
        if !t.device().same_device(x.device()) {
            bail!("rope: {what} and x are on different devices");
        }
    }
    if !x.device().is_cpu() {
        return composed::rope(x, cos, sin);
    }
    x.apply_op3(cos, sin, rotary::Rope { inverse: false })
}

/// Inverted dropout: each element is kept with probability `1 − p` and scaled by
/// `1 / (1 − p)`, else set to 0 (the expectation is `x`, as torch's `nn.Dropout` in training).
///
/// The mask is a function of `(seed, call, i)` only, `i` the element's row-major index in
/// `x`'s logical shape: element `i` is kept when word `i mod 4` of the core's
/// `philox4x32_10([g, g >> 32, call, call >> 32], [seed, seed >> 32])` (32-bit halves,
/// `g = i div 4`) is at least `round(p · 2³²)`. So it does not depend on threads, layout or
/// device, and the backward pass regenerates it (the gradient is the same dropout of the
/// incoming gradient; nothing is stored). `p = 0` returns `x` unchanged. f16 and bf16 are
/// scaled in f32 and rounded once. Two calls with the same `(seed, call)` and shape draw the
/// same mask: give each dropout site its own `call` ([`DropoutStream`] does).
///
/// Errors: `p` outside `[0, 1)`, or a non-float `x`.
pub fn dropout(x: &Tensor, p: f32, seed: u64, call: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout: probability must be in [0, 1), got {p}");
    }
    check_float("dropout", x)?;
    if p == 0.0 {
        return Ok(x.clone());
    }
    let op = dropout::Dropout { p, seed, call };
    if !x.device().is_cpu() {
        let mask = Tensor::from_vec(op.host_mask(x.elem_count()), x.shape(), x.device())?
            .to_dtype(x.dtype())?;
        return x * mask;
    }
    x.apply_op1(op)
}

/// A model's dropout calls: one seed, and a counter that gives every call with `p > 0` the
/// next call number (see [`dropout`]). A model run twice from the same seed through the same
/// sequence of training forwards draws the same masks. Clones of a model share their stream
/// (the counter is atomic), so forwards on several threads draw distinct masks, in an order
/// that depends on the threads.
#[derive(Debug)]
pub struct DropoutStream {
    seed: u64,
    next: std::sync::atomic::AtomicU64,
}

impl DropoutStream {
    /// A stream whose first call is number 0.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number the next call will take.
    pub fn calls(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`dropout`] of `x` with probability `p` and the next call number (none is taken when
    /// `p = 0`).
    pub fn apply(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if p == 0.0 {
            return dropout(x, p, self.seed, 0);
        }
        let call = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dropout(x, p, self.seed, call)
    }
}

/// The same functions composed of candle's differentiable tensor ops: what non-CPU devices
/// run, and the baseline the bench compares the fused ops against. Same conventions as the
/// fused versions, but every intermediate is a tensor (several passes over memory, forward
/// and backward), and half-precision inputs are rounded between steps.
pub mod composed {
    use candle_core::{DType, Result, Tensor, D};

    /// Upcasts half-precision inputs to f32 for the statistics.
    fn working(x: &Tensor) -> Result<Tensor> {
        match x.dtype() {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
            _ => Ok(x.clone()),
        }
    }

    /// Composed [`super::layer_norm`].
    pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let xw = working(x)?;
        let mean = xw.mean_keepdim(D::Minus1)?;
        let centred = xw.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        normed.broadcast_mul(gamma)?.broadcast_add(beta)
    }

    /// Composed [`super::rms_norm`].
    pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let xw = working(x)?;
        let ms = xw.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xw.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(gamma)
    }

    /// Composed [`super::softmax_last_dim`].
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xw = working(x)?;
        let shifted = xw.broadcast_sub(&xw.max_keepdim(D::Minus1)?.detach())?;
        let e = shifted.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
    }

    /// Composed [`super::rope`] (candle-nn's `rope_slow`, with the table narrowed to `seq`).
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (_, _, seq, head_dim) = x.dims4()?;
        let half = head_dim / 2;
        let cos = Tensor::cat(&[cos, cos], D::Minus1)?.narrow(0, 0, seq)?;
        let sin = Tensor::cat(&[sin, sin], D::Minus1)?.narrow(0, 0, seq)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}
