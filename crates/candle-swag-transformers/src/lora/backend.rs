//! The `VarBuilder` backend that serves `W0 + (alpha/r)·B·A` for adapted weights, the frozen base weight otherwise, and creates new trainable weights on first use.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;
use candle_swag::{Error, Result};
use rand::{Rng, SeedableRng};

use super::*;

impl Inner {
    pub(super) fn merged(&self, name: &str) -> Result<Tensor> {
        let (w0, ad) = match (self.base.tensors().get(name), self.adapters.get(name)) {
            (Some(w0), Some(ad)) => (w0, ad),
            _ => return Err(Error::invalid("weight", format!("`{name}` has no adapter"))),
        };
        let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * self.config.scale())?;
        Ok((w0.to_dtype(DType::F32)? + delta)?.to_dtype(w0.dtype())?)
    }

    /// The tensor served for `name` (see the [module docs](self)).
    pub(super) fn serve(&self, name: &str, shape: Option<&Shape>, init: Init) -> Result<Tensor> {
        let t = if self.adapters.contains_key(name) {
            self.merged(name)?
        } else if let Some(t) = self.base.tensors().get(name) {
            t.clone()
        } else {
            let mut data = self
                .varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("varmap", "the VarMap lock is poisoned"))?;
            if let Some(v) = data.get(name) {
                v.as_tensor().clone()
            } else if self
                .config
                .new_weights
                .iter()
                .any(|p| name.starts_with(p.as_str()))
            {
                let Some(shape) = shape else {
                    return Err(Error::invalid(
                        "weight",
                        format!("new weight `{name}` requested without a shape"),
                    ));
                };
                let v = new_weight(shape, init, self.config.seed ^ fnv1a(name), &self.device)?;
                data.insert(name.to_string(), v.clone());
                v.as_tensor().clone()
            } else {
                return Err(candle_core::Error::CannotFindTensor {
                    path: name.to_string(),
                }
                .into());
            }
        };
        if let Some(shape) = shape {
            if t.shape() != shape {
                return Err(Error::invalid(
                    "weight",
                    format!(
                        "`{name}` has shape {:?} in the checkpoint, the model expects {:?}",
                        t.dims(),
                        shape.dims()
                    ),
                ));
            }
        }
        Ok(t)
    }

    pub(super) fn serve_recorded(
        &self,
        name: &str,
        shape: Option<&Shape>,
        init: Init,
    ) -> candle_core::Result<Tensor> {
        self.serve(name, shape, init).map_err(|e| {
            let msg = e.to_string();
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(msg.clone());
            }
            match e {
                Error::Candle(c) => c,
                _ => candle_core::Error::Msg(msg),
            }
        })
    }
}

/// The `VarBuilder` backend of a [`Lora`].
pub(super) struct LoraBackend {
    pub(super) inner: Arc<Inner>,
}

impl SimpleBackend for LoraBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.inner
            .serve_recorded(name, Some(&s), h)?
            .to_device(dev)?
            .to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner
            .serve_recorded(name, None, Init::Const(0.0))?
            .to_device(dev)?
            .to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.base.tensors().contains_key(name)
            || self
                .inner
                .varmap
                .data()
                .lock()
                .map(|d| d.contains_key(name))
                .unwrap_or(false)
    }
}

/// A new trainable weight, initialised on the host (see the [module docs](self)).
pub(super) fn new_weight(shape: &Shape, init: Init, seed: u64, device: &Device) -> Result<Var> {
    let dims = shape.dims();
    let n = shape.elem_count();
    let values = match init {
        Init::Const(c) => vec![c as f32; n],
        _ if dims.len() >= 2 => {
            let fan_in: usize = dims[1..].iter().product();
            uniform(n, 1.0 / (fan_in.max(1) as f64).sqrt(), seed)
        }
        _ => vec![0.0; n],
    };
    Ok(Var::from_tensor(&Tensor::from_vec(values, dims, device)?)?)
}

/// `n` draws of `U(−bound, bound)` from a `StdRng` seeded with `seed`.
pub(super) fn uniform(n: usize, bound: f64, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect()
}

/// FNV-1a, 64 bits: a stable hash of a weight name for per-weight seeds.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
