//! The settings of a set of adapters ([`LoraParams`] → [`LoraConfig`]).

use candle_swag::{Error, Result};

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
    /// `classifier`); see the [module docs](crate::lora).
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
    /// [`Lora::new`](super::Lora::new).
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
