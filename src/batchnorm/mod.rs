//! BatchNorm refresh for SWA and SWAG, on candle-nn's own layers, and a BatchNorm layer with a
//! cumulative-average mode.
//!
//! A weight sample (or the SWA mean) is a new network: the running statistics that the
//! BatchNorm layers accumulated during training belong to other weights and must be recomputed
//! before predicting. torch does this with `torch.optim.swa_utils.update_bn`, which switches every
//! BatchNorm to `momentum=None` (an exact equal-weight average over batches) and runs one pass
//! over the data. candle-nn's `BatchNorm` has a fixed momentum (a public `momentum()` getter, no
//! setter) and no cumulative mode, but its statistics are `Var`s that its forward pass updates
//! with that momentum; [`BatchNormRefresh`] uses this to give torch's exact result on candle-nn's
//! layer, unchanged ([`BatchNormStats`] finds the layers by name in a `VarMap`, or takes them
//! from you).
//!
//! [`BatchNorm`] is this crate's own layer, with the **same variable names** as candle-nn's
//! (`<prefix>.weight`, `<prefix>.bias`, `<prefix>.running_mean`, `<prefix>.running_var`):
//! checkpoints written with one load into the other. The refresh treats both the same way.
//!
//! Conventions (those of torch's `BatchNorm1d/2d`):
//! - Input `[N, C]` or `[N, C, d1, d2, ...]`; statistics are taken per channel `C` over all
//!   other dimensions, i.e. over `n = numel / C` values.
//! - Training mode normalises with the batch mean and the **biased** batch variance (divisor `n`)
//!   and updates the running statistics with the batch mean and the **unbiased** batch variance
//!   (divisor `n − 1`); it needs `n >= 2`.
//! - Momentum mode (`Some(m)`, default 0.1): `running = (1 − m) · running + m · batch`.
//! - Cumulative mode (`None`): `running = running + (batch − running) / k` at the `k`-th batch
//!   since the last reset, i.e. the equal-weight mean of the per-batch statistics.
//! - Evaluation mode normalises with the running statistics: `(x − mean) / sqrt(var + eps)`.
//! - Half-precision inputs (f16, bf16) are normalised in f32 and cast back, as candle-nn does.

mod layer;
mod refresh;
mod stats;

pub use layer::{BatchNorm, BatchNormConfig, BatchNormParams};
pub use refresh::BatchNormRefresh;
pub use stats::BatchNormStats;

use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

// Helpers shared by the layer, the statistics and the refresh.
pub(super) fn read_host(v: &Var) -> Result<Vec<f64>> {
    Ok(v.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

pub(super) fn write_host(v: &Var, values: impl Iterator<Item = f64>) -> Result<()> {
    let host: Vec<f64> = values.collect();
    let n = host.len();
    let t = Tensor::from_vec(host, n, v.device())?.to_dtype(v.dtype())?;
    v.set(&t)?;
    Ok(())
}

pub(super) fn check_momentum(m: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&m) {
        return Err(Error::invalid(
            "momentum",
            format!("must be in [0, 1], got {m}"),
        ));
    }
    Ok(())
}

pub(super) fn qualified(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
