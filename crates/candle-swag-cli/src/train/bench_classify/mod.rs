//! `swag bench-classify`: what `swag fit` gives with its defaults on a classification table,
//! beside the linear model a user already has (the classification sibling of
//! `swag bench-uci --fit`).
//!
//! Per split (seed `seed + split`):
//! 1. A stratified random [`ClassifyBenchParams::test_fraction`] (25%) of each class's rows is
//!    the test part, the rest the training part ([`stratified_split`]). Inputs are
//!    standardised with the training part's mean and population std, as `swag fit` does.
//! 2. **swag fit**: the training part is fitted by [`fit_dataset`], the function behind
//!    `swag fit` (its tuning of the sample scale on a validation split included), with the
//!    settings given (by default `swag fit`'s defaults, [`CsvFitParams::new`]; the split's seed
//!    replaces theirs), and the test part is scored with the SWAG BMA at the fit's own scale
//!    (`samples` samples, as `swag predict` does) and, for comparison, with its SWA mean.
//! 3. **logistic**: a multinomial L2 logistic regression on the same standardised inputs,
//!    scikit-learn's `LogisticRegression()` objective with its default `C = 1`, fitted to
//!    convergence in f64 ([`logistic`]).
//!
//! Accuracy, NLL and top-label ECE (15 equal-width bins) are the crate's
//! [`candle_swag::metrics::classification_metrics`]; the table gives mean ± standard error
//! (population std / √splits) over splits.

pub mod logistic;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::data::{prepare, FeatureScaling, Split, TabularData, Targets};
use crate::train::pipeline::{fit_dataset, CsvFitParams};
use crate::train::run::{swag_at_scale, with_refresh};
use crate::train::uci::mean_and_standard_error;
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{classification_metrics, ClassificationParams};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::swag::SampleParams;
use candle_swag::tune::SCALE_GRID;
use logistic::{LogisticParams, LogisticRegression};

/// The settings of [`run_bench_classify`], unchecked (the crate's config shape).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyBenchParams {
    /// Random stratified splits, at least 2 for a standard error (10 by default).
    pub splits: usize,
    /// Split `i` uses seed `seed + i` (0 by default).
    pub seed: u64,
    /// Fraction of each class's rows in the test part, in (0, 1) (0.25 by default).
    pub test_fraction: f64,
    /// SWAG samples per test prediction, at least 1 (30 by default, as `swag predict`).
    pub samples: usize,
    /// The logistic regression's settings (scikit-learn's default `C = 1`).
    pub logistic: LogisticParams,
    /// Shows training progress bars (off by default).
    pub progress: bool,
}

impl Default for ClassifyBenchParams {
    fn default() -> Self {
        Self {
            splits: 10,
            seed: 0,
            test_fraction: 0.25,
            samples: 30,
            logistic: LogisticParams::default(),
            progress: false,
        }
    }
}

impl ClassifyBenchParams {
    /// The checked settings; the error names the field.
    pub fn check(&self) -> Result<ClassifyBenchConfig> {
        if self.splits < 2 {
            return Err(Error::invalid(
                "splits",
                format!(
                    "{}: at least 2 splits are needed for a standard error",
                    self.splits
                ),
            ));
        }
        if self.samples == 0 {
            return Err(Error::invalid("samples", "must be at least 1"));
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(Error::invalid(
                "test-fraction",
                format!("{} is not in (0, 1)", self.test_fraction),
            ));
        }
        self.logistic.check()?;
        Ok(ClassifyBenchConfig(self.clone()))
    }
}

/// Checked settings of [`run_bench_classify`] (from [`ClassifyBenchParams::check`]); read them
/// through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyBenchConfig(ClassifyBenchParams);

impl std::ops::Deref for ClassifyBenchConfig {
    type Target = ClassifyBenchParams;
    fn deref(&self) -> &ClassifyBenchParams {
        &self.0
    }
}

/// The models of the benchmark, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifyMethod {
    /// `swag fit`'s SWAG BMA at its tuned scale: what `swag predict` gives.
    SwagFit,
    /// The SWA mean of the same fit.
    SwaOfFit,
    /// The scaled logistic regression.
    Logistic,
}

impl ClassifyMethod {
    /// Table order.
    pub const ALL: [ClassifyMethod; 3] = [
        ClassifyMethod::SwagFit,
        ClassifyMethod::SwaOfFit,
        ClassifyMethod::Logistic,
    ];

    /// The name in the table.
    pub fn display(self) -> &'static str {
        match self {
            ClassifyMethod::SwagFit => "swag fit: SWAG, tuned scale",
            ClassifyMethod::SwaOfFit => "swag fit: SWA mean",
            ClassifyMethod::Logistic => "logistic regression",
        }
    }
}

/// One model's test metrics on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyOutcome {
    /// Split index.
    pub split: usize,
    /// The model.
    pub method: ClassifyMethod,
    /// Test accuracy.
    pub accuracy: f64,
    /// Test NLL (mean, nats).
    pub nll: f64,
    /// Test top-label ECE, 15 equal-width bins.
    pub ece: f64,
    /// The fit's sample scale (`swag fit` rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// The fit's last training loss (`swag fit` rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// The weight decay the fit trained with (`swag fit` rows; chosen on validation with
    /// `--weight-decay auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

/// Row indices split per class: within each class a seeded shuffle, then
/// `round(fraction · rows of the class)` rows (at least 1, at most all but 1) are test rows.
/// Returns (training rows, test rows), both sorted. Refuses a fraction outside (0, 1), a label
/// out of range and a class with fewer than 2 rows (naming it).
pub fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "test-fraction",
            format!("{fraction} is not in (0, 1)"),
        ));
    }
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &y) in labels.iter().enumerate() {
        by_class
            .get_mut(y)
            .ok_or_else(|| {
                Error::invalid(
                    "labels",
                    format!("row {i}: class {y} is not below {n_classes}"),
                )
            })?
            .push(i);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (k, mut rows) in by_class.into_iter().enumerate() {
        if rows.len() < 2 {
            return Err(Error::invalid(
                "target",
                format!(
                    "class {k} has {} rows: a split needs 2 (one to train, one to test)",
                    rows.len()
                ),
            ));
        }
        rows.shuffle(&mut rng);
        let n_test = ((fraction * rows.len() as f64).round() as usize).clamp(1, rows.len() - 1);
        test.extend_from_slice(&rows[..n_test]);
        train.extend_from_slice(&rows[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

/// Runs the benchmark (module docs) on a classification table: per split, `fit` (its file,
/// column and seed fields are not read) against the logistic regression. Refuses a
/// regression target.
pub fn run_bench_classify(
    data: &TabularData,
    config: &ClassifyBenchConfig,
    fit: &CsvFitParams,
    device: &Device,
) -> Result<Vec<ClassifyOutcome>> {
    let (labels, n_classes) = match &data.targets {
        Targets::Classes { indices, labels } => (
            indices.iter().map(|&i| i as usize).collect::<Vec<_>>(),
            labels.len(),
        ),
        Targets::Values(_) => {
            return Err(Error::invalid(
                "task",
                "bench-classify is for classification targets (bench-uci takes regression)",
            ))
        }
    };
    let metrics_config = ClassificationParams::default().check()?;
    let logistic_config = config.logistic.check()?;
    let mut out = Vec::new();
    for split in 0..config.splits {
        let seed = config.seed.wrapping_add(split as u64);
        let (_, test_rows) = stratified_split(&labels, n_classes, config.test_fraction, seed)?;
        let mut table = data.clone();
        table.splits = vec![Split::Train; data.num_rows()];
        for &r in &test_rows {
            table.splits[r] = Split::Test;
        }
        let prepared = prepare(&table, FeatureScaling::Standardize, device)?;
        let opts = CsvFitParams {
            seed,
            progress: config.progress,
            ..fit.clone()
        }
        .check()?;
        let fitted = fit_dataset(&opts, &prepared.train, n_classes)?;
        let test = &prepared.test;
        let y_test: Vec<u32> = test.targets.to_dtype(DType::U32)?.to_vec1()?;
        let f = &fitted.fitted;
        let refresh = f.refresh(&prepared.train.features)?;
        let bma = BmaParams {
            sample: SampleParams {
                scale: fitted.scale,
                ..Default::default()
            },
            samples: config.samples,
            seed,
        }
        .check()?;
        let train_loss = f.history.epochs.last().map(|e| e.loss);
        let weight_decay = Some(f.spec.train().sgd().weight_decay());
        for (method, predictive) in [
            (
                ClassifyMethod::SwagFit,
                swag_at_scale(&f.params, &f.posterior, bma)?,
            ),
            (
                ClassifyMethod::SwaOfFit,
                Predictive::swa(&f.params, &f.posterior)?,
            ),
        ] {
            let probs = with_refresh(predictive, &refresh)
                .classify(&f.model, batches(&test.features, test.len().max(1))?)?
                .to_host()?
                .mean_probs;
            let m = classification_metrics(&probs, n_classes, &y_test, &metrics_config)?;
            out.push(ClassifyOutcome {
                split,
                method,
                accuracy: m.accuracy,
                nll: m.nll,
                ece: m.ece,
                scale: Some(if method == ClassifyMethod::SwagFit {
                    fitted.scale
                } else {
                    0.0
                }),
                train_loss,
                weight_decay,
            });
        }
        let host = |t: &candle_core::Tensor| -> Result<Vec<f64>> {
            Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)
        };
        let y_train: Vec<usize> = prepared
            .train
            .targets
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|y| y as usize)
            .collect();
        let d = prepared.train.num_features();
        let lr = LogisticRegression::fit(
            &host(&prepared.train.features)?,
            d,
            &y_train,
            n_classes,
            &logistic_config,
        )?;
        let probs = lr.predict_proba(&host(&test.features)?)?;
        let m = classification_metrics(&probs, n_classes, &y_test, &metrics_config)?;
        out.push(ClassifyOutcome {
            split,
            method: ClassifyMethod::Logistic,
            accuracy: m.accuracy,
            nll: m.nll,
            ece: m.ece,
            scale: None,
            train_loss: None,
            weight_decay: None,
        });
    }
    Ok(out)
}

/// The Markdown table of [`run_bench_classify`]: one row per model, accuracy, NLL and ECE as
/// mean ± standard error over splits; for `swag fit`, the mean tuned scale, how many splits
/// chose the top of [`SCALE_GRID`], and the weight decays trained with (how many splits each).
pub fn bench_classify_table(outcomes: &[ClassifyOutcome]) -> String {
    let splits = outcomes.iter().map(|o| o.split).max().map_or(0, |s| s + 1);
    let top = SCALE_GRID[SCALE_GRID.len() - 1];
    let mut out = format!(
        "| model | accuracy ({splits} splits) | NLL | ECE | scale: mean, at the grid's top ({top}) | weight decay (splits) |\n\
         |---|---|---|---|---|---|\n"
    );
    for method in ClassifyMethod::ALL {
        let rows: Vec<&ClassifyOutcome> = outcomes.iter().filter(|o| o.method == method).collect();
        if rows.is_empty() {
            continue;
        }
        let col = |f: fn(&ClassifyOutcome) -> f64| {
            let (m, se) = mean_and_standard_error(&rows.iter().map(|o| f(o)).collect::<Vec<_>>());
            format!("{m:.4} ± {se:.4}")
        };
        let scales: Vec<f64> = rows.iter().filter_map(|o| o.scale).collect();
        let mut decays: Vec<(f64, usize)> = Vec::new();
        for w in rows.iter().filter_map(|o| o.weight_decay) {
            match decays.iter_mut().find(|(d, _)| *d == w) {
                Some((_, count)) => *count += 1,
                None => decays.push((w, 1)),
            }
        }
        decays.sort_by(|a, b| a.0.total_cmp(&b.0));
        let decays = if decays.is_empty() {
            "—".to_string()
        } else {
            decays
                .iter()
                .map(|(d, c)| format!("{d} ({c})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let scale = match method {
            ClassifyMethod::SwagFit if !scales.is_empty() => format!(
                "{:.2}, {}/{}",
                scales.iter().sum::<f64>() / scales.len() as f64,
                scales.iter().filter(|&&s| s >= top).count(),
                scales.len()
            ),
            _ => "—".to_string(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {scale} | {decays} |\n",
            method.display(),
            col(|o| o.accuracy),
            col(|o| o.nll),
            col(|o| o.ece),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_split_keeps_each_class_in_proportion() -> Result<()> {
        // 30 rows of class 0 and 10 of class 1: round(7.5) = 8 and round(2.5) = 3 test rows.
        let labels: Vec<usize> = (0..40).map(|i| usize::from(i % 4 == 0)).collect();
        let (train, test) = stratified_split(&labels, 2, 0.25, 3)?;
        let ones = test.iter().filter(|&&i| labels[i] == 1).count();
        assert_eq!((train.len(), test.len(), ones), (29, 11, 3));
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
        assert_ne!(stratified_split(&labels, 2, 0.25, 4)?.1, test);
        assert_eq!(stratified_split(&labels, 2, 0.25, 3)?.1, test);
        Ok(())
    }

    #[test]
    fn stratified_split_refuses_what_it_cannot_split() {
        let e = stratified_split(&[0, 0, 1], 2, 0.25, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 1 has 1 rows"), "{e}");
        let e = stratified_split(&[0, 2], 2, 0.25, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1"), "{e}");
        let e = stratified_split(&[0, 0], 1, 1.0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test-fraction"), "{e}");
    }
}
