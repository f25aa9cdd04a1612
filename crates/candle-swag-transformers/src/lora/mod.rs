//! LoRA adapters served through a `VarBuilder` backend, so that any candle-transformers model
//! gets them without a change to its source.
//!
//! # Conventions
//! - **Where adapters attach.** Every weight whose name matches one of the target patterns
//!   ([`LoraParams::targets`], `*` matching any run of characters, dots included, e.g.
//!   `*.q_proj.weight` or `*.attention.self.query.weight`) is served as
//!   `W = W0 + (alpha / r) · B · A`, with `W0 [out, in]` the frozen pretrained weight,
//!   `A [r, in]` and `B [out, r]` trainable `Var`s, `r` the rank. The `alpha / r` scaling is the
//!   LoRA paper's (Hu et al. 2021): changing `r` does not change the update's scale at init.
//! - **Initialisation** as in the paper and PEFT: `A ~ U(−1/√in, 1/√in)` (Kaiming-uniform with
//!   `a = √5`, torch's `nn.Linear` default), `B = 0`, so that the adapted model starts *exactly*
//!   at the pretrained one. `A` is drawn on the host from a `StdRng` seeded with
//!   `seed ^ fnv1a(name)`: reproducible, and independent of the order weights are requested in.
//! - **Names.** The adapters of weight `P.weight` are `P.lora_A.weight` and `P.lora_B.weight`
//!   (PEFT's spelling, without its `base_model.model.` prefix).
//! - **New trainable weights** (a classifier head the pretrained checkpoint lacks): a name that
//!   is not in the base but starts with one of [`LoraParams::new_weights`] is created on first
//!   request as a `Var` in the same `VarMap` as the adapters (constant-init requests keep their
//!   constant; others get `U(−1/√fan_in, 1/√fan_in)` for a matrix, zeros for a vector), so the
//!   head is trained with the adapters and covered by the same SWAG posterior.
//! - **Everything else** is the pretrained tensor, detached: never a `Var`, never updated.
//! - **Adapter files** are safetensors holding every `Var` of the adapter `VarMap` (adapters and
//!   new weights) in f32, with metadata `format = candle-swag-lora/1`, `base_digest` (see
//!   [`crate::base`]), `rank`, `alpha` and `targets` (a JSON list). Loading refuses another
//!   base model, rank, alpha or set of names before anything is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_swag::{Error, Result};

use crate::base::BaseModel;

mod backend;
mod config;
mod file;
mod names;

use backend::{fnv1a, uniform, LoraBackend};
pub use config::{LoraConfig, LoraParams};
pub use file::write_safetensors;
pub use names::{closest_names, glob_match};

/// The adapter file format tag (metadata key `format`).
pub const ADAPTER_FORMAT: &str = "candle-swag-lora/1";

/// The two factors of one adapted weight.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// `[r, in]`, Kaiming-uniform at init.
    pub a: Var,
    /// `[out, r]`, zero at init.
    pub b: Var,
}

/// Adapters over one base model: the frozen weights, the trainable `Var`s (in their own
/// [`VarMap`]) and the `VarBuilder` backend that serves the adapted weights. Cheap to clone
/// (shared state).
#[derive(Clone)]
pub struct Lora {
    inner: Arc<Inner>,
}

struct Inner {
    base: BaseModel,
    config: LoraConfig,
    /// Adapted weight name → its factors, in name order.
    adapters: BTreeMap<String, Adapter>,
    varmap: VarMap,
    device: Device,
    /// The last lookup error of the backend, reported when a model build panics instead of
    /// returning it (candle-transformers' Llama unwraps its block builds).
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora")
            .field("base_digest", &self.inner.base.digest())
            .field("config", &self.inner.config)
            .field("adapted", &self.inner.adapters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The `A` and `B` names of an adapted weight (see the [module docs](self)).
pub fn adapter_names(weight: &str) -> (String, String) {
    let stem = weight.strip_suffix(".weight").unwrap_or(weight);
    (
        format!("{stem}.lora_A.weight"),
        format!("{stem}.lora_B.weight"),
    )
}

impl Lora {
    /// Attaches adapters to the weights of `base` that `config` targets, on `device`.
    ///
    /// Errors (nothing is created): a pattern that matches no weight (naming the closest
    /// weight names), a pattern matching a weight that is not 2-D, a rank larger than a
    /// targeted weight's dimensions.
    pub fn new(base: &BaseModel, config: &LoraConfig, device: &Device) -> Result<Self> {
        let mut names: Vec<&String> = base.tensors().keys().collect();
        names.sort();
        let mut targeted: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for pattern in &config.targets {
            let matched: Vec<&&String> = names.iter().filter(|n| glob_match(pattern, n)).collect();
            if matched.is_empty() {
                return Err(Error::invalid(
                    "targets",
                    format!(
                        "pattern `{pattern}` matches no weight of the base model; closest: {}",
                        closest_names(pattern, &names, 3).join(", ")
                    ),
                ));
            }
            for name in matched {
                let dims = base.tensors()[name.as_str()].dims().to_vec();
                if dims.len() != 2 {
                    return Err(Error::invalid(
                        "targets",
                        format!(
                            "pattern `{pattern}` matches `{name}` of shape {dims:?}; LoRA adapts 2-D weights only"
                        ),
                    ));
                }
                if config.rank > dims[0].min(dims[1]) {
                    return Err(Error::invalid(
                        "rank",
                        format!(
                            "rank {} is larger than weight `{name}`'s dimensions {dims:?}",
                            config.rank
                        ),
                    ));
                }
                targeted.insert(name.to_string(), dims);
            }
        }
        let varmap = VarMap::new();
        let mut adapters = BTreeMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("varmap", "the VarMap lock is poisoned"))?;
            for (name, dims) in &targeted {
                let (out, inp) = (dims[0], dims[1]);
                let bound = 1.0 / (inp as f64).sqrt();
                let a = uniform(config.rank * inp, bound, config.seed ^ fnv1a(name));
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, inp), device)?)?;
                let b = Var::zeros((out, config.rank), DType::F32, device)?;
                let (a_name, b_name) = adapter_names(name);
                data.insert(a_name, a.clone());
                data.insert(b_name, b.clone());
                adapters.insert(name.clone(), Adapter { a, b });
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                base: base.clone(),
                config: config.clone(),
                adapters,
                varmap,
                device: device.clone(),
                last_error: Mutex::new(None),
            }),
        })
    }

    /// A `VarBuilder` serving the adapted weights (see the [module docs](self)) in `dtype`.
    /// Each build computes `W0 + (alpha/r)·B·A` from the current `A` and `B`, inside candle's
    /// op graph: gradients of a loss reach `A` and `B` (and the new weights), never `W0`.
    pub fn var_builder(&self, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(LoraBackend {
                inner: self.inner.clone(),
            }),
            dtype,
            self.inner.device.clone(),
        )
    }

    /// The `VarMap` of every trainable weight: adapters and new weights. Give it to
    /// `candle_swag::ParamSet::from_varmap` for the posterior and to the optimizer.
    pub fn varmap(&self) -> &VarMap {
        &self.inner.varmap
    }

    /// The adapted weights by name, in name order.
    pub fn adapters(&self) -> &BTreeMap<String, Adapter> {
        &self.inner.adapters
    }

    /// The configuration the adapters were made with.
    pub fn config(&self) -> &LoraConfig {
        &self.inner.config
    }

    /// The base model.
    pub fn base(&self) -> &BaseModel {
        &self.inner.base
    }

    /// The device of the adapters.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// Number of trainable scalars (adapters and new weights).
    pub fn trainable_numel(&self) -> Result<usize> {
        let data = self.lock_varmap()?;
        Ok(data.values().map(|v| v.elem_count()).sum())
    }

    fn lock_varmap(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Var>>> {
        self.inner
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap", "the VarMap lock is poisoned"))
    }

    /// The last error the backend returned to a model build, if any (see [`crate::LoraModel`]).
    pub(crate) fn take_last_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok().and_then(|mut e| e.take())
    }

    /// `W0 + (alpha/r)·B·A` for one adapted weight, detached, in the base weight's dtype.
    pub fn merged_weight(&self, name: &str) -> Result<Tensor> {
        Ok(self.inner.merged(name)?.detach())
    }

    /// Every weight of the adapted model, detached: the base weights with the adapted ones
    /// merged, plus the new weights (a head). Adapter factors are not included.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, t) in self.inner.base.tensors() {
            let t = if self.inner.adapters.contains_key(name) {
                self.merged_weight(name)?
            } else {
                t.clone()
            };
            out.insert(name.clone(), t);
        }
        for (name, var) in self.new_weights()? {
            out.insert(name, var.as_tensor().detach());
        }
        Ok(out)
    }

    /// The new weights (a head), by name: the adapter `VarMap` minus the adapter factors.
    pub fn new_weights(&self) -> Result<Vec<(String, Var)>> {
        let factor_names: std::collections::HashSet<String> = self
            .inner
            .adapters
            .keys()
            .flat_map(|n| {
                let (a, b) = adapter_names(n);
                [a, b]
            })
            .collect();
        let data = self.lock_varmap()?;
        let mut out: Vec<(String, Var)> = data
            .iter()
            .filter(|(n, _)| !factor_names.contains(*n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
