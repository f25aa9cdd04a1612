//! `swag sample`: draw one weight sample and write it under the original names and shapes.

use std::path::PathBuf;

use candle_core::Device;
use candle_swag::swag::{Divisor, SampleConfig, SwagPosterior};
use candle_swag::{Error, Result};

/// Arguments of `swag sample`.
#[derive(clap::Args)]
pub struct Args {
    /// Posterior file written by `swag collect` or `SwagPosterior::save`.
    #[arg(long)]
    posterior: PathBuf,
    /// Multiplies the covariance (0 gives the SWA mean).
    #[arg(long, default_value_t = 0.5)]
    scale: f64,
    /// Diagonal part only (SWAG-diagonal).
    #[arg(long)]
    diag: bool,
    /// Divide the low-rank term by K − 1 as the reference implementation (default: rows − 1).
    #[arg(long)]
    reference_divisor: bool,
    /// Seed of the noise (a sample is reproducible for a given seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (safetensors, one tensor per parameter).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let posterior = SwagPosterior::load(&args.posterior, &Device::Cpu)?;
    let opts = SampleConfig::with_scale(args.scale)?
        .with_diag_only(args.diag)
        .with_divisor(if args.reference_divisor {
            Divisor::RankMinusOne
        } else {
            Divisor::RowsMinusOne
        });
    let flat = posterior.sample_flat_seeded(args.seed, &opts)?;
    let named = posterior.layout().unflatten(&flat)?;
    let map: std::collections::HashMap<String, candle_core::Tensor> = named.into_iter().collect();
    let bytes = safetensors::serialize(map.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| Error::bad_file(&args.out, e.to_string()))?;
    candle_swag::atomic::write_file_atomic(&args.out, &bytes)?;
    println!(
        "wrote a sample of {} parameters (scale {}, seed {}) to {}",
        posterior.layout().len(),
        args.scale,
        args.seed,
        args.out.display()
    );
    Ok(())
}
