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
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use candle_swag::{Error, Result};
use rand::{Rng, SeedableRng};

use crate::base::{tensor_bytes, BaseModel};

/// The adapter file format tag (metadata key `format`).
pub const ADAPTER_FORMAT: &str = "candle-swag-lora/1";

/// Which weights get adapters, and how, unchecked (the crate's config shape, see
/// [`candle_swag::swag::config`]); [`LoraParams::new`] gives the defaults for some targets.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraParams {
    /// Name patterns of the weights to adapt (`*` matches any run of characters), at least
    /// one. Each must match at least one 2-D weight of the base model.
    pub targets: Vec<String>,
    /// The rank `r` (at least 1, at most `min(out, in)` of every targeted weight).
    pub rank: usize,
    /// The scaling numerator, finite: the update is `(alpha / r) · B · A`.
    pub alpha: f64,
    /// Name prefixes of trainable weights the base model lacks (a classifier head, e.g.
    /// `classifier`); see the [module docs](self).
    pub new_weights: Vec<String>,
    /// Seed of the adapters' and new weights' initialisation.
    pub seed: u64,
}

impl LoraParams {
    /// `targets` with rank `rank` and `alpha = 2 r` (a common choice), no new weights, seed 0.
    pub fn new(targets: &[&str], rank: usize) -> Self {
        Self {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            rank,
            alpha: 2.0 * rank as f64,
            new_weights: Vec::new(),
            seed: 0,
        }
    }

    /// The checked config; the error names the field. What depends on the base model (a
    /// pattern that matches nothing, a rank above a weight's dimensions) is checked by
    /// [`Lora::new`].
    pub fn check(&self) -> Result<LoraConfig> {
        if self.targets.is_empty() {
            return Err(Error::invalid(
                "targets",
                "name at least one weight pattern",
            ));
        }
        if self.rank == 0 {
            return Err(Error::invalid("rank", "must be at least 1"));
        }
        if !self.alpha.is_finite() {
            return Err(Error::invalid(
                "alpha",
                format!("must be finite, got {}", self.alpha),
            ));
        }
        Ok(LoraConfig(self.clone()))
    }
}

/// Which weights get adapters, and how (from [`LoraParams::check`]); read it through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig(LoraParams);

impl std::ops::Deref for LoraConfig {
    type Target = LoraParams;
    fn deref(&self) -> &LoraParams {
        &self.0
    }
}

impl LoraConfig {
    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.0.alpha / self.0.rank as f64
    }
}

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

    /// Writes the merged model ([`Lora::merged_tensors`]) as one plain safetensors file,
    /// atomically: it loads in any safetensors reader, candle-transformers included, without
    /// this crate. The metadata records the base digest, rank and alpha for provenance.
    pub fn write_merged(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors = self.merged_tensors()?;
        let mut meta = self.metadata();
        meta.insert("format".into(), "candle-swag-lora-merged/1".into());
        write_safetensors(path, &tensors, meta)
    }

    fn metadata(&self) -> HashMap<String, String> {
        let c = &self.inner.config;
        HashMap::from([
            ("format".to_string(), ADAPTER_FORMAT.to_string()),
            (
                "base_digest".to_string(),
                self.inner.base.digest().to_string(),
            ),
            ("rank".to_string(), c.rank.to_string()),
            ("alpha".to_string(), c.alpha.to_string()),
            (
                "targets".to_string(),
                serde_json::to_string(&c.targets).unwrap_or_default(),
            ),
        ])
    }

    /// Saves every trainable weight (adapters and new weights) with the base digest, atomically
    /// (see the [module docs](self) for the format).
    pub fn save_adapters(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .lock_varmap()?
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        write_safetensors(path, &tensors, self.metadata())
    }

    /// Loads adapters saved by [`Lora::save_adapters`] into these `Var`s.
    ///
    /// Errors (no `Var` is changed): a file for another base model (digest mismatch), another
    /// rank or alpha, missing or extra names, other shapes. New weights (a head) must have been
    /// created first, by building the model once ([`crate::LoraModel::new`] does).
    pub fn load_adapters(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::bad_file(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| meta.get(key).map(String::as_str).unwrap_or("(none)");
        if get("format") != ADAPTER_FORMAT {
            return Err(Error::bad_file(
                path,
                format!(
                    "not a LoRA adapter file (format `{}`, expected `{ADAPTER_FORMAT}`)",
                    get("format")
                ),
            ));
        }
        let ours = self.inner.base.digest();
        if get("base_digest") != ours {
            return Err(Error::bad_file(
                path,
                format!(
                    "adapters were trained on base model {}, not on this one ({ours}); refusing to load them",
                    get("base_digest")
                ),
            ));
        }
        let c = &self.inner.config;
        if get("rank") != c.rank.to_string() || get("alpha") != c.alpha.to_string() {
            return Err(Error::bad_file(
                path,
                format!(
                    "adapters have rank {} and alpha {}, this model rank {} and alpha {}",
                    get("rank"),
                    get("alpha"),
                    c.rank,
                    c.alpha
                ),
            ));
        }
        let loaded = candle_core::safetensors::load_buffer(&bytes, &self.inner.device)
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        let data = self.lock_varmap()?;
        for (name, var) in data.iter() {
            let t = loaded
                .get(name)
                .ok_or_else(|| Error::bad_file(path, format!("weight `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "weight `{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
        }
        if let Some(extra) = loaded.keys().find(|n| !data.contains_key(*n)) {
            return Err(Error::bad_file(
                path,
                format!("weight `{extra}` is not a trainable weight of this model"),
            ));
        }
        for (name, var) in data.iter() {
            var.set(&loaded[name].to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

impl Inner {
    fn merged(&self, name: &str) -> Result<Tensor> {
        let (w0, ad) = match (self.base.tensors().get(name), self.adapters.get(name)) {
            (Some(w0), Some(ad)) => (w0, ad),
            _ => return Err(Error::invalid("weight", format!("`{name}` has no adapter"))),
        };
        let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * self.config.scale())?;
        Ok((w0.to_dtype(DType::F32)? + delta)?.to_dtype(w0.dtype())?)
    }

    /// The tensor served for `name` (see the [module docs](self)).
    fn serve(&self, name: &str, shape: Option<&Shape>, init: Init) -> Result<Tensor> {
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

    fn serve_recorded(
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
struct LoraBackend {
    inner: Arc<Inner>,
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
fn new_weight(shape: &Shape, init: Init, seed: u64, device: &Device) -> Result<Var> {
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
fn uniform(n: usize, bound: f64, seed: u64) -> Vec<f32> {
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

/// True when `name` matches `pattern`, `*` matching any run of characters (dots included).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The `k` weight-name families closest to `pattern`: names with their layer numbers replaced
/// by `*` (so each suggestion is itself a usable pattern), ranked by edit distance to the
/// pattern's literal text (its tail against theirs when the pattern starts with `*`).
pub fn closest_names(pattern: &str, names: &[&String], k: usize) -> Vec<String> {
    let mut families: Vec<String> = names.iter().map(|n| generalise(n)).collect();
    families.sort();
    families.dedup();
    let literal = pattern.trim_start_matches('*');
    let anchored_tail = pattern.starts_with('*');
    let mut scored: Vec<(usize, String)> = families
        .into_iter()
        .map(|f| {
            let against = if anchored_tail {
                let skip = f.len().saturating_sub(literal.len());
                f.get(skip..).unwrap_or(&f).to_string()
            } else {
                f.clone()
            };
            (levenshtein(literal, &against), f)
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(k)
        .map(|(_, f)| format!("`{f}`"))
        .collect()
}

/// `encoder.layer.11.attention` → `encoder.layer.*.attention`.
fn generalise(name: &str) -> String {
    name.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Writes named tensors and string metadata as a safetensors file, atomically
/// (`candle_swag::atomic`): a reader never sees half a file.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut raw = Vec::with_capacity(names.len());
    for name in &names {
        let t = &tensors[name.as_str()];
        raw.push((name.as_str(), tensor_bytes(t)?, t.dims().to_vec()));
    }
    let views = raw
        .iter()
        .map(|(name, (dtype, bytes), shape)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| Error::invalid(name.to_string(), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    candle_swag::atomic::write_file_atomic(path, &bytes)
}
