//! Parameter layout: which weights SWAG covers, in which order, and where each one sits in the
//! flat vector of `d` numbers that the posterior is defined on.
//!
//! # Conventions
//! - **Order.** [`ParamSet::from_varmap`] sorts parameters by name (byte-wise, as `str::cmp`), so
//!   the order is stable between runs (a `VarMap`'s own iteration order is not).
//!   [`ParamSet::from_named_vars`] keeps the order it is given.
//! - **Flattening.** Each tensor is laid out row-major (C order), parameters one after another:
//!   parameter `i` occupies `offset_i .. offset_i + numel_i` of the flat vector.
//! - **BatchNorm statistics are not weights.** Names ending in `running_mean`, `running_var` or
//!   `num_batches_tracked` are left out by `from_varmap`: they are recomputed after sampling
//!   (see [`crate::batchnorm`]), not sampled.
//! - The flat vector is `f32`, whatever the parameters' dtype.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name suffixes of non-trainable buffers that SWAG never covers.
pub(crate) const BUFFER_SUFFIXES: [&str; 3] =
    ["running_mean", "running_var", "num_batches_tracked"];

/// True when `name` is a BatchNorm statistics buffer (its name ends in `running_mean`, `running_var` or `num_batches_tracked`).
pub fn is_buffer_name(name: &str) -> bool {
    BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// One named parameter of the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamEntry {
    /// Parameter name, e.g. `fc1.weight`.
    pub name: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// First index of this parameter in the flat vector.
    pub offset: usize,
}

impl ParamEntry {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The fixed order of named parameters, their shapes and their offsets in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    numel: usize,
}

impl ParamLayout {
    /// Builds a layout from `(name, shape)` pairs, in the order given.
    ///
    /// ```
    /// use candle_swag::layout::ParamLayout;
    /// let layout = ParamLayout::new(vec![("w".into(), vec![3, 2]), ("b".into(), vec![3])]).unwrap();
    /// assert_eq!(layout.numel(), 9);
    /// assert_eq!(layout.entries()[1].offset, 6);
    /// ```
    pub fn new(named_shapes: Vec<(String, Vec<usize>)>) -> Result<Self> {
        let mut entries = Vec::with_capacity(named_shapes.len());
        let mut offset = 0usize;
        let mut seen = std::collections::HashSet::new();
        for (name, shape) in named_shapes {
            if name.is_empty() {
                return Err(Error::LayoutMismatch(
                    "a parameter has an empty name".into(),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(Error::LayoutMismatch(format!(
                    "parameter `{name}` appears twice"
                )));
            }
            // Checked here, so that `ParamEntry::numel` of a layout cannot overflow (a
            // layout read from a file may claim any shape).
            let numel = shape
                .iter()
                .try_fold(1usize, |n, &s| n.checked_mul(s))
                .ok_or_else(|| {
                    Error::LayoutMismatch(format!(
                        "parameter `{name}` has shape {shape:?}, whose element count overflows usize"
                    ))
                })?;
            let entry = ParamEntry {
                name,
                shape,
                offset,
            };
            offset = offset.checked_add(numel).ok_or_else(|| {
                Error::LayoutMismatch("total parameter count overflows usize".into())
            })?;
            entries.push(entry);
        }
        Ok(Self {
            entries,
            numel: offset,
        })
    }

    /// The parameters in flat order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of scalars `d`.
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Number of named parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the layout holds no parameter.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks a parameter up by name.
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Checks that `other` (the model's) has the same names, shapes and order as this
    /// (the posterior's) layout; the error names the first difference.
    pub fn check_same(&self, other: &ParamLayout) -> Result<()> {
        self.check_same_as(other, "posterior")
    }

    /// [`check_same`](Self::check_same) with this layout's owner named `ours` in the error
    /// ("posterior", "average").
    pub(crate) fn check_same_as(&self, other: &ParamLayout, ours: &str) -> Result<()> {
        for (i, (a, b)) in self.entries.iter().zip(other.entries.iter()).enumerate() {
            if a.name != b.name {
                return Err(Error::LayoutMismatch(format!(
                    "parameter #{i} is `{}` in the {ours} but `{}` in the model",
                    a.name, b.name
                )));
            }
            if a.shape != b.shape {
                return Err(Error::LayoutMismatch(format!(
                    "parameter `{}` has shape {:?} in the {ours} but {:?} in the model",
                    a.name, a.shape, b.shape
                )));
            }
        }
        if self.len() != other.len() {
            let (longer, which) = if self.len() > other.len() {
                (&self.entries[other.len()], "the model lacks".to_string())
            } else {
                (&other.entries[self.len()], format!("the {ours} lacks"))
            };
            return Err(Error::LayoutMismatch(format!(
                "{which} parameter `{}` ({} parameters against {})",
                longer.name,
                self.len(),
                other.len()
            )));
        }
        Ok(())
    }

    /// Flattens named tensors (e.g. a checkpoint loaded with `candle_core::safetensors::load`)
    /// into one `[d]` f32 tensor in this layout's order. Extra names are ignored; a missing name
    /// or a wrong shape is an error naming the parameter.
    pub fn flatten_named(&self, tensors: &HashMap<String, Tensor>) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(self.len());
        for e in &self.entries {
            let t = tensors.get(&e.name).ok_or_else(|| {
                Error::LayoutMismatch(format!("parameter `{}` is missing", e.name))
            })?;
            if t.dims() != e.shape.as_slice() {
                return Err(Error::LayoutMismatch(format!(
                    "parameter `{}` has shape {:?}, expected {:?}",
                    e.name,
                    t.dims(),
                    e.shape
                )));
            }
            parts.push(t.flatten_all()?.to_dtype(DType::F32)?);
        }
        if parts.is_empty() {
            return Err(Error::LayoutMismatch(
                "the layout holds no parameter".into(),
            ));
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Splits a flat `[d]` vector back into named tensors with this layout's shapes.
    pub fn unflatten(&self, flat: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.check_flat(flat, "flat")?;
        self.entries
            .iter()
            .map(|e| {
                let t = flat
                    .narrow(0, e.offset, e.numel())?
                    .reshape(e.shape.clone())?;
                Ok((e.name.clone(), t))
            })
            .collect()
    }

    /// Checks that `flat` is a 1-D tensor of `d` elements.
    /// `Error::NonFinite` naming the parameter of flat index `flat_index` and the index
    /// inside it.
    pub(crate) fn non_finite_error(&self, flat_index: usize, value: f32) -> Error {
        match self.entries.iter().rev().find(|e| e.offset <= flat_index) {
            Some(e) => non_finite(&e.name, flat_index - e.offset, value),
            None => non_finite("?", flat_index, value),
        }
    }

    /// Refuses a flat `[d]` f32 vector holding NaN or infinity (`Error::NonFinite` naming the
    /// parameter). One reduction on the device; values reach the host only when one is bad.
    pub(crate) fn check_finite(&self, flat: &Tensor) -> Result<()> {
        match first_non_finite_in(flat)? {
            Some((i, v)) => Err(self.non_finite_error(i, v)),
            None => Ok(()),
        }
    }

    pub(crate) fn check_flat(&self, flat: &Tensor, what: &str) -> Result<()> {
        if flat.dims() != [self.numel] {
            return Err(Error::invalid(
                what,
                format!("expected shape [{}], got {:?}", self.numel, flat.dims()),
            ));
        }
        Ok(())
    }
}

/// Named candle [`Var`]s in a fixed order, with their [`ParamLayout`]: the weights a SWAG
/// posterior is fitted on and written back into.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_swag::layout::ParamSet;
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let _fc = candle_nn::linear(4, 3, vb.pp("fc")).unwrap();
/// let params = ParamSet::from_varmap(&varmap).unwrap();
/// let names: Vec<_> = params.layout().entries().iter().map(|e| e.name.as_str()).collect();
/// assert_eq!(names, ["fc.bias", "fc.weight"]);
/// assert_eq!(params.numel(), 15);
/// ```
#[derive(Debug, Clone)]
pub struct ParamSet {
    layout: ParamLayout,
    vars: Vec<Var>,
    device: Device,
    /// BatchNorm buffers ([`is_buffer_name`]) `from_varmap` left out: their presence tells
    /// [`crate::Predictive`] that a refresh is needed after each weight sample.
    batchnorm_buffers: Vec<String>,
}

impl ParamSet {
    /// All trainable variables of a `VarMap`, sorted by name, BatchNorm buffers left out
    /// (see [`is_buffer_name`]).
    pub fn from_varmap(varmap: &VarMap) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap", "the VarMap lock is poisoned"))?;
        let (buffers, mut named): (Vec<_>, Vec<_>) = data
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .partition(|(name, _)| is_buffer_name(name));
        drop(data);
        let mut buffers: Vec<String> = buffers.into_iter().map(|(name, _)| name).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        buffers.sort();
        let mut set = Self::from_named_vars(named)?;
        set.batchnorm_buffers = buffers;
        Ok(set)
    }

    /// Explicit `(name, Var)` pairs, kept in the order given. All must live on one device.
    pub fn from_named_vars(named: Vec<(String, Var)>) -> Result<Self> {
        let Some((_, first)) = named.first() else {
            return Err(Error::invalid("params", "no parameter to cover"));
        };
        let device = first.device().clone();
        for (name, var) in &named {
            if !var.device().same_device(&device) {
                return Err(Error::invalid(
                    name.as_str(),
                    "all parameters must live on the same device",
                ));
            }
            if !var.dtype().is_float() {
                return Err(Error::invalid(
                    name.as_str(),
                    format!("parameter has dtype {:?}; SWAG needs floats", var.dtype()),
                ));
            }
        }
        let layout = ParamLayout::new(
            named
                .iter()
                .map(|(n, v)| (n.clone(), v.dims().to_vec()))
                .collect(),
        )?;
        let vars = named.into_iter().map(|(_, v)| v).collect();
        Ok(Self {
            layout,
            vars,
            device,
            batchnorm_buffers: Vec::new(),
        })
    }

    /// Keeps only the parameters whose name starts with one of `prefixes` (partial or
    /// last-layer SWAG), in the same relative order.
    pub fn select_prefix(&self, prefixes: &[&str]) -> Result<Self> {
        self.select(|name| prefixes.iter().any(|p| name.starts_with(p)))
            .map_err(|_| {
                Error::invalid(
                    "prefixes",
                    format!("no parameter name starts with any of {prefixes:?}"),
                )
            })
    }

    /// Keeps only the parameters for which `keep(name)` is true.
    pub fn select(&self, keep: impl Fn(&str) -> bool) -> Result<Self> {
        let named = self
            .layout
            .entries()
            .iter()
            .zip(self.vars.iter())
            .filter(|(e, _)| keep(&e.name))
            .map(|(e, v)| (e.name.clone(), v.clone()))
            .collect();
        // The model's BatchNorm statistics depend on all its weights, selected or not.
        let mut set = Self::from_named_vars(named)?;
        set.batchnorm_buffers = self.batchnorm_buffers.clone();
        Ok(set)
    }

    /// The BatchNorm buffers ([`is_buffer_name`]: `running_mean`, `running_var`, ...) of the
    /// VarMap this set was taken from ([`ParamSet::from_varmap`]); empty for a set built from explicit Vars.
    /// Their values depend on the weights, so a [`crate::Predictive`] over such a model needs a
    /// refresh after each sample.
    pub fn batchnorm_buffers(&self) -> &[String] {
        &self.batchnorm_buffers
    }

    /// The layout (names, shapes, offsets).
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The variables, in layout order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The device all parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Total number of scalars `d`.
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// The current weights as one `[d]` f32 tensor on the parameters' device (a new buffer;
    /// never a view of the Vars).
    pub fn flatten(&self) -> Result<Tensor> {
        let flat = Tensor::zeros(self.numel(), DType::F32, &self.device)?;
        self.flatten_into(&flat)?;
        Ok(flat)
    }

    /// Copies the current weights into a preallocated contiguous `[d]` f32 tensor, in place
    /// (no allocation when the parameters are f32).
    pub fn flatten_into(&self, flat: &Tensor) -> Result<()> {
        self.layout.check_flat(flat, "flat")?;
        if flat.dtype() != DType::F32 || !flat.is_contiguous() {
            return Err(Error::invalid("flat", "expected a contiguous f32 tensor"));
        }
        for (e, var) in self.layout.entries().iter().zip(self.vars.iter()) {
            let part = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?;
            flat.slice_set(&part.to_device(flat.device())?, 0, e.offset)?;
        }
        Ok(())
    }

    /// Writes a flat `[d]` vector into the variables (converted to each variable's dtype and
    /// device).
    pub fn write_flat(&self, flat: &Tensor) -> Result<()> {
        self.layout.check_flat(flat, "flat")?;
        for (e, var) in self.layout.entries().iter().zip(self.vars.iter()) {
            let part = flat
                .narrow(0, e.offset, e.numel())?
                .reshape(e.shape.clone())?
                .to_dtype(var.dtype())?
                .to_device(var.device())?
                .contiguous()?;
            var.set(&part)?;
        }
        Ok(())
    }
}

/// Refuses a tensor (any shape, f32) holding NaN or infinity: `Error::NonFinite` naming it
/// `name`, with the row-major index.
pub(crate) fn check_finite_named(t: &Tensor, name: &str) -> Result<()> {
    match first_non_finite_in(&t.flatten_all()?)? {
        Some((i, v)) => Err(non_finite(name, i, v)),
        None => Ok(()),
    }
}

fn non_finite(parameter: &str, index: usize, value: f32) -> Error {
    Error::NonFinite {
        parameter: parameter.to_string(),
        index,
        value: value.to_string(),
    }
}

/// The first non-finite value of a flat f32 tensor and its index. `x − x` is 0 for finite `x`
/// and NaN otherwise, so one reduction and one scalar read decide (a sum of large finite
/// values that overflows is not mistaken for a bad value).
fn first_non_finite_in(flat: &Tensor) -> Result<Option<(usize, f32)>> {
    let probe = flat.sub(flat)?.sum_all()?.to_scalar::<f32>()?;
    if probe == 0.0 {
        return Ok(None);
    }
    let values = flat.to_vec1::<f32>()?;
    // Only reached when the probe found one: a plain scan names it.
    Ok(values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i])))
}
