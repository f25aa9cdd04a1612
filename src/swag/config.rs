//! [`SwagConfig`]: what is fixed when a posterior is created.

use candle_core::DType;

use super::store::DeviationStore;
use crate::error::{Error, Result};

/// Settings fixed when a posterior is created: the rank K and the storage dtype of the
/// deviation columns. Checked when made, like [`SampleConfig`](super::SampleConfig).
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
