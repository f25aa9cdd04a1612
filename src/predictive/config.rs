//! How many weight samples a Bayesian model average draws, and how ([`BmaParams`] →
//! [`BmaConfig`], in the crate's config shape: see [`crate::swag::config`]).

use crate::error::{Error, Result};
use crate::swag::{SampleConfig, SampleParams};

/// The settings of a [`BmaConfig`], unchecked.
///
/// ```
/// use candle_swag::predictive::BmaParams;
/// use candle_swag::SampleParams;
/// let bma = BmaParams {
///     sample: SampleParams { scale: 0.3, ..Default::default() },
///     samples: 20,
///     ..Default::default()
/// }
/// .check()?;
/// assert_eq!((bma.samples(), bma.seed(), bma.sample().scale()), (20, 0, 0.3));
/// assert!(BmaParams { samples: 0, ..Default::default() }.check().is_err());
/// # Ok::<(), candle_swag::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BmaParams {
    /// How each sample is drawn (scale, diagonal or full, divisor, clamp).
    pub sample: SampleParams,
    /// `S`, the number of weight samples averaged: at least 1 (30 by default, the paper's
    /// choice for its figures).
    pub samples: usize,
    /// Seeds the one `StdRng` all `S` samples draw from, so a seed fixes the prediction.
    pub seed: u64,
}

impl Default for BmaParams {
    /// Default sampling, 30 samples, seed 0.
    fn default() -> Self {
        Self {
            sample: SampleParams::default(),
            samples: 30,
            seed: 0,
        }
    }
}

impl BmaParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<BmaConfig> {
        if self.samples == 0 {
            return Err(Error::invalid("samples", "must be at least 1"));
        }
        Ok(BmaConfig {
            sample: self.sample.check()?,
            samples: self.samples,
            seed: self.seed,
        })
    }
}

/// A checked [`BmaParams`]: what [`Predictive::swag`](super::Predictive::swag) and
/// [`Predictive::multi_swag`](super::Predictive::multi_swag) take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BmaConfig {
    sample: SampleConfig,
    samples: usize,
    seed: u64,
}

impl Default for BmaConfig {
    fn default() -> Self {
        Self {
            sample: SampleConfig::default(),
            samples: 30,
            seed: 0,
        }
    }
}

impl From<BmaConfig> for BmaParams {
    fn from(config: BmaConfig) -> Self {
        Self {
            sample: config.sample.into(),
            samples: config.samples,
            seed: config.seed,
        }
    }
}

impl BmaConfig {
    /// How each sample is drawn.
    pub fn sample(&self) -> SampleConfig {
        self.sample
    }

    /// `S`, the number of weight samples.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The seed of the samples' noise.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}
