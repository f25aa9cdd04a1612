//! The digits recipe of BENCHMARKS.md: MLP 64-128-128-10 trained with SGD, SWAG collected from
//! epoch 25, and SGD / SWA / SWAG-diag / SWAG / MultiSWAG(3) scored on the 599 test rows.
//!
//! ```text
//! cargo run --release --example digits                 # 5 seeds, mean ± std table
//! cargo run --release --example digits -- --ood        # train on 0-4, AUROC of the entropy
//! cargo run --release --example digits -- --json       # one JSON object per method and seed
//! cargo run --release --example digits -- --seeds 1 --epochs 3   # CI's short mode
//! ```

use candle_core::Device;
use candle_swag_cli::train::recipes::{self, RecipeParams};
use clap::Parser;

/// Digits classification with SWAG (BENCHMARKS.md §1).
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
    /// The out-of-distribution variant: train on labels 0-4, score the entropy AUROC on 5-9.
    #[arg(long)]
    ood: bool,
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
        ..RecipeParams::default()
    }
    .check()?;
    let mut seeds = Vec::new();
    for seed in 0..args.seeds {
        let result = recipes::run_digits(seed, args.ood, &opts, &Device::Cpu)?;
        if args.json {
            for o in &result.outcomes {
                println!("{}", recipes::classification_json(o));
            }
        }
        seeds.push(result);
    }
    if !args.json {
        let title = if args.ood {
            "digits (OOD: train 0-4)"
        } else {
            "digits"
        };
        println!(
            "{title}, {} seed(s), S = {}, scale {}\n",
            args.seeds, opts.samples, opts.scale
        );
        print!("{}", recipes::classification_table(&seeds));
        print!(
            "{}",
            recipes::timing_summary(&seeds.iter().map(|s| s.timings).collect::<Vec<_>>())
        );
    }
    Ok(())
}
