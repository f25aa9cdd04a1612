//! [`BatchNormStats`]: the running statistics of one BatchNorm layer, candle-nn's or this
//! crate's, found by name in a `VarMap` or taken from the layer.

use candle_core::Var;
use candle_nn::VarMap;

use super::*;
use crate::{Error, Result};

/// The running statistics of one BatchNorm layer, as [`BatchNormRefresh`] needs them: the two
/// `Var`s the layer's forward reads and writes, and the momentum `m` of its update rule
/// `running ← (1 − m)·running + m·batch`.
///
/// Works for candle-nn's own [`candle_nn::BatchNorm`] (built by `candle_nn::batch_norm` from a
/// VarMap, or by `BatchNorm::new` from tensors loaded read-only: the layer keeps its statistics in
/// `Var`s either way) and for this crate's [`BatchNorm`]. A clone shares the variables.
#[derive(Debug, Clone)]
pub struct BatchNormStats {
    pub(super) name: String,
    pub(super) running_mean: Var,
    pub(super) running_var: Var,
    pub(super) momentum: f64,
}

impl BatchNormStats {
    /// The statistics of a candle-nn layer, named `name` in errors and in
    /// [`BatchNormStats::buffers`] (use its VarBuilder prefix, e.g. `"bn1"`). The momentum is read
    /// with `BatchNorm::momentum()`.
    ///
    /// Errors (`Error::InvalidArgument` naming `momentum`): a layer with momentum 0 never updates
    /// its statistics, so no refresh can reach it.
    pub fn of_candle_nn(name: impl Into<String>, layer: &candle_nn::BatchNorm) -> Result<Self> {
        Self::from_parts(
            name.into(),
            // `running_mean()` is the layer's own variable: `from_tensor` shares its storage.
            Var::from_tensor(layer.running_mean())?,
            Var::from_tensor(layer.running_var())?,
            layer.momentum(),
        )
    }

    /// The statistics of this crate's [`BatchNorm`] layer (named by its prefix).
    ///
    /// Errors (`Error::InvalidArgument` naming `momentum`): a layer switched to the cumulative
    /// mode (`momentum() == None`) or with momentum 0.
    pub fn of_layer(layer: &BatchNorm) -> Result<Self> {
        let momentum = layer.momentum().ok_or_else(|| {
            Error::invalid(
                "momentum",
                format!(
                    "BatchNorm `{}` is in cumulative mode; give it a momentum (set_momentum) before a refresh",
                    layer.prefix()
                ),
            )
        })?;
        Self::from_parts(
            layer.prefix().to_string(),
            layer.running_mean().clone(),
            layer.running_var().clone(),
            momentum,
        )
    }

    /// Every BatchNorm layer of `varmap`: each pair `<prefix>.running_mean` /
    /// `<prefix>.running_var`, sorted by prefix, with the momentum of the layers that
    /// `candle_nn::batch_norm` builds by default (`candle_nn::BatchNormConfig::default()`,
    /// 0.1 in candle-nn 0.11; this crate's [`BatchNormConfig`] uses the same). A VarMap does not
    /// record the momentum its layers were built with: for layers built with another one, use
    /// [`BatchNormStats::from_varmap_with_momentum`], or pass the layers themselves
    /// ([`BatchNormStats::of_candle_nn`], which reads it) — a wrong momentum scales every
    /// refreshed statistic by `true/given`.
    ///
    /// Returns an empty list for a model without BatchNorm. Errors: a `running_mean` without its
    /// `running_var` or the reverse (`Error::InvalidArgument` naming the variable).
    pub fn from_varmap(varmap: &VarMap) -> Result<Vec<Self>> {
        Self::from_varmap_prefixes(varmap, None, candle_nn::BatchNormConfig::default().momentum)
    }

    /// [`BatchNormStats::from_varmap`] for layers all built with `momentum` (in (0, 1], torch's
    /// convention, as candle-nn's): errors as `from_varmap`, and a momentum outside (0, 1].
    pub fn from_varmap_with_momentum(varmap: &VarMap, momentum: f64) -> Result<Vec<Self>> {
        Self::from_varmap_prefixes(varmap, None, momentum)
    }

    /// [`BatchNormStats::from_varmap`] restricted to the layers whose prefix is in `prefixes`
    /// (exact match), with candle-nn's default momentum. Errors name a prefix with no BatchNorm
    /// statistics in the VarMap.
    pub fn from_varmap_named(varmap: &VarMap, prefixes: &[&str]) -> Result<Vec<Self>> {
        Self::from_varmap_prefixes(
            varmap,
            Some(prefixes),
            candle_nn::BatchNormConfig::default().momentum,
        )
    }

    fn from_varmap_prefixes(
        varmap: &VarMap,
        only: Option<&[&str]>,
        momentum: f64,
    ) -> Result<Vec<Self>> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("varmap", "the VarMap's lock is poisoned"))?;
        let mut prefixes: Vec<&str> = data
            .keys()
            .filter_map(|k| {
                k.strip_suffix(".running_mean")
                    .or_else(|| k.strip_suffix(".running_var"))
            })
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        if let Some(only) = only {
            if let Some(missing) = only.iter().find(|p| !prefixes.contains(p)) {
                return Err(Error::invalid(
                    "prefixes",
                    format!("no BatchNorm statistics `{missing}.running_mean` in the VarMap"),
                ));
            }
            prefixes.retain(|p| only.contains(p));
        }
        prefixes
            .into_iter()
            .map(|prefix| {
                let get = |buffer: &str| {
                    let name = qualified(prefix, buffer);
                    data.get(&name).cloned().ok_or_else(|| {
                        Error::invalid(name, format!("BatchNorm `{prefix}` lacks its {buffer}"))
                    })
                };
                Self::from_parts(
                    prefix.to_string(),
                    get("running_mean")?,
                    get("running_var")?,
                    momentum,
                )
            })
            .collect()
    }

    fn from_parts(
        name: String,
        running_mean: Var,
        running_var: Var,
        momentum: f64,
    ) -> Result<Self> {
        if !(momentum > 0.0 && momentum <= 1.0) {
            return Err(Error::invalid(
                "momentum",
                format!("BatchNorm `{name}`: must be in (0, 1] for a refresh, got {momentum}"),
            ));
        }
        if running_mean.dims() != running_var.dims() || running_mean.rank() != 1 {
            return Err(Error::invalid(
                name.clone(),
                format!(
                    "BatchNorm `{name}`: running_mean {:?} and running_var {:?} must be equal 1-d shapes",
                    running_mean.dims(),
                    running_var.dims()
                ),
            ));
        }
        Ok(Self {
            name,
            running_mean,
            running_var,
            momentum,
        })
    }

    /// The layer's name (its prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The momentum of the layer's update rule.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// The running mean `[C]` (the layer's own variable).
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The running variance `[C]` (the layer's own variable).
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// The statistics of `layers` as `(name, Var)` pairs, `<name>.running_mean` then
    /// `<name>.running_var` per layer: e.g. to average them alongside the weights
    /// ([`crate::averaging`]) or to keep them out of an optimizer.
    pub fn buffers(layers: &[BatchNormStats]) -> Vec<(String, Var)> {
        layers
            .iter()
            .flat_map(|l| {
                [
                    (qualified(&l.name, "running_mean"), l.running_mean.clone()),
                    (qualified(&l.name, "running_var"), l.running_var.clone()),
                ]
            })
            .collect()
    }
}
