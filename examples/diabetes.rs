//! The diabetes recipe of BENCHMARKS.md: MLP 10-50-1 trained with SGD for 300 epochs, SWAG
//! collected from epoch 150, and SGD / SWA / SWAG-diag / SWAG / MultiSWAG(3) scored on the 88
//! test rows in the target's original units.
//!
//! ```text
//! cargo run --release --example diabetes                    # reference recipe, 5 seeds
//! cargo run --release --example diabetes -- --tune-scale    # scale and noise chosen on a validation split
//! cargo run --release --example diabetes -- --json          # one JSON object per method and seed
//! cargo run --release --example diabetes -- --seeds 1 --epochs 3   # CI's short mode
//! ```

use candle_core::Device;
use candle_swag_cli::train::recipes::{self, RecipeParams};
use clap::Parser;

/// Diabetes regression with SWAG (BENCHMARKS.md §2).
#[derive(Parser)]
struct Args {
    /// Number of seeds (0..N).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Print one JSON object per method and seed instead of the table.
    #[arg(long)]
    json: bool,
    /// Override the number of epochs (collection starts at half of it).
    #[arg(long)]
    epochs: Option<usize>,
    /// Choose the sample scale and the noise variance on a validation split (20% of the
    /// training rows) instead of the reference's training residual and scale 0.5.
    #[arg(long)]
    tune_scale: bool,
}

fn main() {
    // Single-threaded candle kernels suit the small MLP (see `swag`'s main); set
    // RAYON_NUM_THREADS yourself to override.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> candle_swag::Result<()> {
    let opts = RecipeParams {
        epochs: args.epochs,
        tune_scale: args.tune_scale,
        ..RecipeParams::default()
    }
    .check()?;
    let mut seeds = Vec::new();
    for seed in 0..args.seeds {
        let result = recipes::run_diabetes(seed, &opts, &Device::Cpu)?;
        if args.json {
            let scored = if args.tune_scale {
                &result.tuned
            } else {
                &result.outcomes
            };
            for o in scored {
                println!("{}", recipes::regression_json(o));
            }
        }
        seeds.push(result);
    }
    if !args.json {
        let how = if args.tune_scale {
            "scale and noise tuned on a validation split"
        } else {
            "reference recipe: noise = training residual, scale 0.5"
        };
        println!(
            "diabetes, {} seed(s), S = {}, {how}\n",
            args.seeds, opts.samples
        );
        if args.tune_scale {
            let tuned: Vec<_> = seeds
                .iter()
                .map(|s| recipes::RegressionSeed {
                    outcomes: s.tuned.clone(),
                    ..s.clone()
                })
                .collect();
            print!("{}", recipes::regression_table(&tuned));
            println!("\nthe same runs with the reference recipe's noise and scale 0.5:\n");
        }
        print!("{}", recipes::regression_table(&seeds));
        print!(
            "{}",
            recipes::timing_summary(&seeds.iter().map(|s| s.timings).collect::<Vec<_>>())
        );
    }
    Ok(())
}
