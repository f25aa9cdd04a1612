//! Predicting a CSV file from a run directory

use crate::data::{encode_features, TaskKind};
use crate::train::run::{mlp_refresh, swag_at_scale, with_refresh, LoadedRun, NoiseModel};
use candle_core::{Device, Tensor};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{ConformalClassifier, ConformalParams, ConformalRegressor, SetScore};
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{batches, Noise};
use candle_swag::swag::SampleParams;
use candle_swag_report::io::CsvTable;
use std::path::PathBuf;

/// The options of [`predict_csv`] (the flags of `swag predict`), unchecked (the crate's config
/// shape, see [`candle_swag::swag::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvPredictParams {
    /// The run directory written by `swag fit`.
    pub run: PathBuf,
    /// The file to predict; it must hold the run's feature columns (any other column, the
    /// target included, is ignored).
    pub data: PathBuf,
    /// S, the number of weight samples.
    pub samples: usize,
    /// Sample scale; `None` uses the run's (0.5, or the tuned value).
    pub scale: Option<f64>,
    /// Seed of the sample noise.
    pub seed: u64,
    /// Target coverage of split-conformal intervals (regression: `lower`, `upper` columns) or
    /// APS prediction sets (classification: a `set` column); needs a run fitted with a
    /// calibration fraction.
    pub coverage: Option<f64>,
    /// The score of classification prediction sets: [`SetScore::Aps`] by default, or RAPS,
    /// whose penalty on classes ranked beyond `k_reg` shrinks the sets of a confident model.
    pub set_score: SetScore,
    /// The noise model the caller expects the run to have; a run fitted with the other one is
    /// refused (`None`: use the run's).
    pub noise: Option<NoiseModel>,
}

impl CsvPredictParams {
    /// The checked options; the error names the option.
    pub fn check(&self) -> Result<CsvPredictConfig> {
        check_bma_options(self.samples, self.scale, self.coverage)?;
        Ok(CsvPredictConfig(self.clone()))
    }
}

/// The options a run's BMA shares between `swag predict` and `swag report --run`, refused by
/// name: `samples` at least 1, a `scale` (when given) as [`SampleParams::check`] takes it, a
/// `coverage` (when given) in `(0, 1)`.
pub(crate) fn check_bma_options(
    samples: usize,
    scale: Option<f64>,
    coverage: Option<f64>,
) -> Result<()> {
    let sample = match scale {
        Some(scale) => SampleParams {
            scale,
            ..Default::default()
        },
        None => SampleParams::default(),
    };
    BmaParams {
        sample,
        samples,
        seed: 0,
    }
    .check()?;
    if let Some(c) = coverage {
        ConformalParams::with_coverage(c)
            .check()
            .map_err(|_| Error::invalid("coverage", format!("{c} is not in (0, 1)")))?;
    }
    Ok(())
}

/// Checked options of [`predict_csv`] (from [`CsvPredictParams::check`]); read them through
/// `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvPredictConfig(CsvPredictParams);

impl std::ops::Deref for CsvPredictConfig {
    type Target = CsvPredictParams;
    fn deref(&self) -> &CsvPredictParams {
        &self.0
    }
}

/// Predictions for every row of a file, as written to the predictions CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionTable {
    /// Column names.
    pub columns: Vec<String>,
    /// One row of values per input row, in input order (the `pred` column of a classification
    /// holds the predicted class label).
    pub rows: Vec<Vec<String>>,
}

impl PredictionTable {
    /// The table as CSV text (header, then one line per row).
    pub fn to_csv(&self) -> String {
        let mut s = self.columns.join(",");
        s.push('\n');
        for r in &self.rows {
            s.push_str(&r.join(","));
            s.push('\n');
        }
        s
    }
}

/// Rows per forward pass of `swag predict`: bounds the memory of one pass, whatever the file size.
pub(crate) const PREDICT_BATCH_ROWS: usize = 4096;

/// Runs the BMA of a fitted run on the rows of a CSV file.
///
/// Classification columns: `prob_<label>` per class (in the run's class order), `pred` (the
/// label of the highest averaged probability, first on ties), `entropy` (of the averaged
/// probabilities), `expected_entropy`, `mutual_info` (nats). Regression columns (target units):
/// `mean`, `std` = sqrt(epistemic + aleatoric variance), `std_epistemic`, `std_aleatoric`.
///
/// With `coverage`, the same BMA is run on the run's calibration rows and split-conformal
/// ([`candle_swag::metrics::conformal`]) adds, for regression, `lower` and `upper` (target units;
/// `-inf`/`inf` when the calibration set is too small for the level) and, for classification,
/// `set`: the class indices of the non-randomised APS set, most probable first, separated by `;`.
pub fn predict_csv(opts: &CsvPredictConfig, device: &Device) -> Result<PredictionTable> {
    let conformal = opts
        .coverage
        .map(|c| ConformalParams::with_coverage(c).check())
        .transpose()?;
    let run = LoadedRun::load(&opts.run, device)?;
    let table = CsvTable::read(&opts.data)?;
    let cfg = &run.config;
    if let Some(want) = opts.noise {
        if cfg.task == TaskKind::Classification || want != cfg.noise {
            let has = match cfg.task {
                TaskKind::Classification => "a classification run",
                TaskKind::Regression => cfg.noise.name(),
            };
            return Err(Error::invalid(
                "noise",
                format!(
                    "{} was asked for, but the run {} was fitted with {has} noise",
                    want.name(),
                    opts.run.display()
                ),
            ));
        }
    }
    let calibration = match (&conformal, &cfg.calibration) {
        (None, _) => None,
        (Some(c), Some(rows)) => {
            let x = Tensor::from_vec(
                rows.features.clone(),
                (rows.targets.len(), cfg.feature_names.len()),
                device,
            )
            .map_err(|e| {
                Error::bad_file(
                    opts.run.join("config.json"),
                    format!("calibration rows: {e}"),
                )
            })?;
            Some((c, x, rows))
        }
        (Some(_), None) => {
            return Err(Error::invalid(
                "coverage",
                format!(
                    "the run {} has no calibration rows; fit it with --calibrate-fraction",
                    opts.run.display()
                ),
            ))
        }
    };
    let raw = encode_features(&table, &cfg.feature_columns()?)?;
    let rows: Vec<usize> = (0..table.num_rows()).collect();
    let x = cfg.feature_scaler.transform_rows(&raw, &rows);
    let inputs = Tensor::from_vec(x, (rows.len(), cfg.feature_names.len()), device)?;
    let scale = opts.scale.unwrap_or(cfg.scale);
    let refresh = match &run.train_inputs {
        Some(t) => mlp_refresh(&run.model, t, cfg.fit.train().batch_size())?,
        None => None,
    };
    let predictive = with_refresh(
        swag_at_scale(
            &run.params,
            &run.posterior,
            BmaParams {
                sample: SampleParams {
                    scale,
                    ..Default::default()
                },
                samples: opts.samples,
                seed: opts.seed,
            }
            .check()?,
        )?,
        &refresh,
    );
    let inputs = batches(&inputs, PREDICT_BATCH_ROWS)?;
    let fmt = |v: f64| format!("{v}");
    match cfg.task {
        TaskKind::Classification => {
            let labels = cfg.class_labels.as_ref().ok_or_else(|| {
                Error::bad_file(&opts.run, "classification run without class labels")
            })?;
            let dec = predictive.classify(&run.model, inputs)?.to_host()?;
            let c = dec.n_classes;
            let mut columns: Vec<String> = labels.iter().map(|l| format!("prob_{l}")).collect();
            columns
                .extend(["pred", "entropy", "expected_entropy", "mutual_info"].map(String::from));
            let sets = match &calibration {
                Some((conf, x, rows)) => {
                    let cal = predictive
                        .classify(&run.model, batches(x, PREDICT_BATCH_ROWS)?)?
                        .to_host()?;
                    let y: Vec<usize> = rows.targets.iter().map(|&t| t as usize).collect();
                    let m = ConformalClassifier::fit(conf, opts.set_score, &cal.mean_probs, c, &y)?;
                    columns.push("set".into());
                    Some(m.sets(&dec.mean_probs)?)
                }
                None => None,
            };
            let out = (0..dec.n_rows())
                .map(|i| {
                    let p = &dec.mean_probs[i * c..(i + 1) * c];
                    let best = p
                        .iter()
                        .enumerate()
                        .fold(0, |b, (k, v)| if *v > p[b] { k } else { b });
                    let mut row: Vec<String> = p.iter().map(|v| fmt(*v)).collect();
                    row.push(labels[best].clone());
                    row.push(fmt(dec.predictive_entropy[i]));
                    row.push(fmt(dec.expected_entropy[i]));
                    row.push(fmt(dec.mutual_information[i]));
                    if let Some(sets) = &sets {
                        let s: Vec<String> = sets[i].iter().map(|k| k.to_string()).collect();
                        row.push(s.join(";"));
                    }
                    row
                })
                .collect();
            Ok(PredictionTable { columns, rows: out })
        }
        TaskKind::Regression => {
            let scaler = cfg.target_scaler.as_ref().ok_or_else(|| {
                Error::bad_file(&opts.run, "regression run without target scaler")
            })?;
            let noise = match cfg.noise {
                NoiseModel::Heteroscedastic => {
                    Noise::Heteroscedastic(crate::train::loss::VARIANCE_LINK)
                }
                NoiseModel::Homoscedastic => Noise::Homoscedastic {
                    variance: cfg.noise_variance.ok_or_else(|| {
                        Error::bad_file(&opts.run, "regression run without noise variance")
                    })?,
                },
            };
            let pred = predictive
                .regress(&run.model, inputs, noise)?
                .to_host()?
                .to_original_units(scaler.mean[0], scaler.std[0]);
            let std = pred.std();
            let mut columns = ["mean", "std", "std_epistemic", "std_aleatoric"]
                .map(String::from)
                .to_vec();
            let intervals = match &calibration {
                Some((conf, x, rows)) => {
                    let cal = predictive
                        .regress(&run.model, batches(x, PREDICT_BATCH_ROWS)?, noise)?
                        .to_host()?
                        .to_original_units(scaler.mean[0], scaler.std[0]);
                    let y: Vec<f64> = rows
                        .targets
                        .iter()
                        .map(|t| t * scaler.std[0] + scaler.mean[0])
                        .collect();
                    let r = ConformalRegressor::fit(conf, &cal.mean, &cal.std(), &y)?;
                    columns.extend(["lower", "upper"].map(String::from));
                    Some(r.intervals(&pred.mean, &std)?)
                }
                None => None,
            };
            let out = (0..pred.mean.len())
                .map(|i| {
                    let mut row = vec![
                        fmt(pred.mean[i]),
                        fmt(std[i]),
                        fmt(pred.var_epistemic[i].sqrt()),
                        fmt(pred.var_aleatoric[i].sqrt()),
                    ];
                    if let Some(iv) = &intervals {
                        row.extend([fmt(iv[i].0), fmt(iv[i].1)]);
                    }
                    row
                })
                .collect();
            Ok(PredictionTable { columns, rows: out })
        }
    }
}
