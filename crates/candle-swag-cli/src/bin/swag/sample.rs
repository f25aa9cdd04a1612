//! `swag sample`: draw one weight sample and write it under the original names and shapes.

use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, Device, Storage};
use candle_swag::swag::checkpoint::write_flat;
use candle_swag::swag::{Divisor, SampleParams, SwagPosterior};
use candle_swag::Result;

use crate::store::StoreArg;

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
    /// Seed of the noise (a sample is reproducible for a given seed, whatever the store).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `disk` streams the columns from the posterior file instead of reading them into memory
    /// (for posteriors larger than RAM; the same sample, bit for bit); `device` reads them
    /// whole; `auto` streams whenever the file's format allows it (measured as fast or faster).
    #[arg(long, value_enum, default_value_t = StoreArg::Auto)]
    store: StoreArg,
    /// Output file (safetensors, one tensor per parameter).
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// The file or directory this command writes.
    pub fn destination(&self) -> &Path {
        &self.out
    }
}

pub fn run(args: Args) -> Result<()> {
    let store = args.store.store_for_file(&args.posterior)?;
    let posterior = SwagPosterior::load_with_store(&args.posterior, &Device::Cpu, store)?;
    let opts = SampleParams {
        scale: args.scale,
        diag_only: args.diag,
        divisor: if args.reference_divisor {
            Divisor::RankMinusOne
        } else {
            Divisor::RowsMinusOne
        },
        ..Default::default()
    }
    .check()?;
    let sample = posterior.sample_flat_seeded(args.seed, &opts)?;
    // The CPU sample's own buffer is written as it is: no 4·d-byte copy.
    let (storage, layout) = sample.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((lo, hi))) => {
            write_flat(&args.out, posterior.layout(), &v[lo..hi])?
        }
        _ => {
            drop(storage);
            write_flat(&args.out, posterior.layout(), &sample.to_vec1()?)?
        }
    }
    println!(
        "wrote a sample of {} parameters (scale {}, seed {}) to {}",
        posterior.layout().len(),
        args.scale,
        args.seed,
        args.out.display()
    );
    Ok(())
}
