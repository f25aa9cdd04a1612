//! A model built from a [`Lora`]'s `VarBuilder`, rebuilt when its adapters change.
//!
//! # Why a rebuild
//! candle-transformers models fetch their weights once, when built: a model holds the tensor
//! `W0 + (alpha/r)·B·A` computed at build time, not a view of `A` and `B`. After the optimizer
//! updates `A` and `B` (in place, `Var::set`), and after a [`candle_swag::Predictive`] writes a
//! SWAG sample into them, the model built before still computes with the old product. So a
//! [`LoraModel`] keeps the build closure and rebuilds the model:
//!
//! - [`LoraModel::model`] returns the current model, rebuilt first when the adapter factors
//!   differ from those the current model was built with. The check compares a copy of the
//!   factors taken at build time with their values now (one device reduction over the adapter
//!   scalars, a small fraction of a forward pass), so it sees every way a `Var` can change:
//!   an optimizer step, `Predictive` writing a sample, [`Lora::load_adapters`].
//! - [`LoraModel`] implements `ModuleT` through [`LoraModel::model`], so it can be handed to
//!   `Predictive::classify` as it is: each weight sample is written, then the first batch's
//!   `forward_t` rebuilds once, and the other batches of that sample reuse the build.
//! - New weights (a head) need no rebuild: the `VarBuilder` serves their `Var`'s own tensor,
//!   which shares storage with the `Var`, so in-place writes are seen directly.
//!
//! A rebuild costs one `B·A` product and one addition per adapted weight plus the model's own
//! construction (no copy of the frozen weights: they are shared tensors); the smoke example
//! (`examples/lora_swag/main.rs`) measures it against one forward pass.
//!
//! In training, call [`LoraModel::model`] at every step (after the optimizer step it rebuilds,
//! so the next loss is computed with the updated adapters).
//!
//! # Known limit (candle 0.11.1): gradients stop at fused norms
//! candle-nn's fused `ops::layer_norm` (used by `LayerNorm` with a bias on a contiguous input),
//! `ops::rms_norm` and `ops::softmax_last_dim` have no backward pass, and candle drops a missing
//! gradient silently. candle-transformers' BERT, ViT and Llama all put such a norm between every
//! adapter and the loss, so **no gradient reaches the adapters**: fine-tuning trains only
//! weights after the last fused norm (a classifier head), and the adapters stay at init.
//! Serving, merging, saving, loading and SWAG sampling of adapters are unaffected (adapters
//! trained elsewhere, e.g. PEFT, load with [`Lora::load_adapters`] after a rename).
//! [`params_without_gradient`] detects the situation; the tests pin it, so that a candle release
//! that adds the backward passes shows up as a failing test.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::VarBuilder;
use candle_swag::{Error, ParamSet, Result};

use crate::lora::{adapter_names, Lora};

/// The closure that builds a model from a `VarBuilder`.
pub type BuildFn<M> = dyn Fn(VarBuilder<'static>) -> candle_core::Result<M> + Send + Sync;

/// A model over a [`Lora`], rebuilt on demand: see the [module docs](self).
pub struct LoraModel<M> {
    lora: Lora,
    dtype: DType,
    build: Box<BuildFn<M>>,
    /// The adapter factors `A`, `B` of every adapted weight (none when only new weights are
    /// trained).
    factors: Option<ParamSet>,
    current: Mutex<Built<M>>,
    rebuilds: AtomicUsize,
}

struct Built<M> {
    /// The factors the model was built with (flat, f32), or `None` without factors.
    factors: Option<Tensor>,
    model: Arc<M>,
}

impl<M: 'static> std::fmt::Debug for LoraModel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraModel")
            .field("lora", &self.lora)
            .field("dtype", &self.dtype)
            .field("rebuilds", &self.rebuild_count())
            .finish()
    }
}

impl<M: 'static> LoraModel<M> {
    /// Builds the model once (creating the new weights it asks for, e.g. a head) and keeps
    /// `build` to rebuild it.
    ///
    /// Errors: those of the build, including a weight the model asks for that neither the base
    /// nor the new-weight prefixes provide, or a shape that differs from the checkpoint's. A
    /// build that panics (candle-transformers' Llama unwraps its block builds) is caught and
    /// reported as an error with the backend's last message.
    pub fn new<F>(lora: &Lora, dtype: DType, build: F) -> Result<Self>
    where
        F: Fn(VarBuilder<'static>) -> candle_core::Result<M> + Send + Sync + 'static,
    {
        let factors = if lora.adapters().is_empty() {
            None
        } else {
            let named = lora
                .adapters()
                .iter()
                .flat_map(|(name, ad)| {
                    let (a, b) = adapter_names(name);
                    [(a, ad.a.clone()), (b, ad.b.clone())]
                })
                .collect();
            Some(ParamSet::from_named_vars(named)?)
        };
        let build: Box<BuildFn<M>> = Box::new(build);
        let model = build_once(lora, dtype, &build)?;
        let snapshot = match &factors {
            Some(f) => Some(f.flatten()?),
            None => None,
        };
        Ok(Self {
            lora: lora.clone(),
            dtype,
            build,
            factors,
            current: Mutex::new(Built {
                factors: snapshot,
                model: Arc::new(model),
            }),
            rebuilds: AtomicUsize::new(0),
        })
    }

    /// The adapters.
    pub fn lora(&self) -> &Lora {
        &self.lora
    }

    /// Every trainable weight (adapters and new weights), sorted by name: the posterior's and
    /// the optimizer's parameters.
    pub fn params(&self) -> Result<ParamSet> {
        ParamSet::from_varmap(self.lora.varmap())
    }

    /// How many times the model was rebuilt since [`LoraModel::new`].
    pub fn rebuild_count(&self) -> usize {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Rebuilds the model from the current adapters, unconditionally.
    pub fn rebuild(&self) -> Result<Arc<M>> {
        let snapshot = match &self.factors {
            Some(f) => Some(f.flatten()?),
            None => None,
        };
        let model = Arc::new(build_once(&self.lora, self.dtype, &self.build)?);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        let mut cur = self.lock()?;
        *cur = Built {
            factors: snapshot,
            model: model.clone(),
        };
        Ok(model)
    }

    /// The model for the current adapters: the last build when the factors have not changed
    /// since, a rebuild otherwise.
    pub fn model(&self) -> Result<Arc<M>> {
        let stale = {
            let cur = self.lock()?;
            match (&self.factors, &cur.factors) {
                (Some(f), Some(snap)) => {
                    let now = f.flatten()?;
                    let differ = now.ne(snap)?.to_dtype(DType::U32)?.sum_all()?;
                    if differ.to_scalar::<u32>()? == 0 {
                        return Ok(cur.model.clone());
                    }
                    true
                }
                _ => return Ok(cur.model.clone()),
            }
        };
        debug_assert!(stale);
        self.rebuild()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Built<M>>> {
        self.current
            .lock()
            .map_err(|_| Error::invalid("model", "the model lock is poisoned"))
    }
}

fn build_once<M: 'static>(lora: &Lora, dtype: DType, build: &BuildFn<M>) -> Result<M> {
    let vb = lora.var_builder(dtype);
    match catch_unwind(AssertUnwindSafe(|| build(vb))) {
        Ok(Ok(m)) => {
            let _ = lora.take_last_error();
            Ok(m)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let reason = lora.take_last_error().unwrap_or(what);
            Err(Error::invalid(
                "model",
                format!("building the model failed: {reason}"),
            ))
        }
    }
}

impl<M: ModuleT + 'static> ModuleT for LoraModel<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let model = self.model().map_err(into_candle)?;
        model.forward_t(xs, train)
    }
}

/// The names of the parameters a backward pass gave no gradient (or an all-zero one).
///
/// Why this exists: candle-nn's fused `ops::rms_norm`, `ops::softmax_last_dim` and
/// `rotary_emb::rope` have no backward pass in candle 0.11.1, and candle drops a missing
/// gradient *silently*. candle-transformers' Llama uses all three (its final `RmsNorm` sits
/// between every adapter and the loss), so LoRA training through it does not move the adapters
/// at all. BERT and ViT use differentiable ops and train. Check the first step with this and
/// stop (or warn) when every adapter is listed.
pub fn params_without_gradient(
    params: &ParamSet,
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (e, v) in params.layout().entries().iter().zip(params.vars()) {
        let moved = match grads.get(v.as_tensor()) {
            Some(g) => {
                g.abs()?
                    .sum_all()?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?
                    > 0.0
            }
            None => false,
        };
        if !moved {
            out.push(e.name.clone());
        }
    }
    Ok(out)
}

/// A candle-swag error as a candle error (the `ModuleT` signature), keeping candle's own.
pub(crate) fn into_candle(e: Error) -> candle_core::Error {
    match e {
        Error::Candle(c) => c,
        other => candle_core::Error::Msg(other.to_string()),
    }
}
