//! The settings of a posterior ([`SwagParams`] → [`SwagConfig`]: fixed when it is created) and
//! of each sample drawn from it ([`SampleParams`] → [`SampleConfig`], [`Divisor`]; their
//! meaning is in [`super::sample`]).
//!
//! Every config of the crate has this shape (linfa's checked params): a plain `…Params` struct
//! with public fields and `Default`, and one `check()` into the `…Config` that functions take.
//! A `…Config` that exists is valid, so nothing checks it again; `From<…Config>` gives its
//! params back to change a field.
//!
//! ```
//! use candle_swag::{Divisor, SampleParams};
//! let options = SampleParams { scale: 0.3, divisor: Divisor::RankMinusOne, ..Default::default() }
//!     .check()?;
//! assert_eq!((options.scale(), options.diag_only()), (0.3, false));
//! let err = SampleParams { scale: -1.0, ..Default::default() }.check().unwrap_err();
//! assert!(err.to_string().contains("scale"));
//! # Ok::<(), candle_swag::Error>(())
//! ```

use candle_core::DType;

use super::store::DeviationStore;
use crate::error::{Error, Result};

/// The settings of a [`SwagConfig`], unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct SwagParams {
    /// K, the maximum number of deviation columns kept (the paper's 20 by default). 0 means
    /// SWAG-diagonal only: no columns are stored.
    pub rank: usize,
    /// Storage dtype of the deviation columns: `F32` (default), or `BF16` / `F16` to halve the
    /// `K·d` buffer (their encodings and errors: [`super::store`]); any other dtype is refused.
    /// Moments are always f32 (compensated, see [`super::posterior`]); the kernels compute in
    /// f32.
    pub deviation_dtype: DType,
    /// Where the deviation columns live ([`DeviationStore`]; the device by default).
    /// `Disk(path)` creates the posterior file at `path` when the posterior is created.
    pub store: DeviationStore,
}

impl Default for SwagParams {
    /// K = 20, f32 deviations on the device.
    fn default() -> Self {
        Self {
            rank: 20,
            deviation_dtype: DType::F32,
            store: DeviationStore::Device,
        }
    }
}

impl SwagParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<SwagConfig> {
        if !matches!(self.deviation_dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::invalid(
                "deviation_dtype",
                format!(
                    "{:?} is not supported; use F32, BF16 or F16",
                    self.deviation_dtype
                ),
            ));
        }
        Ok(SwagConfig(self.clone()))
    }
}

/// Settings fixed when a posterior is created (from [`SwagParams::check`]): the rank K, the
/// storage dtype of the deviation columns and their store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SwagConfig(SwagParams);

impl From<SwagConfig> for SwagParams {
    fn from(config: SwagConfig) -> Self {
        config.0
    }
}

impl SwagConfig {
    /// K, the maximum number of deviation columns kept.
    pub fn rank(&self) -> usize {
        self.0.rank
    }

    /// Where the deviation columns live.
    pub fn store(&self) -> &DeviationStore {
        &self.0.store
    }

    /// Storage dtype of the deviation columns.
    pub fn deviation_dtype(&self) -> DType {
        self.0.deviation_dtype
    }
}

/// The divisor of the low-rank term (see [`super::sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Divisor {
    /// `max(rows − 1, 1)`, rows = columns held (default).
    #[default]
    RowsMinusOne,
    /// `max(K − 1, 1)`, as the reference implementation.
    RankMinusOne,
}

/// The settings of a [`SampleConfig`], unchecked: how a SWAG sample is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// Multiplies the covariance: finite and `>= 0` (0 gives the SWA mean; 0.5 by default,
    /// the paper's).
    pub scale: f64,
    /// Drops (`true`) or keeps (default) the low-rank term: SWAG-diagonal.
    pub diag_only: bool,
    /// The divisor of the low-rank term.
    pub divisor: Divisor,
    /// Lower clamp of the diagonal variance `M2 / n`: finite and `>= 0` (1e-30 by default, as
    /// the reference). It is applied in f32, so values below f32's range act as 0 and leave
    /// the variance as is.
    pub var_clamp: f64,
}

impl Default for SampleParams {
    /// Scale 0.5, full covariance, [`Divisor::RowsMinusOne`], clamp 1e-30.
    fn default() -> Self {
        Self {
            scale: 0.5,
            diag_only: false,
            divisor: Divisor::RowsMinusOne,
            var_clamp: 1e-30,
        }
    }
}

impl SampleParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<SampleConfig> {
        if !(self.scale.is_finite() && self.scale >= 0.0) {
            return Err(Error::invalid(
                "scale",
                format!("must be finite and >= 0, got {}", self.scale),
            ));
        }
        if !(self.var_clamp.is_finite() && self.var_clamp >= 0.0) {
            return Err(Error::invalid(
                "var_clamp",
                format!("must be finite and >= 0, got {}", self.var_clamp),
            ));
        }
        Ok(SampleConfig(*self))
    }
}

/// How a SWAG sample is drawn (from [`SampleParams::check`]): scale, diagonal or full, divisor
/// and variance clamp. The sampler, `log_prob` and [`crate::Predictive`] take it as valid.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SampleConfig(SampleParams);

impl From<SampleConfig> for SampleParams {
    fn from(config: SampleConfig) -> Self {
        config.0
    }
}

impl SampleConfig {
    /// Multiplies the covariance.
    pub fn scale(&self) -> f64 {
        self.0.scale
    }

    /// Whether the low-rank term is dropped (SWAG-diagonal).
    pub fn diag_only(&self) -> bool {
        self.0.diag_only
    }

    /// The divisor of the low-rank term.
    pub fn divisor(&self) -> Divisor {
        self.0.divisor
    }

    /// Lower clamp of the diagonal variance.
    pub fn var_clamp(&self) -> f64 {
        self.0.var_clamp
    }
}
