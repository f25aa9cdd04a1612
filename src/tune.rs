//! Choosing what a posterior prediction needs, on validation data, for any model: the sample
//! scale (and, for regression, the homoscedastic noise variance) by validation NLL over a grid,
//! through the same [`Predictive`] the user already has.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use candle_swag::predictive::batches;
//! use candle_swag::tune::{tune_regression, ObservationNoise};
//! use candle_swag::{ParamSet, Predictive, BmaParams, SampleParams, SwagParams, SwagPosterior};
//!
//! let device = Device::Cpu;
//! let varmap = VarMap::new();
//! let model = candle_nn::linear(2, 1, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
//! let params = ParamSet::from_varmap(&varmap)?;
//! let config = SwagParams { rank: 3, ..Default::default() }.check()?;
//! let mut posterior = SwagPosterior::for_params(&params, config)?;
//! for k in 0..4 {
//!     let theta = Tensor::new(&[0.5f32 + 0.1 * k as f32, -1.0, 0.2], &device)?;
//!     params.write_flat(&theta)?;
//!     posterior.collect(&params)?; // in real use: along the SGD trajectory
//! }
//! let x_val = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &device)?;
//! let y_val = [0.6, -0.8, -0.1];
//! let chosen = tune_regression(
//!     |scale| {
//!         let sample = SampleParams { scale, ..Default::default() };
//!         Predictive::swag(&params, &posterior, BmaParams { sample, samples: 8, seed: 0 }.check()?)
//!     },
//!     &model,
//!     batches(&x_val, 3)?,
//!     &y_val,
//!     ObservationNoise::Searched,
//! )?;
//! assert!(chosen.best.noise_variance.is_some());
//! # Ok::<(), candle_swag::Error>(())
//! ```
//!
//! # Conventions
//! - The scales tried are [`SCALE_GRID`]; scale 0 is the SWA mean (make the closure return
//!   [`Predictive::swa`] there to spend one forward pass instead of `S` identical ones).
//! - Classification NLL: mean over rows of `−ln max(p̄_y, 1e-12)`, `p̄` the BMA probabilities.
//! - Regression NLL: the Gaussian NLL of the mixture's mean and total variance, mean over rows.
//!   [`ObservationNoise::Searched`] runs the BMA without observation noise (so its variance is
//!   the epistemic part) and picks the noise variance of [`noise_grid`] that minimises the NLL
//!   ([`best_noise_variance`]); [`ObservationNoise::FromModel`] uses the network's own
//!   variance output.
//! - The best point is the one with the lowest NLL, the first on ties (grid order).
//! - For a temperature on classification logits, see [`crate::metrics::recalibration`].

use candle_core::{ModuleT, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::predictive::{Noise, Predictive, VarianceLink};

/// The sample scales tried: 0 (the SWA mean), 0.1, 0.25, 0.5, 1, 2.
pub const SCALE_GRID: [f64; 6] = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0];

/// One point of the tuning grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TunePoint {
    /// Sample scale.
    pub scale: f64,
    /// Validation-optimal noise variance at this scale ([`ObservationNoise::Searched`]), in the
    /// targets' units squared.
    pub noise_variance: Option<f64>,
    /// Validation NLL (mean over rows, in the targets' units).
    pub nll: f64,
}

/// The chosen point and the whole grid, in [`SCALE_GRID`] order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    /// The grid point with the lowest validation NLL (the first on ties).
    pub best: TunePoint,
    /// Every grid point, in [`SCALE_GRID`] order.
    pub grid: Vec<TunePoint>,
}

impl Tuned {
    /// The tunings of cross-validation folds combined, each given with its number of validation
    /// rows: at each scale of the grid, the row-weighted mean of the folds' NLLs and, where
    /// every fold searched one, of their noise variances (each fold's own optimum at that
    /// scale); the best point is the lowest pooled NLL, the first on ties. This is the usual
    /// cross-validated choice of a hyperparameter (the scale), with the noise variance, tuned
    /// within each fold, averaged. Refuses no folds, a fold without rows, or folds whose grids
    /// differ in their scales.
    pub fn pooled(folds: &[(Tuned, usize)]) -> Result<Tuned> {
        let (first, _) = folds
            .first()
            .ok_or_else(|| Error::invalid("folds", "no fold tunings to pool"))?;
        let rows: usize = folds.iter().map(|(_, r)| r).sum();
        if let Some(i) = folds.iter().position(|(_, r)| *r == 0) {
            return Err(Error::invalid(
                "folds",
                format!("fold {i} has no validation rows"),
            ));
        }
        let scales = |t: &Tuned| t.grid.iter().map(|p| p.scale).collect::<Vec<_>>();
        if let Some(i) = folds.iter().position(|(t, _)| scales(t) != scales(first)) {
            return Err(Error::invalid(
                "folds",
                format!("fold {i} was tuned on other scales than fold 0"),
            ));
        }
        let weight = |r: usize| r as f64 / rows as f64;
        let grid: Vec<TunePoint> = first
            .grid
            .iter()
            .enumerate()
            .map(|(i, p)| TunePoint {
                scale: p.scale,
                noise_variance: folds
                    .iter()
                    .map(|(t, r)| t.grid[i].noise_variance.map(|v| v * weight(*r)))
                    .sum(),
                nll: folds.iter().map(|(t, r)| t.grid[i].nll * weight(*r)).sum(),
            })
            .collect();
        best_of(grid)
    }
}

/// Where a regression's observation noise comes from (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObservationNoise {
    /// One variance for all rows, searched on [`noise_grid`] per scale.
    Searched,
    /// The network outputs `[mean, raw variance]` per row, mapped by the link.
    FromModel(VarianceLink),
}

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
pub(crate) fn gaussian_nll_with_noise(
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
/// 1e-4 to 1e2 (ratio 10^(1/100) ≈ 1.023 between neighbours); standardise the targets first.
pub fn noise_grid() -> Vec<f64> {
    (0..=600)
        .map(|i| 10f64.powf(-4.0 + i as f64 / 100.0))
        .collect()
}

/// The noise variance of [`noise_grid`] that minimises the Gaussian NLL of `mean` with variance
/// `var_epistemic + noise` (first on ties), and that NLL.
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

/// The validation NLL of a classification BMA (module docs).
pub(crate) fn classification_nll<M, I>(
    predictive: &Predictive,
    model: &M,
    inputs: I,
    labels: &[u32],
) -> Result<f64>
where
    M: ModuleT + ?Sized,
    I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
{
    let dec = predictive.classify(model, inputs)?.to_host()?;
    let c = dec.n_classes;
    if dec.mean_probs.len() != labels.len() * c {
        return Err(Error::invalid(
            "labels",
            format!(
                "{} labels for {} predicted rows",
                labels.len(),
                dec.mean_probs.len() / c.max(1)
            ),
        ));
    }
    let mut sum = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        if y as usize >= c {
            return Err(Error::invalid(
                "labels",
                format!("label {y} at row {i} is not below the {c} classes"),
            ));
        }
        sum -= dec.mean_probs[i * c + y as usize].max(1e-12).ln();
    }
    Ok(sum / labels.len().max(1) as f64)
}

/// The validation NLL of a regression BMA and the noise variance it used (module docs).
pub fn regression_nll<M, I>(
    predictive: &Predictive,
    model: &M,
    inputs: I,
    targets: &[f64],
    noise: ObservationNoise,
) -> Result<(Option<f64>, f64)>
where
    M: ModuleT + ?Sized,
    I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
{
    match noise {
        ObservationNoise::FromModel(link) => {
            let m = predictive
                .regress(model, inputs, Noise::Heteroscedastic(link))?
                .to_host()?;
            Ok((
                None,
                crate::metrics::gaussian_nll(&m.mean, &m.std(), targets)?,
            ))
        }
        ObservationNoise::Searched => {
            let m = predictive
                .regress(model, inputs, Noise::Homoscedastic { variance: 0.0 })?
                .to_host()?;
            if m.mean.len() != targets.len() {
                return Err(Error::invalid(
                    "targets",
                    format!(
                        "{} targets for {} predicted rows",
                        targets.len(),
                        m.mean.len()
                    ),
                ));
            }
            let (v, nll) = best_noise_variance(&m.mean, &m.var_epistemic, targets);
            Ok((Some(v), nll))
        }
    }
}

/// The scale of [`SCALE_GRID`] with the lowest classification NLL on `inputs`/`labels`;
/// `predictive_at(scale)` builds the prediction at each scale (with its refresh, samples, seed).
pub fn tune_classification<'a, M, I, F>(
    mut predictive_at: F,
    model: &M,
    inputs: I,
    labels: &[u32],
) -> Result<Tuned>
where
    M: ModuleT + ?Sized,
    I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
    F: FnMut(f64) -> Result<Predictive<'a>>,
{
    tune_grid(|scale| {
        let nll = classification_nll(&predictive_at(scale)?, model, inputs.clone(), labels)?;
        Ok(TunePoint {
            scale,
            noise_variance: None,
            nll,
        })
    })
}

/// The scale of [`SCALE_GRID`] (and, with [`ObservationNoise::Searched`], the noise variance)
/// with the lowest regression NLL on `inputs`/`targets` (module docs).
pub fn tune_regression<'a, M, I, F>(
    mut predictive_at: F,
    model: &M,
    inputs: I,
    targets: &[f64],
    noise: ObservationNoise,
) -> Result<Tuned>
where
    M: ModuleT + ?Sized,
    I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
    F: FnMut(f64) -> Result<Predictive<'a>>,
{
    tune_grid(|scale| {
        let predictive = predictive_at(scale)?;
        let (noise_variance, nll) =
            regression_nll(&predictive, model, inputs.clone(), targets, noise)?;
        Ok(TunePoint {
            scale,
            noise_variance,
            nll,
        })
    })
}

fn tune_grid(mut point_at: impl FnMut(f64) -> Result<TunePoint>) -> Result<Tuned> {
    let grid = SCALE_GRID
        .iter()
        .map(|&s| point_at(s))
        .collect::<Result<Vec<_>>>()?;
    best_of(grid)
}

/// The grid with its lowest-NLL point (the first on ties).
fn best_of(grid: Vec<TunePoint>) -> Result<Tuned> {
    let best = grid
        .iter()
        .copied()
        .fold(None::<TunePoint>, |best, p| match best {
            Some(b) if b.nll <= p.nll => Some(b),
            _ => Some(p),
        })
        .ok_or_else(|| Error::invalid("scale", "empty tuning grid"))?;
    Ok(Tuned { best, grid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_noise_matches_residual_variance_without_epistemic_part() -> anyhow::Result<()> {
        // With zero epistemic variance the NLL-optimal noise is the mean squared residual.
        let mean = vec![0.0; 4];
        let y = vec![1.0, -1.0, 2.0, -2.0]; // mean squared residual 2.5
        let (s2, _) = best_noise_variance(&mean, &[0.0; 4], &y);
        assert!((s2 / 2.5 - 1.0).abs() < 0.012, "{s2}");
        assert_eq!(mean_squared_residual(&mean, &y).expect("same lengths"), 2.5);
        Ok(())
    }

    fn point(scale: f64, noise_variance: Option<f64>, nll: f64) -> TunePoint {
        TunePoint {
            scale,
            noise_variance,
            nll,
        }
    }

    /// Two folds of 30 and 10 rows (weights 3/4, 1/4): at scale 0 NLL 1·¾ + 3·¼ = 1.5 and
    /// noise 0.2·¾ + 0.6·¼ = 0.3; at scale 1 NLL 2·¾ + 0·¼ = 1.5 (a tie: scale 0 kept) and
    /// noise 0.1·¾ + 0.5·¼ = 0.2; at scale 2 NLL 1.2·¾ + 1.6·¼ = 1.3, the best, though neither
    /// fold alone has it best.
    #[test]
    fn pooled_folds_weigh_each_scale_by_rows() -> anyhow::Result<()> {
        let a = best_of(vec![
            point(0.0, Some(0.2), 1.0),
            point(1.0, Some(0.1), 2.0),
            point(2.0, Some(0.4), 1.2),
        ])?;
        let b = best_of(vec![
            point(0.0, Some(0.6), 3.0),
            point(1.0, Some(0.5), 0.0),
            point(2.0, Some(0.8), 1.6),
        ])?;
        assert_eq!(a.best.scale, 0.0);
        assert_eq!(b.best.scale, 1.0);
        let p = Tuned::pooled(&[(a.clone(), 30), (b.clone(), 10)])?;
        let want = [(0.0, 0.3, 1.5), (1.0, 0.2, 1.5), (2.0, 0.5, 1.3)];
        for (got, (scale, noise, nll)) in p.grid.iter().zip(want) {
            assert_eq!(got.scale, scale);
            assert!(
                (got.noise_variance.unwrap_or(f64::NAN) - noise).abs() < 1e-12,
                "{got:?}"
            );
            assert!((got.nll - nll).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(p.best, p.grid[2]);
        // One fold is itself.
        assert_eq!(Tuned::pooled(&[(a.clone(), 7)])?, a);
        // Without a searched noise variance (a heteroscedastic model) there is none pooled.
        let hetero = best_of(vec![
            point(0.0, None, 1.0),
            point(1.0, None, 0.5),
            point(2.0, None, 2.0),
        ])?;
        assert_eq!(
            Tuned::pooled(&[(hetero.clone(), 5), (hetero, 5)])?.best,
            point(1.0, None, 0.5)
        );
        // Refused: nothing, an empty fold, other scales.
        assert!(Tuned::pooled(&[]).is_err());
        assert!(Tuned::pooled(&[(a.clone(), 0)]).is_err());
        let other = best_of(vec![point(0.5, None, 1.0)])?;
        let err = Tuned::pooled(&[(a, 3), (other, 3)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("fold 1"), "{err}");
        Ok(())
    }
}
