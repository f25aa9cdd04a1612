//! `swag bench-uci`: the UCI regression protocol of the SWAG papers on a CSV table.

use std::path::{Path, PathBuf};

use candle_swag::crash_safe::write_file_atomic;
use candle_swag::{Error, Result};
use candle_swag_cli::data::TaskKind;
use candle_swag_cli::train::pipeline::{CsvFitParams, NoiseChoice};
use candle_swag_cli::train::uci::{
    run_uci, run_uci_fit, uci_fit_table, uci_table, UciGrid, UciParams,
};

use crate::fit::NoiseArg;

use crate::device::DeviceArgs;
use crate::table::TableArgs;

/// Arguments of `swag bench-uci`.
#[derive(clap::Args)]
pub struct Args {
    /// The table (a split column must be named with --ignore: the protocol makes its own
    /// splits).
    #[command(flatten)]
    table: TableArgs,
    /// Number of random 90/10 splits.
    #[arg(long, default_value_t = 10)]
    splits: usize,
    /// Seed of the first split (split i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// SWAG samples per prediction.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// One grid point instead of the full grid (a quick smoke run).
    #[arg(long)]
    quick: bool,
    /// Instead of the papers' protocol, fit each split's training part as `swag fit` does with
    /// its defaults (128-128 network, 50 epochs, lr 0.01, tuning, noise auto) and score that
    /// SWAG model on the test part: the coverage a default `swag fit` gives.
    #[arg(long)]
    fit: bool,
    /// With --fit: the noise model (as `swag fit --noise`) [default: auto, or homoscedastic
    /// with --no-tune].
    #[arg(long, value_enum, requires = "fit")]
    noise: Option<NoiseArg>,
    /// With --fit: skip tuning (scale 0.5, training-residual noise variance).
    #[arg(long, requires = "fit")]
    no_tune: bool,
    /// With --fit: epochs [default: swag fit's, 50].
    #[arg(long, requires = "fit")]
    epochs: Option<usize>,
    /// With --fit: the learning rate, before and during collection [default: swag fit's].
    #[arg(long, requires = "fit")]
    lr: Option<f64>,
    /// Directory for `uci.md` and `uci.json` (written atomically); the table is printed too.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs `swag bench-uci`.
impl Args {
    /// The directory this command writes, if any.
    pub fn destination(&self) -> Option<&Path> {
        self.out.as_deref()
    }
}

pub fn run(args: Args) -> Result<()> {
    crate::prefer_single_threaded_kernels();
    let (path, spec, data) = args.table.read(TaskKind::Regression)?;
    let device = args.device.open()?;
    let grid = if args.quick {
        UciGrid::quick()
    } else {
        UciGrid::full()
    };
    let config = UciParams {
        splits: args.splits,
        seed: args.seed,
        samples: args.samples,
        grid,
        progress: true,
    }
    .check()?;
    let start = std::time::Instant::now();
    let (table, json) = if args.fit {
        let mut fit = CsvFitParams::new(&path, spec.target.clone(), TaskKind::Regression);
        fit.tune = !args.no_tune;
        fit.noise = args
            .noise
            .map_or(NoiseChoice::default_for(fit.tune), Into::into);
        if let Some(e) = args.epochs {
            fit.epochs = e;
        }
        if let Some(lr) = args.lr {
            fit.lr = lr;
            fit.swa_lr = lr;
        }
        let label = format!(
            "{} epochs, lr {}, {}, noise {}",
            fit.epochs,
            fit.lr,
            if fit.tune { "tuned" } else { "--no-tune" },
            match fit.noise {
                NoiseChoice::Auto => "auto",
                NoiseChoice::Fixed(m) => m.name(),
            }
        );
        let outcomes = run_uci_fit(&data, &config, &fit, &device)?;
        (
            uci_fit_table(&label, &outcomes),
            serde_json::to_string_pretty(&outcomes),
        )
    } else {
        let outcomes = run_uci(&data, &config, &device)?;
        (
            uci_table(&outcomes),
            serde_json::to_string_pretty(&outcomes),
        )
    };
    print!("{table}");
    println!(
        "({} rows of {}, {:.1} s)",
        data.num_rows(),
        path.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = json.map_err(|e| Error::invalid("outcomes", e.to_string()))?;
        write_file_atomic(dir.join("uci.md"), table.as_bytes())?;
        write_file_atomic(dir.join("uci.json"), json.as_bytes())?;
    }
    Ok(())
}
