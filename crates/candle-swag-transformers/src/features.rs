//! Frozen-trunk head posteriors with a feature cache.
//!
//! With the trunk frozen, a posterior over the head alone changes nothing before the head, so
//! the trunk's features are computed once per input ([`cache_features`]) and every one of the
//! `S` weight samples runs only the head over them ([`cached`] hands them to
//! `Predictive::classify(&head, ..)` as input batches). `S` samples then cost one trunk pass
//! plus `S` head passes instead of `S` full passes.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use candle_swag::predictive::{batches, Predictive, BmaParams};
//! use candle_swag::{ParamSet, SampleParams, SwagParams, SwagPosterior};
//! use candle_swag_transformers::features::{cache_features, cached};
//!
//! # fn main() -> candle_swag::Result<()> {
//! let dev = Device::Cpu;
//! // A frozen trunk (any ModuleT) and a trainable head in its own VarMap.
//! let trunk = candle_nn::func_t(|x: &Tensor, _train: bool| x.tanh());
//! let varmap = VarMap::new();
//! let head = candle_nn::linear(3, 2, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
//! let params = ParamSet::from_varmap(&varmap)?;
//! let config = SwagParams { rank: 2, ..Default::default() }.check()?;
//! let mut posterior = SwagPosterior::for_params(&params, config)?;
//! for _ in 0..3 {
//!     posterior.collect(&params)?;
//! }
//! let x = Tensor::ones((8, 3), DType::F32, &dev)?;
//! let features = cache_features(&trunk, batches(&x, 4)?)?; // the trunk runs once
//! let sample = SampleParams { scale: 0.5, ..Default::default() };
//! let bma_config = BmaParams { sample, samples: 30, seed: 0 }.check()?;
//! let bma = Predictive::swag(&params, &posterior, bma_config)?
//!     .classify(&head, cached(&features))?;
//! assert_eq!(bma.probs.dims(), &[8, 2]);
//! # Ok(()) }
//! ```

use candle_core::{ModuleT, Tensor};
use candle_swag::{Error, Result};

/// Runs `trunk` (evaluation mode) over every input batch once and keeps the outputs, detached
/// (no op graph kept alive), one tensor per batch.
///
/// Errors: an input iterator with no batch (naming `inputs`), the trunk's errors.
pub fn cache_features<M, I>(trunk: &M, inputs: I) -> Result<Vec<Tensor>>
where
    M: ModuleT + ?Sized,
    I: Iterator<Item = candle_core::Result<Tensor>>,
{
    let out = inputs
        .map(|b| Ok(trunk.forward_t(&b?, false)?.detach()))
        .collect::<Result<Vec<_>>>()?;
    if out.is_empty() {
        return Err(Error::invalid(
            "inputs",
            "the input iterator yielded no batch",
        ));
    }
    Ok(out)
}

/// Cached feature batches as the `Clone` input iterator `Predictive` takes (cheap clones of
/// the tensors' handles, no copy of their data).
pub fn cached(
    features: &[Tensor],
) -> impl Iterator<Item = candle_core::Result<Tensor>> + Clone + '_ {
    features.iter().map(|t| Ok(t.clone()))
}
