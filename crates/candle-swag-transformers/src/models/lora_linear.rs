//! A linear layer that reads its LoRA factors at forward time.
//!
//! # Conventions
//! - `y = x·W0ᵀ + b + s·((dropout(x)·Aᵀ)·Bᵀ)` with `W0 [out, in]` the frozen pretrained weight,
//!   `b [out]` its bias (if any), `A [r, in]`, `B [out, r]` the adapter's `Var`s and
//!   `s = alpha / r` ([`crate::LoraConfig::scale`]), as PEFT computes it. `W0` and `b` are
//!   plain tensors (no gradient); `A` and `B` are the `Var`s' own tensors, so a write into them
//!   (an optimizer step, a SWAG sample written by `candle_swag::Predictive`) is seen by the next
//!   forward at no cost: nothing is merged or rebuilt.
//! - `x` is `[..., in]` (any number of leading dimensions), `y` is `[..., out]`.
//! - The adapter factors are kept in f32 (the `Var`s' dtype); for a model run in another dtype
//!   they are cast at forward time (a differentiable cast: the gradient reaches the f32 `Var`s).
//! - The LoRA dropout (PEFT's `lora_dropout`, 0 by default) acts on the adapter's input only,
//!   and only when `train` is true; its masks come from the model's [`DropoutStream`] (seeded,
//!   see [`crate::ops::dropout`]).
//! - `x·W0ᵀ` is a custom op ([`FrozenMatmul`]) whose backward pass computes the input's
//!   gradient only: candle's own matmul backward also computes the gradient of its right-hand
//!   side, here a frozen weight, which costs a third of the backward pass's matmul work and a
//!   weight-sized tensor per layer, for nothing.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Shape, Tensor, Var};

use std::sync::Arc;

use crate::lora::Adapter;
use crate::ops::DropoutStream;

/// A frozen linear layer with an optional LoRA adapter (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The checkpoint's weight name (`....weight`), for messages.
    name: String,
    /// `W0 [out, in]`, in the model's dtype.
    weight: Tensor,
    /// `b [out]`, in the model's dtype.
    bias: Option<Tensor>,
    adapter: Option<Adapted>,
}

#[derive(Debug, Clone)]
struct Adapted {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f32,
    masks: Arc<DropoutStream>,
}

impl LoraLinear {
    /// A layer over the frozen `weight [out, in]` and `bias [out]`; `name` is the weight's name
    /// in the checkpoint.
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name: name.into(),
            weight: weight.detach(),
            bias: bias.map(|b| b.detach()),
            adapter: None,
        }
    }

    /// Attaches `adapter` with scale `alpha / r` and LoRA dropout probability `dropout`
    /// (in `[0, 1)`), whose masks `masks` draws (the model's stream).
    pub fn with_adapter(
        mut self,
        adapter: &Adapter,
        scale: f64,
        dropout: f32,
        masks: Arc<DropoutStream>,
    ) -> Self {
        self.adapter = Some(Adapted {
            a: adapter.a.clone(),
            b: adapter.b.clone(),
            scale,
            dropout,
            masks,
        });
        self
    }

    /// The weight's name in the checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `W0 [out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Whether an adapter is attached.
    pub fn is_adapted(&self) -> bool {
        self.adapter.is_some()
    }

    /// `(out, in)`.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.weight.dims2()
    }

    /// `x·W0ᵀ + b + s·((dropout(x)·Aᵀ)·Bᵀ)` (dropout only when `train`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (out, inp) = self.weight.dims2()?;
        let dims = x.dims();
        let last = dims.last().copied().unwrap_or(0);
        if last != inp {
            candle_core::bail!(
                "linear `{}`: input of shape {:?} has {last} features, the weight [{out}, {inp}] takes {inp}",
                self.name,
                dims
            );
        }
        let rows = x.elem_count() / inp.max(1);
        let x2 = x.reshape((rows, inp))?;
        let mut y = x2.apply_op2(&self.weight, FrozenMatmul)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(ad) = &self.adapter {
            let dtype = x.dtype();
            let a = ad.a.as_tensor().to_dtype(dtype)?;
            let b = ad.b.as_tensor().to_dtype(dtype)?;
            let xin = if train && ad.dropout > 0.0 {
                ad.masks.apply(&x2, ad.dropout)?
            } else {
                x2
            };
            let delta = xin.matmul(&a.t()?)?.matmul(&b.t()?)?;
            y = (y + (delta * ad.scale)?)?;
        }
        let mut out_dims = dims.to_vec();
        if let Some(l) = out_dims.last_mut() {
            *l = out;
        }
        y.reshape(out_dims)
    }
}

/// `x [m, k] · W0ᵀ` for a frozen `W0 [n, k]`: candle's matmul forward (any backend), and a
/// backward pass that returns the gradient of `x` (`g · W0`) and none for `W0`.
#[derive(Debug, Clone, Copy)]
pub struct FrozenMatmul;

impl FrozenMatmul {
    fn fwd<S: BackendStorage>(
        x: &S,
        xl: &Layout,
        w: &S,
        wl: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, kw) = wl.shape().dims2()?;
        if k != kw {
            candle_core::bail!("frozen matmul: input [{m}, {k}] against weight [{n}, {kw}]");
        }
        let out = x.matmul(w, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        xl: &Layout,
        w: &MetalStorage,
        wl: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}
