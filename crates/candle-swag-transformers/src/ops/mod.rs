//! Differentiable normalisation and attention ops for the trainable model families.
//!
//! candle-nn 0.11.1 builds its fused `layer_norm`, `rms_norm` and `softmax_last_dim` without a
//! backward pass (huggingface/candle#3011), so no gradient reaches an adapter placed before
//! one. These functions are the project's own: every one records a backward pass.
//!
//! All reduce over the last dimension. Statistics are computed in f32 for f16/bf16 inputs and
//! the result is returned in the input's dtype.

use candle_core::{DType, Result, Tensor, D};

/// Upcasts half-precision inputs to f32 for the statistics.
fn working(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// Layer normalisation over the last dimension: `(x − mean) / sqrt(var + eps) · gamma + beta`,
/// with the biased variance (divisor = row width), as torch's `nn.LayerNorm`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xw = working(x)?;
    let mean = xw.mean_keepdim(D::Minus1)?;
    let centred = xw.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// RMS normalisation over the last dimension: `x / sqrt(mean(x²) + eps) · gamma`.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xw = working(x)?;
    let ms = xw.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xw.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(gamma)
}

/// Softmax over the last dimension (the row maximum is subtracted first, for range).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xw = working(x)?;
    let shifted = xw.broadcast_sub(&xw.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
}
