//! A calibration report from a run directory (`swag report --run`): the run's SGD iterate, its
//! SWA mean and SWAG at the run's scale, scored on the labelled rows of a CSV file. When the
//! run was fitted with `--calibrate-fraction`, the same three predictors are also run on the
//! held-out calibration rows, and the report gains its calibration sections (split-conformal
//! intervals or sets, conditional coverage, recalibration; [`candle_swag_report::report::CalibrationSetup`]),
//! every map fitted on those rows only.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::method::Method;
use super::pipeline::predict::PREDICT_BATCH_ROWS;
use super::run::{mlp_refresh, swag_at_scale, with_refresh, LoadedRun, NoiseModel};
use crate::data::{encode_features, TaskKind};
use crate::train::pipeline::predict::check_bma_options;
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{ClassificationParams, RegressionConfig, SetScore};
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{batches, Noise, Predictive};
use candle_swag::swag::SampleParams;
use candle_swag_report::io::CsvTable;
use candle_swag_report::report::{CalibrationSetup, GaussianPredictions, ReportBuilder};

/// The options of [`report_run`] (the run flags of `swag report`), unchecked (the crate's
/// config shape, see [`candle_swag::swag::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunReportParams {
    /// The run directory written by `swag fit`.
    pub run: PathBuf,
    /// A CSV file with the run's feature columns and its target column.
    pub data: PathBuf,
    /// Optional `train`/`test` column: only the `test` rows are reported.
    pub split_column: Option<String>,
    /// S, weight samples of SWAG.
    pub samples: usize,
    /// Sample scale of SWAG; `None` uses the run's.
    pub scale: Option<f64>,
    /// Seed of the sample noise.
    pub seed: u64,
    /// Target coverage of the calibration sections, in `(0, 1)`.
    pub coverage: f64,
    /// Prediction-set score (classification).
    pub set_score: SetScore,
    /// Equal-width bins of ECE, MCE and the reliability diagram.
    pub bins: usize,
}

impl RunReportParams {
    /// The checked options; the error names the option.
    pub fn check(&self) -> Result<RunReportConfig> {
        check_bma_options(self.samples, self.scale, Some(self.coverage))?;
        ClassificationParams::with_bins(self.bins).check()?;
        Ok(RunReportConfig(self.clone()))
    }
}

/// Checked options of [`report_run`] (from [`RunReportParams::check`]); read them through
/// `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReportConfig(RunReportParams);

impl std::ops::Deref for RunReportConfig {
    type Target = RunReportParams;
    fn deref(&self) -> &RunReportParams {
        &self.0
    }
}

/// The methods a run report compares.
const METHODS: [Method; 3] = [Method::Sgd, Method::Swa, Method::Swag];

/// Rows of `data` to report: every row, or the `test` rows of the split column (values
/// `train`/`test`, case-insensitive, as `swag fit --split-column` reads them).
fn report_rows(table: &CsvTable, split_column: Option<&str>) -> Result<Vec<usize>> {
    let Some(col) = split_column else {
        return Ok((0..table.num_rows()).collect());
    };
    let mut rows = Vec::new();
    for (i, v) in table.text_column(col)?.iter().enumerate() {
        match v.to_ascii_lowercase().as_str() {
            "test" => rows.push(i),
            "train" => {}
            _ => {
                return Err(Error::BadData {
                    file: table.source().to_string(),
                    row: i + 1,
                    column: col.to_string(),
                    reason: format!("split value `{v}` is neither `train` nor `test`"),
                })
            }
        }
    }
    if rows.is_empty() {
        return Err(Error::invalid(
            "split-column",
            format!("`{col}` marks no row as `test`: nothing to report"),
        ));
    }
    Ok(rows)
}

/// Builds the report of a run on the labelled rows of a CSV file (module docs); the caller
/// writes it. Methods: SGD (the run's last iterate), SWA, SWAG (`samples` samples at the
/// run's or the given scale).
pub fn report_run(opts: &RunReportConfig, device: &Device) -> Result<ReportBuilder> {
    let run = LoadedRun::load(&opts.run, device)?;
    let cfg = &run.config;
    let table = CsvTable::read(&opts.data)?;
    let rows = report_rows(&table, opts.split_column.as_deref())?;
    let raw = encode_features(&table, &cfg.feature_columns()?)?;
    let d = cfg.feature_names.len();
    let x = Tensor::from_vec(
        cfg.feature_scaler.transform_rows(&raw, &rows),
        (rows.len(), d),
        device,
    )?;
    let calibration = match &cfg.calibration {
        Some(c) => {
            let x_cal = Tensor::from_vec(c.features.clone(), (c.targets.len(), d), device)
                .map_err(|e| {
                    Error::bad_file(
                        opts.run.join(super::run::files::CONFIG),
                        format!("calibration rows: {e}"),
                    )
                })?;
            Some((c, x_cal))
        }
        None => None,
    };
    let dataset = format!(
        "{} ({} rows)",
        opts.data
            .file_stem()
            .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned()),
        rows.len()
    );
    let mut builder = ReportBuilder::with_config(
        dataset,
        ClassificationParams::with_bins(opts.bins).check()?,
        RegressionConfig::default(),
    );
    if let Some((c, _)) = &calibration {
        let part = format!(
            "the {}% calibration hold-out of the run's training rows",
            candle_swag_report::plot::style::percent(c.fraction)
        );
        builder = builder.with_calibration(
            CalibrationSetup::new(opts.coverage, part)?.with_set_score(opts.set_score)?,
        )?;
    }
    let refresh = match &run.train_inputs {
        Some(t) => mlp_refresh(&run.model, t, cfg.fit.train().batch_size())?,
        None => None,
    };
    let sgd_weights = run.params.flatten()?;
    let scale = opts.scale.unwrap_or(cfg.scale);
    let predictive = |m: Method| -> Result<Predictive> {
        let p = match m {
            Method::Sgd => Predictive::point(&run.params, &sgd_weights)?,
            Method::Swa => Predictive::swa(&run.params, &run.posterior)?,
            _ => swag_at_scale(
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
        };
        Ok(with_refresh(p, &refresh))
    };
    let target = cfg.target.as_str();
    match cfg.task {
        TaskKind::Classification => {
            let labels = cfg.class_labels.as_ref().ok_or_else(|| {
                Error::bad_file(&opts.run, "classification run without class labels")
            })?;
            let texts = table.text_column(target)?;
            let y = rows
                .iter()
                .map(|&i| {
                    labels
                        .iter()
                        .position(|l| l == texts[i])
                        .map(|k| k as u32)
                        .ok_or_else(|| Error::BadData {
                            file: table.source().to_string(),
                            row: i + 1,
                            column: target.to_string(),
                            reason: format!("label `{}` is not one of the run's classes", texts[i]),
                        })
                })
                .collect::<Result<Vec<u32>>>()?;
            for m in METHODS {
                let p = predictive(m)?;
                let dec = p
                    .classify(&run.model, batches(&x, PREDICT_BATCH_ROWS)?)?
                    .to_host()?;
                let c = dec.n_classes;
                builder = match &calibration {
                    None => builder.classification_method(m.display(), &dec.mean_probs, c, &y)?,
                    Some((held, x_cal)) => {
                        let cal = p
                            .classify(&run.model, batches(x_cal, PREDICT_BATCH_ROWS)?)?
                            .to_host()?;
                        let y_cal: Vec<u32> = held.targets.iter().map(|&t| t as u32).collect();
                        builder.classification_method_calibrated(
                            m.display(),
                            &dec.mean_probs,
                            c,
                            &y,
                            &cal.mean_probs,
                            &y_cal,
                        )?
                    }
                };
            }
        }
        TaskKind::Regression => {
            let scaler = cfg.target_scaler.as_ref().ok_or_else(|| {
                Error::bad_file(&opts.run, "regression run without target scaler")
            })?;
            let (t_mean, t_std) = (scaler.mean[0], scaler.std[0]);
            let all = table.numeric_column(target)?;
            let y: Vec<f64> = rows.iter().map(|&i| all[i]).collect();
            let noise = match cfg.noise {
                NoiseModel::Heteroscedastic => Noise::Heteroscedastic(super::loss::VARIANCE_LINK),
                NoiseModel::Homoscedastic => Noise::Homoscedastic {
                    variance: cfg.noise_variance.ok_or_else(|| {
                        Error::bad_file(&opts.run, "regression run without noise variance")
                    })?,
                },
            };
            for m in METHODS {
                let p = predictive(m)?;
                let pred = p
                    .regress(&run.model, batches(&x, PREDICT_BATCH_ROWS)?, noise)?
                    .to_host()?
                    .to_original_units(t_mean, t_std);
                builder = match &calibration {
                    None => builder.regression_method(m.display(), &pred.mean, &pred.std(), &y)?,
                    Some((held, x_cal)) => {
                        let cal = p
                            .regress(&run.model, batches(x_cal, PREDICT_BATCH_ROWS)?, noise)?
                            .to_host()?
                            .to_original_units(t_mean, t_std);
                        let y_cal: Vec<f64> =
                            held.targets.iter().map(|t| t * t_std + t_mean).collect();
                        builder.regression_method_calibrated(
                            m.display(),
                            &pred.mean,
                            &pred.std(),
                            &y,
                            GaussianPredictions {
                                mean: &cal.mean,
                                std: &cal.std(),
                                targets: &y_cal,
                            },
                        )?
                    }
                };
            }
        }
    }
    Ok(builder)
}
