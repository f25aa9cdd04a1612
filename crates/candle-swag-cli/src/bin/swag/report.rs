//! `swag report`: a calibration report from prediction files written by any framework.
//!
//! Only parses arguments, reads and checks the files (`candle_swag_report::io`), and hands the arrays
//! to `candle_swag_report::report::ReportBuilder`, which computes the metrics and writes the
//! directory atomically. Every input is read and checked before anything is written.

use std::path::{Path, PathBuf};

use crate::device::DeviceArgs;
use candle_swag::metrics::{attribute_to_file, ClassificationParams, RegressionConfig, SetScore};
use candle_swag::{Error, Result};
use candle_swag_cli::train::run_report::{report_run, RunReportParams};
use candle_swag_report::io::{self, Array, InputSource, Precision, Role};
use candle_swag_report::report::ReportBuilder;

/// Arguments of `swag report`.
///
/// Files are `.npy`, `.npz`, `.safetensors` or CSV; `FILE:NAME` picks one array of an
/// `.npz`/`.safetensors` file or one column of a CSV file.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  swag report --probs sgd.npy --method SGD --probs swag.npy --method SWAG --labels y.npy --out report/\n  swag report --probs logits.csv --logits --labels y.csv --out report/\n  swag report --mean preds.csv:mean --std preds.csv:std --targets test.csv:target --out report/\n  swag report --run run/ --data data/diabetes.csv --split-column split --coverage 0.9 --out report/"
)]
pub struct Args {
    /// Class probabilities: N rows × C classes, rows summing to 1 (one column is read as
    /// P(y = 1)); repeat to compare methods.
    #[arg(long = "probs", value_name = "FILE[:NAME]")]
    pub probs: Vec<String>,
    /// The --probs files hold logits (unnormalised scores): apply a softmax first.
    #[arg(long)]
    pub logits: bool,
    /// Integer class labels in 0..C, one per row.
    #[arg(long, value_name = "FILE[:NAME]")]
    pub labels: Option<String>,
    /// Method names, one per --probs and then one per --mean, in order (default: file names).
    #[arg(long = "method", value_name = "NAME")]
    pub methods: Vec<String>,
    /// Number of equal-width (and equal-mass) bins for ECE, MCE and the reliability diagram.
    #[arg(long, default_value_t = candle_swag::metrics::DEFAULT_BINS)]
    pub bins: usize,
    /// Regression: Gaussian predictive means, one per row; repeat (with --std) to compare
    /// methods.
    #[arg(long = "mean", value_name = "FILE[:NAME]")]
    pub mean: Vec<String>,
    /// Regression: predictive standard deviations, one per row, all > 0; one file per --mean.
    #[arg(long = "std", value_name = "FILE[:NAME]")]
    pub std: Vec<String>,
    /// Regression targets, one per row.
    #[arg(long, value_name = "FILE[:NAME]")]
    pub targets: Option<String>,
    /// Dataset name shown in the report (default: the labels' or targets' file name).
    #[arg(long)]
    pub dataset: Option<String>,
    /// A run directory written by `swag fit`: report the run's SGD, SWA and SWAG predictions on
    /// the labelled rows of --data instead of prediction files. A run fitted with
    /// --calibrate-fraction adds conformal intervals or sets (beside the Gaussian intervals),
    /// coverage per bin of predicted σ and recalibration, all fitted on its calibration rows.
    #[arg(
        long,
        value_name = "DIR",
        requires = "data",
        conflicts_with_all = ["probs", "mean", "std", "labels", "targets", "logits"]
    )]
    pub run: Option<PathBuf>,
    /// With --run: CSV file with the run's feature columns and its target column.
    #[arg(long, value_name = "FILE", requires = "run")]
    pub data: Option<PathBuf>,
    /// With --run: column holding `train`/`test` per row; only `test` rows are reported.
    #[arg(long, requires = "run")]
    pub split_column: Option<String>,
    /// With --run: target coverage of the conformal intervals or sets, in (0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub coverage: f64,
    /// With --run: SWAG weight samples averaged.
    #[arg(long, default_value_t = 30)]
    pub samples: usize,
    /// With --run: SWAG sample scale [default: the run's].
    #[arg(long, requires = "run")]
    pub scale: Option<f64>,
    /// With --run: seed of the sample noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --run: prediction sets by RAPS with this penalty per class ranked beyond
    /// --raps-k-reg (finite, >= 0) instead of APS.
    #[arg(long, requires = "run")]
    pub raps_lambda: Option<f64>,
    /// Classes ranked first that RAPS does not penalise.
    #[arg(long, default_value_t = 1, requires = "raps_lambda")]
    pub raps_k_reg: usize,
    /// Output directory (replaced atomically if it exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

/// File stem of an input, used as a default method or dataset name.
fn stem(spec: &InputSource) -> String {
    let base = spec
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    match &spec.key {
        Some(k) => format!("{base}:{k}"),
        None => base,
    }
}

/// Reads one probability (or logit) file and returns a checked `[N, C]` array (`C ≥ 2`).
fn read_probabilities(spec: &InputSource, logits: bool) -> Result<Array> {
    if logits {
        let raw = io::read_input(spec, Role::Logits)?;
        return io::probabilities_from_logits(&raw);
    }
    let a = io::read_input(spec, Role::Probabilities)?;
    io::check_probabilities(&a)?;
    if a.cols == 1 {
        // Binary P(y = 1): the full metrics take the two-column [1 − p, p], computed in the
        // file's precision.
        let values = match a.precision {
            Precision::Single => a
                .values
                .iter()
                .flat_map(|&p| [f64::from(1.0 - p as f32), p])
                .collect(),
            Precision::Double => a.values.iter().flat_map(|&p| [1.0 - p, p]).collect(),
        };
        let mut two = Array::new(a.source, a.rows, 2, values)?;
        two.precision = a.precision;
        return Ok(two);
    }
    Ok(a)
}

/// Reads a single-column regression input, finite (and > 0 when `positive`).
fn read_vector(spec: &InputSource, role: Role, positive: bool) -> Result<Array> {
    let a = io::read_input(spec, role)?;
    if positive {
        io::check_positive(&a)?;
    } else {
        io::check_has_rows(&a)?;
        io::check_finite(&a)?;
    }
    if a.cols != 1 {
        // into_vector gives the documented error.
        a.clone().into_vector()?;
    }
    Ok(a)
}

fn required(value: &Option<String>, option: &str, because: &str) -> Result<InputSource> {
    value
        .as_deref()
        .map(InputSource::parse)
        .ok_or_else(|| Error::invalid(option, format!("is required with {because}")))
}

/// Runs `swag report --run`: the run's methods on the rows of --data.
fn run_report(args: &Args, run: &Path) -> Result<ReportBuilder> {
    crate::prefer_single_threaded_kernels();
    let data = args
        .data
        .clone()
        .ok_or_else(|| Error::invalid("--data", "is required with --run"))?;
    let set_score = match args.raps_lambda {
        Some(lambda) => SetScore::raps(lambda, args.raps_k_reg)?,
        None => SetScore::Aps,
    };
    report_run(
        &RunReportParams {
            run: run.to_path_buf(),
            data,
            split_column: args.split_column.clone(),
            samples: args.samples,
            scale: args.scale,
            seed: args.seed,
            coverage: args.coverage,
            set_score,
            bins: args.bins,
        }
        .check()?,
        &args.device.open()?,
    )
}

/// Runs `swag report`.
impl Args {
    /// The file or directory this command writes.
    pub fn destination(&self) -> &Path {
        &self.out
    }
}

pub fn run(args: Args) -> Result<()> {
    if let Some(run) = &args.run {
        let files = run_report(&args, run)?.write(&args.out)?;
        return wrote(&files);
    }
    if args.probs.is_empty() && args.mean.is_empty() {
        return Err(Error::invalid(
            "swag report",
            "give --probs FILE --labels FILE (classification) and/or --mean FILE --std FILE --targets FILE (regression), or --run DIR --data FILE",
        ));
    }
    if args.bins == 0 {
        return Err(Error::invalid("--bins", "must be at least 1"));
    }
    if args.mean.len() != args.std.len() {
        return Err(Error::invalid(
            "--std",
            format!(
                "give one --std per --mean ({} --mean, {} --std)",
                args.mean.len(),
                args.std.len()
            ),
        ));
    }
    if args.logits && args.probs.is_empty() {
        return Err(Error::invalid("--logits", "needs --probs"));
    }
    let n_inputs = args.probs.len() + args.mean.len();
    if !args.methods.is_empty() && args.methods.len() != n_inputs {
        return Err(Error::invalid(
            "--method",
            format!(
                "give one name per --probs and --mean ({n_inputs} inputs), or none; got {}",
                args.methods.len()
            ),
        ));
    }
    let prob_specs: Vec<InputSource> = args.probs.iter().map(|p| InputSource::parse(p)).collect();
    let mean_specs: Vec<InputSource> = args.mean.iter().map(|p| InputSource::parse(p)).collect();
    let std_specs: Vec<InputSource> = args.std.iter().map(|p| InputSource::parse(p)).collect();
    let names: Vec<String> = if args.methods.is_empty() {
        prob_specs.iter().chain(&mean_specs).map(stem).collect()
    } else {
        args.methods.clone()
    };

    let labels_spec = (!prob_specs.is_empty())
        .then(|| required(&args.labels, "--labels", "--probs"))
        .transpose()?;
    let targets_spec = (!mean_specs.is_empty())
        .then(|| required(&args.targets, "--targets", "--mean"))
        .transpose()?;
    let dataset = args
        .dataset
        .clone()
        .or_else(|| labels_spec.as_ref().or(targets_spec.as_ref()).map(stem))
        .unwrap_or_else(|| "predictions".into());
    // Metrics are computed as methods are added; nothing is written before `write`.
    let mut builder = ReportBuilder::with_config(
        dataset,
        ClassificationParams::with_bins(args.bins).check()?,
        RegressionConfig::default(),
    );

    if let Some(labels_spec) = &labels_spec {
        let labels = io::read_input(labels_spec, Role::Labels)?;
        let mut n_classes: Option<(usize, String)> = None;
        for (spec, name) in prob_specs.iter().zip(&names) {
            let probs = read_probabilities(spec, args.logits)?;
            if let Some((c, first)) = &n_classes {
                if probs.cols != *c {
                    return Err(Error::BadData {
                        file: probs.source.clone(),
                        row: 0,
                        column: "-".into(),
                        reason: format!("has {} classes but {first} has {c}", probs.cols),
                    });
                }
            }
            io::check_same_rows(&probs, &labels)?;
            let classes = io::labels_to_classes(&labels, probs.cols)?;
            // Bins compare confidences in the file's own precision (see io::Precision).
            let added = match probs.precision {
                Precision::Single => {
                    builder.classification_method(name, &probs.to_f32(), probs.cols, &classes)
                }
                Precision::Double => {
                    builder.classification_method(name, &probs.values, probs.cols, &classes)
                }
            };
            builder = added
                .map_err(|e| attribute_to_file(e, "probabilities", &probs.source))
                .map_err(|e| attribute_to_file(e, "labels", &labels.source))?;
            n_classes.get_or_insert((probs.cols, probs.source));
        }
    }

    if let Some(targets_spec) = &targets_spec {
        let targets = read_vector(targets_spec, Role::Targets, false)?;
        let regression_names = names.iter().skip(prob_specs.len());
        for ((mean_spec, std_spec), name) in mean_specs.iter().zip(&std_specs).zip(regression_names)
        {
            let mean = read_vector(mean_spec, Role::Mean, false)?;
            let std = read_vector(std_spec, Role::Std, true)?;
            io::check_same_rows(&mean, &std)?;
            io::check_same_rows(&mean, &targets)?;
            builder = builder
                .regression_method(name, &mean.values, &std.values, &targets.values)
                .map_err(|e| attribute_to_file(e, "mean", &mean.source))
                .map_err(|e| attribute_to_file(e, "std", &std.source))
                .map_err(|e| attribute_to_file(e, "y", &targets.source))?;
        }
    }

    wrote(&builder.write(&args.out)?)
}

fn wrote(files: &candle_swag_report::report::ReportFiles) -> Result<()> {
    println!(
        "wrote {} ({} plots): {}",
        display(&files.dir),
        files.plots.len(),
        display(&files.html)
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
