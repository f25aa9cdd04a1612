//! `swag predict`: Bayesian model averaging with a fitted run on the rows of a CSV file.

use std::path::{Path, PathBuf};

use crate::device::DeviceArgs;
use candle_swag::metrics::SetScore;
use candle_swag_cli::train::pipeline::{predict_csv, CsvPredictParams};

/// Arguments of `swag predict`.
#[derive(clap::Args)]
pub struct Args {
    /// Run directory written by `swag fit`.
    #[arg(long)]
    run: PathBuf,
    /// CSV file with the run's feature columns (other columns, the target included, are
    /// ignored).
    #[arg(long)]
    data: PathBuf,
    /// Number of SWAG weight samples averaged.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Sample scale (multiplies the covariance; 0 = the SWA mean) [default: the run's: chosen
    /// on validation, or 0.5 for a run fitted with --no-tune].
    #[arg(long)]
    scale: Option<f64>,
    /// Seed of the sample noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Add split-conformal `lower,upper` columns (regression) or a `set` column of class
    /// indices separated by `;` (classification, APS or RAPS) at this coverage, in (0, 1); needs a run
    /// fitted with --calibrate-fraction.
    #[arg(long)]
    coverage: Option<f64>,
    /// Prediction sets by RAPS instead of APS, with this penalty per class ranked beyond
    /// --raps-k-reg (finite, >= 0); with --coverage, classification only.
    #[arg(long)]
    raps_lambda: Option<f64>,
    /// Classes ranked first that RAPS does not penalise.
    #[arg(long, default_value_t = 1, requires = "raps_lambda")]
    raps_k_reg: usize,
    /// The noise model expected of the run (homoscedastic or heteroscedastic); a run fitted
    /// with the other one is refused [default: the run's].
    #[arg(long, value_enum)]
    noise: Option<crate::fit::NoiseModelArg>,
    /// Output CSV: one row per input row, in order (written atomically).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs `swag predict`.
impl Args {
    /// The file or directory this command writes.
    pub fn destination(&self) -> &Path {
        &self.out
    }
}

pub fn run(args: Args) -> candle_swag::Result<()> {
    crate::prefer_single_threaded_kernels();
    let set_score = match args.raps_lambda {
        Some(_) if args.coverage.is_none() => {
            return Err(candle_swag::Error::invalid(
                "raps_lambda",
                "RAPS sets need --coverage",
            ))
        }
        Some(lambda) => SetScore::raps(lambda, args.raps_k_reg)?,
        None => SetScore::Aps,
    };
    let device = args.device.open()?;
    let table = predict_csv(
        &CsvPredictParams {
            run: args.run,
            data: args.data,
            samples: args.samples,
            scale: args.scale,
            seed: args.seed,
            coverage: args.coverage,
            set_score,
            noise: args.noise.map(Into::into),
        }
        .check()?,
        &device,
    )?;
    candle_swag::crash_safe::write_file_atomic(&args.out, table.to_csv().as_bytes())?;
    println!(
        "{} predictions ({} columns) written to {}",
        table.rows.len(),
        table.columns.len(),
        args.out.display()
    );
    Ok(())
}
