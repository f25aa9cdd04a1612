//! `swag bench-classify`: `swag fit`'s defaults against a scaled logistic regression on a
//! classification table.

use std::path::{Path, PathBuf};

use candle_swag::crash_safe::write_file_atomic;
use candle_swag::{Error, Result};
use candle_swag_cli::data::TaskKind;
use candle_swag_cli::train::bench_classify::logistic::LogisticParams;
use candle_swag_cli::train::bench_classify::{
    bench_classify_table, run_bench_classify, ClassifyBenchParams,
};
use candle_swag_cli::train::pipeline::{default_weight_decay, CsvFitParams, WeightDecay};

use crate::device::DeviceArgs;
use crate::table::TableArgs;

/// Arguments of `swag bench-classify`.
#[derive(clap::Args)]
pub struct Args {
    /// The table (a split column must be named with --ignore: the benchmark makes its own
    /// splits).
    #[command(flatten)]
    table: TableArgs,
    /// Number of random stratified 75/25 splits.
    #[arg(long, default_value_t = 10)]
    splits: usize,
    /// Seed of the first split (split i uses seed + i, also as the fit's seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// SWAG samples per test prediction.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// A smoke run: 2 splits, 8 samples (swag fit's settings unchanged).
    #[arg(long)]
    quick: bool,
    /// The logistic regression's inverse regularisation strength C (scikit-learn's default).
    #[arg(long, default_value_t = 1.0)]
    logistic_c: f64,
    /// Hidden layer widths, comma-separated [default: swag fit's].
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Epochs [default: swag fit's].
    #[arg(long)]
    epochs: Option<usize>,
    /// First collection epoch [default: swag fit's].
    #[arg(long)]
    swa_start: Option<usize>,
    /// Learning rate, before and during collection [default: swag fit's].
    #[arg(long)]
    lr: Option<f64>,
    /// L2 weight decay, or `auto` [default: swag fit's, auto].
    #[arg(long, value_parser = crate::fit::parse_weight_decay)]
    weight_decay: Option<WeightDecay>,
    /// Skip tuning (sample scale 0.5, weight decay 5e-4 unless given), as `swag fit --no-tune`.
    #[arg(long)]
    no_tune: bool,
    /// Print the per-split outcomes as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Directory for `classify.md` and `classify.json` (written atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl Args {
    /// The directory this command writes, if any.
    pub fn destination(&self) -> Option<&Path> {
        self.out.as_deref()
    }
}

/// Runs `swag bench-classify`.
pub fn run(args: Args) -> Result<()> {
    crate::prefer_single_threaded_kernels();
    let (path, spec, data) = args.table.read(TaskKind::Classification)?;
    let device = args.device.open()?;
    let config = ClassifyBenchParams {
        splits: if args.quick { 2 } else { args.splits },
        seed: args.seed,
        samples: if args.quick { 8 } else { args.samples },
        logistic: LogisticParams {
            c: args.logistic_c,
            ..Default::default()
        },
        progress: !args.json,
        ..Default::default()
    }
    .check()?;
    let mut fit = CsvFitParams::new(&path, spec.target.clone(), TaskKind::Classification);
    fit.tune = !args.no_tune;
    if let Some(h) = args.hidden {
        fit.hidden = h;
    }
    if let Some(e) = args.epochs {
        fit.epochs = e;
    }
    fit.swa_start = args.swa_start.or(fit.swa_start);
    if let Some(lr) = args.lr {
        fit.lr = lr;
        fit.swa_lr = lr;
    }
    fit.weight_decay = args
        .weight_decay
        .unwrap_or(default_weight_decay(TaskKind::Classification, fit.tune));
    let start = std::time::Instant::now();
    let outcomes = run_bench_classify(&data, &config, &fit, &device)?;
    let hidden = fit
        .hidden
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("-");
    let table = format!(
        "swag fit: MLP {hidden}, {} epochs, lr {}, weight decay {}, {}; logistic: C = {}\n\n{}",
        fit.epochs,
        fit.lr,
        match fit.weight_decay {
            WeightDecay::Auto => "auto".to_string(),
            WeightDecay::Fixed(w) => w.to_string(),
        },
        if fit.tune { "tuned" } else { "--no-tune" },
        args.logistic_c,
        bench_classify_table(&outcomes)
    );
    let json = serde_json::to_string_pretty(&outcomes)
        .map_err(|e| Error::invalid("outcomes", e.to_string()))?;
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
        println!(
            "({} rows of {}, {:.1} s)",
            data.num_rows(),
            path.display(),
            start.elapsed().as_secs_f64()
        );
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_file_atomic(dir.join("classify.md"), table.as_bytes())?;
        write_file_atomic(dir.join("classify.json"), json.as_bytes())?;
    }
    Ok(())
}
