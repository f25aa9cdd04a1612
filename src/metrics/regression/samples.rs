//! Regression metrics from weight samples instead of Gaussian moments

use super::*;
use crate::metrics::{bad_data, check_non_empty, check_same_len, check_values};
use crate::{Error, Result};

/// Validates row-major `[S, N]` samples; returns `N`.
pub(super) fn check_samples(samples: &[f64], n_samples: usize) -> Result<usize> {
    if n_samples == 0 {
        return Err(Error::invalid("n_samples", "must be at least 1"));
    }
    check_non_empty("samples", samples.len())?;
    if !samples.len().is_multiple_of(n_samples) {
        return Err(Error::invalid(
            "samples",
            format!("{} values do not form [S = {n_samples}, N]", samples.len()),
        ));
    }
    let n = samples.len() / n_samples;
    for (i, v) in samples.iter().enumerate() {
        if !v.is_finite() {
            return Err(bad_data(
                "samples",
                i % n,
                format!("sample {}", i / n),
                format!("value {v} is not finite"),
            ));
        }
    }
    Ok(n)
}

/// Per-row mean and standard deviation (divisor `S`) of row-major `[S, N]` samples.
pub fn sample_moments(samples: &[f64], n_samples: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = check_samples(samples, n_samples)?;
    let mut mean = vec![0.0; n];
    for block in samples.chunks_exact(n) {
        mean.iter_mut().zip(block).for_each(|(m, x)| *m += x);
    }
    mean.iter_mut().for_each(|m| *m /= n_samples as f64);
    let mut var = vec![0.0; n];
    for block in samples.chunks_exact(n) {
        var.iter_mut()
            .zip(block)
            .zip(&mean)
            .for_each(|((v, x), m)| *v += (x - m).powi(2));
    }
    let std = var
        .into_iter()
        .map(|v| (v / n_samples as f64).sqrt())
        .collect();
    Ok((mean, std))
}

/// Mean sample CRPS of row-major `[S, N]` samples against `N` targets.
pub fn crps_samples(
    samples: &[f64],
    n_samples: usize,
    y: &[f64],
    estimator: CrpsEstimator,
) -> Result<f64> {
    let n = check_samples(samples, n_samples)?;
    check_values("targets", y)?;
    check_same_len("samples", n, "targets", y.len())?;
    let m = n_samples as f64;
    let pair_divisor = match estimator {
        CrpsEstimator::Fair if n_samples < 2 => {
            return Err(Error::invalid(
                "n_samples",
                "the fair CRPS needs at least 2 samples",
            ))
        }
        CrpsEstimator::Fair => 2.0 * m * (m - 1.0),
        CrpsEstimator::PlugIn => 2.0 * m * m,
    };
    let mut column = vec![0.0f64; n_samples];
    let mut total = 0.0;
    for (i, &t) in y.iter().enumerate() {
        for (s, c) in column.iter_mut().enumerate() {
            *c = samples[s * n + i];
        }
        column.sort_unstable_by(f64::total_cmp);
        let abs_err: f64 = column.iter().map(|x| (x - t).abs()).sum();
        // Σ_{i<j} (x_(j) − x_(i)) = Σ_j x_(j)(2j − M + 1); ordered pairs count it twice.
        let spread: f64 = column
            .iter()
            .enumerate()
            .map(|(j, x)| x * (2.0 * j as f64 - m + 1.0))
            .sum::<f64>()
            * 2.0;
        total += abs_err / m - spread / pair_divisor;
    }
    Ok(total / n as f64)
}

/// [`regression_metrics`] from row-major `[S, N]` predictive samples: the Gaussian metrics use
/// the samples' mean and standard deviation (divisor `S`, so at least two distinct samples
/// per row are needed), and `crps_samples` holds the fair sample CRPS. No noise is added: a
/// model with observation noise adds it to its samples (or calls [`regression_metrics`]
/// with its own moments).
pub fn regression_metrics_from_samples(
    samples: &[f64],
    n_samples: usize,
    y: &[f64],
    options: &RegressionConfig,
) -> Result<RegressionMetrics> {
    let (mean, std) = sample_moments(samples, n_samples)?;
    check_same_len("samples", mean.len(), "targets", y.len())?;
    if let Some(i) = std.iter().position(|&s| s <= 0.0) {
        return Err(bad_data(
            "samples",
            i,
            "std",
            "all samples of this row are equal (zero spread)",
        ));
    }
    let mut metrics = regression_metrics(&mean, &std, y, options)?;
    metrics.crps_samples = Some(crps_samples(samples, n_samples, y, CrpsEstimator::Fair)?);
    Ok(metrics)
}
