//! `swag bench-uci`: the UCI regression protocol of the SWAG papers on a CSV table.

use std::path::PathBuf;

use candle_core::Device;
use candle_swag::atomic::write_file_atomic;
use candle_swag::{Error, Result};
use candle_swag_cli::data::{load_csv, CsvConfig, TaskKind};
use candle_swag_cli::train::uci::{run_uci, uci_table, UciConfig, UciGrid};

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
    /// Directory for `uci.md` and `uci.json` (written atomically); the table is printed too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `swag bench-uci`.
pub fn run(args: Args) -> Result<()> {
    crate::prefer_single_threaded_kernels();
    let TableArgs {
        data: path,
        target,
        ignore,
        categorical,
    } = args.table;
    let mut spec = CsvConfig::new(target, TaskKind::Regression);
    spec.ignore = ignore;
    spec.categorical = categorical;
    let data = load_csv(&path, &spec)?;
    let grid = if args.quick {
        UciGrid::quick()
    } else {
        UciGrid::full()
    };
    let config = UciConfig::new(args.splits, args.seed)?
        .with_samples(args.samples)?
        .with_grid(grid)?
        .with_progress(true);
    let start = std::time::Instant::now();
    let outcomes = run_uci(&data, &config, &Device::Cpu)?;
    let table = uci_table(&outcomes);
    print!("{table}");
    println!(
        "({} rows of {}, {:.1} s)",
        data.num_rows(),
        path.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_string_pretty(&outcomes)
            .map_err(|e| Error::invalid("outcomes", e.to_string()))?;
        write_file_atomic(dir.join("uci.md"), table.as_bytes())?;
        write_file_atomic(dir.join("uci.json"), json.as_bytes())?;
    }
    Ok(())
}
