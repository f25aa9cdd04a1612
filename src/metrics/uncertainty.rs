//! Uncertainty of a Bayesian model average from per-sample probabilities `[S, N, C]`.
//!
//! For row `n` with sample probabilities `p_s` and their mean `p̄ = (1/S) Σ_s p_s`:
//!
//! * predictive entropy (total uncertainty) `H[p̄] = −Σ_k p̄_k ln p̄_k`;
//! * expected entropy (aleatoric) `(1/S) Σ_s H[p_s]`;
//! * mutual information (epistemic) `H[p̄] − (1/S) Σ_s H[p_s]`. It is ≥ 0 mathematically
//!   (entropy is concave); rounding can make it a few ulps negative, so it is clamped at 0;
//! * variation ratio `1 − m/S`, where `m` is how many samples vote for the most frequent
//!   arg-max class (first class on arg-max ties).
//!
//! `0 ln 0` is taken as 0. Each sample row is validated like a probability row (see
//! [`super`]): the error's row is the data row `n` and the column says which sample.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::classification::argmax;
use super::{check_non_empty, check_probability_row, Probability};
use crate::{Error, Result};

/// Per-row uncertainty measures (each vector has `N` entries) and the BMA probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UncertaintyDecomposition {
    /// Number of samples `S`.
    pub n_samples: usize,
    /// Number of classes `C`.
    pub n_classes: usize,
    /// Row-major `[N, C]` mean of the sample probabilities (the BMA prediction).
    pub mean_probs: Vec<f64>,
    /// Entropy of the mean prediction, in nats.
    pub predictive_entropy: Vec<f64>,
    /// Mean entropy of the sample predictions (aleatoric), in nats.
    pub expected_entropy: Vec<f64>,
    /// Predictive minus expected entropy (epistemic), clamped at 0, in nats.
    pub mutual_information: Vec<f64>,
    /// One minus the fraction of samples voting for the modal arg-max class.
    pub variation_ratio: Vec<f64>,
}

/// Means over rows of the per-row measures of an [`UncertaintyDecomposition`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UncertaintySummary {
    /// Mean predictive entropy.
    pub predictive_entropy: f64,
    /// Mean expected entropy.
    pub expected_entropy: f64,
    /// Mean mutual information.
    pub mutual_information: f64,
    /// Mean variation ratio.
    pub variation_ratio: f64,
}

impl UncertaintyDecomposition {
    /// Number of rows `N`.
    pub fn n_rows(&self) -> usize {
        self.predictive_entropy.len()
    }

    /// Means over rows.
    pub fn summary(&self) -> UncertaintySummary {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        UncertaintySummary {
            predictive_entropy: mean(&self.predictive_entropy),
            expected_entropy: mean(&self.expected_entropy),
            mutual_information: mean(&self.mutual_information),
            variation_ratio: mean(&self.variation_ratio),
        }
    }
}

/// Entropy `−Σ p ln p` (nats) of one distribution, with `0 ln 0 = 0`.
pub(crate) fn entropy<I: IntoIterator<Item = f64>>(p: I) -> f64 {
    -p.into_iter()
        .filter(|&x| x > 0.0)
        .map(|x| x * x.ln())
        .sum::<f64>()
}

/// Decomposes the uncertainty of `S` sample predictions, row-major `[S, N, C]`.
pub fn decompose_uncertainty<T: Probability>(
    samples: &[T],
    n_samples: usize,
    n_classes: usize,
) -> Result<UncertaintyDecomposition> {
    if n_samples == 0 {
        return Err(Error::invalid("n_samples", "must be at least 1"));
    }
    if n_classes == 0 {
        return Err(Error::invalid("n_classes", "must be at least 1"));
    }
    check_non_empty("probabilities", samples.len())?;
    let per_sample = n_classes * n_samples;
    if !samples.len().is_multiple_of(per_sample) {
        return Err(Error::invalid(
            "samples",
            format!(
                "{} values do not form [S = {n_samples}, N, C = {n_classes}]",
                samples.len()
            ),
        ));
    }
    let n = samples.len() / per_sample;
    let c = n_classes;
    let mut mean_probs = vec![0.0f64; n * c];
    let mut expected_entropy = vec![0.0f64; n];
    let mut votes = vec![0u32; n * c];
    for s in 0..n_samples {
        let block = &samples[s * n * c..(s + 1) * n * c];
        for (i, row) in block.chunks_exact(c).enumerate() {
            check_probability_row(i, row).map_err(|e| with_sample(e, s))?;
            let mean_row = &mut mean_probs[i * c..(i + 1) * c];
            for (m, p) in mean_row.iter_mut().zip(row) {
                *m += p.to_f64();
            }
            expected_entropy[i] += entropy(row.iter().map(|p| p.to_f64()));
            votes[i * c + argmax(row).0] += 1;
        }
    }
    let sf = n_samples as f64;
    mean_probs.iter_mut().for_each(|m| *m /= sf);
    expected_entropy.iter_mut().for_each(|h| *h /= sf);
    let variation_ratio = votes
        .chunks_exact(c)
        .map(|v| 1.0 - *v.iter().max().unwrap_or(&0) as f64 / sf)
        .collect();
    Ok(UncertaintyDecomposition::from_averages(
        n_samples,
        n_classes,
        mean_probs,
        expected_entropy,
        variation_ratio,
    ))
}

impl UncertaintyDecomposition {
    /// Completes the decomposition from the averages over samples: the predictive entropy of
    /// `mean_probs` and the mutual information `max(H[p̄] − expected entropy, 0)`, in f64.
    pub(crate) fn from_averages(
        n_samples: usize,
        n_classes: usize,
        mean_probs: Vec<f64>,
        expected_entropy: Vec<f64>,
        variation_ratio: Vec<f64>,
    ) -> Self {
        let predictive_entropy: Vec<f64> = mean_probs
            .chunks_exact(n_classes.max(1))
            .map(|row| entropy(row.iter().copied()))
            .collect();
        let mutual_information = predictive_entropy
            .iter()
            .zip(&expected_entropy)
            .map(|(h, e)| (h - e).max(0.0))
            .collect();
        Self {
            n_samples,
            n_classes,
            mean_probs,
            predictive_entropy,
            expected_entropy,
            mutual_information,
            variation_ratio,
        }
    }
}

/// Names the sample in a row error (`column` becomes e.g. `"sample 3, class 2"`).
fn with_sample(err: Error, sample: usize) -> Error {
    err.map_bad_data(|_, column, _| *column = format!("sample {sample}, {column}"))
}

/// [`decompose_uncertainty`] for a candle tensor of shape `[S, N, C]` (any float dtype, any
/// device; the values are copied to the host as `f32`).
pub fn decompose_uncertainty_tensor(samples: &Tensor) -> Result<UncertaintyDecomposition> {
    let (s, _n, c) = samples.dims3()?;
    let flat = samples
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    decompose_uncertainty(&flat, s, c)
}
