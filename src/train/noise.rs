//! The homoscedastic noise variance of the regression recipes: the training residual of the
//! reference recipe, or the validation-optimal value on a grid.

use crate::error::{Error, Result};

/// Mean squared residual `(1/n) Σ (μ_i − y_i)²`: the homoscedastic noise estimate of the
/// reference recipe when computed on the training rows.
pub fn mean_squared_residual(mean: &[f64], targets: &[f64]) -> Result<f64> {
    if mean.len() != targets.len() || mean.is_empty() {
        return Err(Error::invalid(
            "targets",
            format!("{} predictions for {} targets", mean.len(), targets.len()),
        ));
    }
    Ok(mean
        .iter()
        .zip(targets)
        .map(|(m, y)| (m - y) * (m - y))
        .sum::<f64>()
        / mean.len() as f64)
}

/// Mean Gaussian negative log-likelihood `(1/n) Σ ½ ln(2π σ²_i) + (y_i − μ_i)² / (2σ²_i)`, with
/// `σ²_i = var_epistemic_i + noise`.
pub fn gaussian_nll_with_noise(
    mean: &[f64],
    var_epistemic: &[f64],
    noise: f64,
    targets: &[f64],
) -> f64 {
    let n = mean.len().max(1) as f64;
    mean.iter()
        .zip(var_epistemic)
        .zip(targets)
        .map(|((m, v), y)| {
            let s2 = v + noise;
            0.5 * (2.0 * std::f64::consts::PI * s2).ln() + (y - m) * (y - m) / (2.0 * s2)
        })
        .sum::<f64>()
        / n
}

/// The noise variance grid searched by [`best_noise_variance`]: 601 values log-spaced from
/// 1e-4 to 1e2 (ratio 10^(1/100) ≈ 1.023 between neighbours), in standardised target units.
pub fn noise_grid() -> Vec<f64> {
    (0..=600)
        .map(|i| 10f64.powf(-4.0 + i as f64 / 100.0))
        .collect()
}

/// The noise variance of [`noise_grid`] that minimises the validation NLL (first on ties), and
/// that NLL.
pub fn best_noise_variance(mean: &[f64], var_epistemic: &[f64], targets: &[f64]) -> (f64, f64) {
    noise_grid()
        .into_iter()
        .map(|s2| {
            (
                s2,
                gaussian_nll_with_noise(mean, var_epistemic, s2, targets),
            )
        })
        .fold((f64::NAN, f64::INFINITY), |best, cur| {
            if cur.1 < best.1 {
                cur
            } else {
                best
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_noise_matches_residual_variance_without_epistemic_part() {
        // With zero epistemic variance the NLL-optimal noise is the mean squared residual.
        let mean = vec![0.0; 4];
        let y = vec![1.0, -1.0, 2.0, -2.0]; // mean squared residual 2.5
        let (s2, _) = best_noise_variance(&mean, &[0.0; 4], &y);
        assert!((s2 / 2.5 - 1.0).abs() < 0.012, "{s2}");
    }
}
