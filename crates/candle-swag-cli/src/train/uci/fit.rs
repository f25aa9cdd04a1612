//! `swag bench-uci --fit`

use super::*;
use crate::data::TabularData;
use crate::train::pipeline::{fit_dataset, CsvFitParams};
use crate::train::run::{NoiseModel, NoiseSelection};
use candle_core::Device;
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{self};
use serde::{Deserialize, Serialize};

/// One split of [`run_uci_fit`]: the `swag fit` model scored on the test part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOutcome {
    /// Split index.
    pub split: usize,
    /// The noise model the fit trained with (chosen by cross-validation with `--noise auto`).
    pub noise: NoiseModel,
    /// Test log-likelihood per point, original units.
    pub test_ll: f64,
    /// Test RMSE, original units.
    pub rmse: f64,
    /// Fraction of test rows inside the Gaussian central interval at [`UCI_COVERAGE`].
    pub gaussian_coverage: f64,
    /// The sample scale the fit chose (0.5 without tuning).
    pub scale: f64,
    /// Its homoscedastic noise variance (original units²).
    pub noise_variance: Option<f64>,
    /// How `--noise auto` chose (both models' cross-validated NLLs, standardised units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_selection: Option<NoiseSelection>,
}

/// The splits of [`run_uci`] (same seeds, same test parts), each fitted by `swag fit`'s
/// [`fit_dataset`] with the settings of `fit` (its file and column fields are not read; its
/// seed is replaced by the split's) on the whole training part, then the SWAG BMA at the
/// fit's own scale and noise (`config`'s samples) scored on the test part. This measures what
/// `swag fit` gives with its defaults, where [`run_uci`] measures the papers' protocol.
pub fn run_uci_fit(
    data: &TabularData,
    config: &UciConfig,
    fit: &CsvFitParams,
    device: &Device,
) -> Result<Vec<FitOutcome>> {
    let mut out = Vec::new();
    for (split, seed, prepared) in prepared_splits(data, config, device)? {
        let opts = CsvFitParams {
            seed,
            progress: config.0.progress,
            ..fit.clone()
        }
        .check()?;
        let fitted = fit_dataset(&opts, &prepared.train, 1)?;
        let scaler = prepared
            .target_scaler
            .as_ref()
            .ok_or_else(|| Error::invalid("task", "the UCI protocol is for regression targets"))?;
        let (mean_y, std_y) = (scaler.mean[0], scaler.std[0]);
        let pred = fitted
            .regress(
                &prepared.test,
                &prepared.train.features,
                config.0.samples,
                seed,
            )?
            .to_original_units(mean_y, std_y);
        let targets = prepared.targets_in_original_units(&prepared.test)?;
        let std = pred.std();
        let coverage =
            metrics::prediction_interval_coverage(&pred.mean, &std, &targets, UCI_COVERAGE)?;
        out.push(FitOutcome {
            split,
            noise: fitted.noise,
            test_ll: -metrics::gaussian_nll(&pred.mean, &std, &targets)?,
            rmse: metrics::rmse(&pred.mean, &targets)?,
            gaussian_coverage: coverage.picp,
            scale: fitted.scale,
            noise_variance: fitted.noise_variance.map(|v| v * std_y * std_y),
            noise_selection: fitted.noise_selection,
        });
    }
    Ok(out)
}

/// The Markdown table of [`run_uci_fit`]: one row, test LL and RMSE as mean ± standard error
/// over splits, the mean Gaussian coverage, and how often each noise model was used.
pub fn uci_fit_table(label: &str, outcomes: &[FitOutcome]) -> String {
    let pct = UCI_COVERAGE * 100.0;
    let n = outcomes.len();
    let (ll, ll_se) =
        mean_and_standard_error(&outcomes.iter().map(|o| o.test_ll).collect::<Vec<_>>());
    let (rmse, rmse_se) =
        mean_and_standard_error(&outcomes.iter().map(|o| o.rmse).collect::<Vec<_>>());
    let (cov, cov_se) = mean_and_standard_error(
        &outcomes
            .iter()
            .map(|o| o.gaussian_coverage)
            .collect::<Vec<_>>(),
    );
    let homo = outcomes
        .iter()
        .filter(|o| o.noise == NoiseModel::Homoscedastic)
        .count();
    let (scale, _) = mean_and_standard_error(&outcomes.iter().map(|o| o.scale).collect::<Vec<_>>());
    format!(
        "| swag fit | noise used (homo/hetero) | test LL ({n} splits) | RMSE | Gaussian {pct:.0}% coverage | mean scale |\n\
         |---|---|---|---|---|---|\n\
         | {label} | {homo}/{} | {ll:.3} ± {ll_se:.3} | {rmse:.3} ± {rmse_se:.3} | {cov:.3} ± {cov_se:.3} | {scale:.2} |\n",
        n - homo
    )
}
