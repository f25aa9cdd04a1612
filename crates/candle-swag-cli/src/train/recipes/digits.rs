//! The digits recipe (classification)

use super::*;
use crate::data::{bundled, Dataset, Prepared};
use crate::train::method::Method;
use crate::train::run::fit_mlp;
use crate::train::Objective;
use candle_core::{DType, Device, Tensor};
use candle_swag::error::Result;
use candle_swag::metrics::{
    self, ClassificationConfig, ClassificationMetrics, UncertaintyDecomposition,
};
use candle_swag::predictive::batches;
use candle_swag::predictive::BmaParams;
use candle_swag::swag::MultiSwag;
use candle_swag::swag::SampleParams;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One method's classification result on one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationOutcome {
    /// The method.
    pub method: Method,
    /// The seed.
    pub seed: u64,
    /// Accuracy, NLL, ECE, Brier, ... on the (in-distribution) test rows.
    pub metrics: ClassificationMetrics,
    /// AUROC of the predictive entropy, OOD positive (OOD variant only).
    pub auroc_entropy: Option<f64>,
    /// BMA probabilities and per-row uncertainty on the test rows.
    pub prediction: UncertaintyDecomposition,
    /// Predictive entropy on the OOD rows (OOD variant only).
    pub ood_entropy: Option<Vec<f64>>,
    /// Test labels (class indices).
    pub labels: Vec<u32>,
}

/// All methods on one seed of the digits recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationSeed {
    /// One entry per method, in [`Method::ALL`] order.
    pub outcomes: Vec<ClassificationOutcome>,
    /// Wall-clock times.
    pub timings: Timings,
}

/// Runs the digits recipe for one seed; with `ood`, trains on labels 0-4 and scores the
/// entropy AUROC against test rows with labels 5-9.
pub fn run_digits(
    seed: u64,
    ood: bool,
    opts: &RecipeConfig,
    device: &Device,
) -> Result<ClassificationSeed> {
    let start = Instant::now();
    let (data, ood_rows): (Prepared, Option<Dataset>) = if ood {
        let d = bundled::digits_ood(device)?;
        (d.in_distribution, Some(d.out_of_distribution))
    } else {
        (bundled::digits(device)?, None)
    };
    let base = digits_spec(data.train.num_features(), data.output_dim(), seed, opts)?;
    let t0 = Instant::now();
    let first = fit_mlp(&data.train, Objective::CrossEntropy, &run_spec(&base, 0)?)?;
    let train_run0 = t0.elapsed().as_secs_f64();
    let mut fitted = vec![first];
    for r in 1..opts.runs.max(1) {
        fitted.push(fit_mlp(
            &data.train,
            Objective::CrossEntropy,
            &run_spec(&base, r)?,
        )?);
    }
    let labels: Vec<u32> = data.test.targets.to_dtype(DType::U32)?.to_vec1()?;
    let mut timings = Timings {
        train_run0,
        ..Timings::default()
    };
    let mut outcomes = Vec::new();
    let multi = MultiSwag::new(fitted.iter().map(|f| &f.posterior).collect())?;
    let run0 = &fitted[0];
    for method in Method::ALL {
        let t = Instant::now();
        let predictive = method.predictive(
            run0,
            &multi,
            BmaParams {
                sample: SampleParams {
                    scale: opts.scale,
                    ..Default::default()
                },
                samples: opts.samples,
                seed,
            }
            .check()?,
        )?;
        let prediction = predictive
            .classify(&run0.model, all_rows(&data.test)?)?
            .to_host()?;
        let ood_entropy = match &ood_rows {
            Some(o) => Some(
                predictive
                    .classify(&run0.model, all_rows(o)?)?
                    .to_host()?
                    .predictive_entropy,
            ),
            None => None,
        };
        let elapsed = t.elapsed().as_secs_f64();
        match method {
            Method::SwagDiag => timings.bma_swag_diag = elapsed,
            Method::Swag => timings.bma_swag = elapsed,
            _ => {}
        }
        let metrics = metrics::classification_metrics(
            &prediction.mean_probs,
            prediction.n_classes,
            &labels,
            &ClassificationConfig::default(),
        )?;
        let auroc_entropy = match &ood_entropy {
            Some(out) => {
                Some(metrics::ood_metrics_in_out(&prediction.predictive_entropy, out)?.auroc)
            }
            None => None,
        };
        outcomes.push(ClassificationOutcome {
            method,
            seed,
            metrics,
            auroc_entropy,
            prediction,
            ood_entropy,
            labels: labels.clone(),
        });
    }
    timings.total = start.elapsed().as_secs_f64();
    Ok(ClassificationSeed { outcomes, timings })
}

/// Every row of `data` as one batch (the recipes' data sets are small).
pub(super) fn all_rows(
    data: &Dataset,
) -> Result<impl Iterator<Item = candle_core::Result<Tensor>> + Clone + '_> {
    batches(&data.features, data.len().max(1))
}
