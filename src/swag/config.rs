//! The settings of a posterior ([`SwagConfig`]: fixed when it is created) and of each sample
//! drawn from it ([`SampleConfig`], [`Divisor`]; their meaning is in [`super::sample`]).

use candle_core::DType;

use super::store::DeviationStore;
use crate::error::{Error, Result};

/// Settings fixed when a posterior is created: the rank K and the storage dtype of the
/// deviation columns. Checked when made, like [`SampleConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct SwagConfig {
    rank: usize,
    deviation_dtype: DType,
    store: DeviationStore,
}

impl Default for SwagConfig {
    /// K = 20 (the paper's), f32 deviations.
    fn default() -> Self {
        Self {
            rank: 20,
            deviation_dtype: DType::F32,
            store: DeviationStore::Device,
        }
    }
}

impl SwagConfig {
    /// Rank `K`, the maximum number of deviation columns kept, with f32 deviations. 0 means
    /// SWAG-diagonal only: no columns are stored.
    pub fn with_rank(rank: usize) -> Self {
        Self {
            rank,
            ..Self::default()
        }
    }

    /// Storage dtype of the deviation columns: `F32` (default), or `BF16` / `F16` to halve the
    /// `K·d` buffer (their encodings and errors: [`super::store`]); any other dtype is refused.
    /// Moments are always f32 (compensated, see the [module docs](self)); the kernels compute
    /// in f32.
    pub fn with_deviation_dtype(mut self, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::invalid(
                "deviation_dtype",
                format!("{dtype:?} is not supported; use F32, BF16 or F16"),
            ));
        }
        self.deviation_dtype = dtype;
        Ok(self)
    }

    /// Where the deviation columns live ([`DeviationStore`]; the device by default).
    /// `Disk(path)` creates the posterior file at `path` when the posterior is created.
    pub fn with_store(mut self, store: DeviationStore) -> Self {
        self.store = store;
        self
    }

    /// K, the maximum number of deviation columns kept.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Where the deviation columns live.
    pub fn store(&self) -> &DeviationStore {
        &self.store
    }

    /// Storage dtype of the deviation columns.
    pub fn deviation_dtype(&self) -> DType {
        self.deviation_dtype
    }
}

/// The divisor of the low-rank term (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Divisor {
    /// `max(rows − 1, 1)`, rows = columns held (default).
    #[default]
    RowsMinusOne,
    /// `max(K − 1, 1)`, as the reference implementation.
    RankMinusOne,
}

/// How a SWAG sample is drawn: scale, diagonal or full, divisor and variance clamp.
///
/// Checked when made (linfa's checked-params pattern): every constructor and `with_*` setter
/// that takes a number returns `Result`, so a `SampleConfig` that exists is valid and the
/// sampler, `log_prob` and [`crate::Predictive`] never check it again.
///
/// ```
/// use candle_swag::{Divisor, SampleConfig};
/// let opts = SampleConfig::with_scale(0.5)?.with_divisor(Divisor::RankMinusOne);
/// assert_eq!((opts.scale(), opts.diag_only()), (0.5, false));
/// assert!(SampleConfig::with_scale(-1.0).is_err());
/// # Ok::<(), candle_swag::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleConfig {
    scale: f64,
    diag_only: bool,
    divisor: Divisor,
    var_clamp: f64,
}

impl Default for SampleConfig {
    /// Scale 0.5 (the paper's), full covariance, [`Divisor::RowsMinusOne`], clamp 1e-30.
    fn default() -> Self {
        Self {
            scale: 0.5,
            diag_only: false,
            divisor: Divisor::RowsMinusOne,
            var_clamp: 1e-30,
        }
    }
}

impl SampleConfig {
    /// Default settings with the given scale, which multiplies the covariance: finite and
    /// `>= 0` (0 gives the SWA mean).
    pub fn with_scale(scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(Error::invalid(
                "scale",
                format!("must be finite and >= 0, got {scale}"),
            ));
        }
        Ok(Self {
            scale,
            ..Self::default()
        })
    }

    /// Default settings with the given scale, diagonal only (SWAG-diagonal).
    pub fn diagonal(scale: f64) -> Result<Self> {
        Ok(Self::with_scale(scale)?.with_diag_only(true))
    }

    /// Drops (`true`) or keeps the low-rank term.
    pub fn with_diag_only(mut self, diag_only: bool) -> Self {
        self.diag_only = diag_only;
        self
    }

    /// The divisor of the low-rank term (module docs).
    pub fn with_divisor(mut self, divisor: Divisor) -> Self {
        self.divisor = divisor;
        self
    }

    /// Lower clamp of the diagonal variance `M2 / n`: finite and `>= 0`. It is applied in f32,
    /// so values below f32's range act as 0 and leave the variance as is.
    pub fn with_var_clamp(mut self, var_clamp: f64) -> Result<Self> {
        if !(var_clamp.is_finite() && var_clamp >= 0.0) {
            return Err(Error::invalid(
                "var_clamp",
                format!("must be finite and >= 0, got {var_clamp}"),
            ));
        }
        self.var_clamp = var_clamp;
        Ok(self)
    }

    /// Multiplies the covariance (0.5 by default).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether the low-rank term is dropped (SWAG-diagonal).
    pub fn diag_only(&self) -> bool {
        self.diag_only
    }

    /// The divisor of the low-rank term.
    pub fn divisor(&self) -> Divisor {
        self.divisor
    }

    /// Lower clamp of the diagonal variance (1e-30 by default, as the reference).
    pub fn var_clamp(&self) -> f64 {
        self.var_clamp
    }
}
