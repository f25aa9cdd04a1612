//! `swag collect`: build a posterior offline from weight checkpoints.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_swag::crash_safe::Temporary;
use candle_swag::layout::ParamLayout;
use candle_swag::swag::checkpoint::{read_flat, CheckpointHeader};
use candle_swag::swag::{SwagParams, SwagPosterior};
use candle_swag::{Error, Result};

use crate::store::{DtypeArg, StoreArg};

/// Arguments of `swag collect`.
#[derive(clap::Args)]
pub struct Args {
    /// K, the number of deviation columns kept.
    #[arg(long, default_value_t = 20)]
    rank: usize,
    /// Output posterior file (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Storage dtype of the deviation columns (bf16 and f16 halve the K×d buffer).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// Where the columns live while collecting: `disk` writes each one straight into --out
    /// (memory then holds the moments and one snapshot, whatever K).
    #[arg(long, value_enum, default_value_t = StoreArg::Device)]
    store: StoreArg,
    /// Only cover parameters whose name starts with one of these prefixes (repeatable).
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    /// Checkpoint files of named tensors (e.g. VarMap::save or PyTorch safetensors), in order.
    #[arg(required = true)]
    snapshots: Vec<PathBuf>,
}

impl Args {
    /// The file this command writes.
    pub fn destination(&self) -> &Path {
        &self.out
    }
}

pub fn run(args: Args) -> Result<()> {
    let first = CheckpointHeader::read(&args.snapshots[0])?;
    let shapes: Vec<(String, Vec<usize>)> = first
        .shapes()
        .into_iter()
        .filter(|(n, _)| !candle_swag::layout::is_buffer_name(n))
        .filter(|(n, _)| args.prefixes.is_empty() || args.prefixes.iter().any(|p| n.starts_with(p)))
        .collect();
    if shapes.is_empty() {
        return Err(Error::bad_file(
            &args.snapshots[0],
            "no parameter to cover (empty checkpoint, or no name matches --prefix)",
        ));
    }
    let layout = ParamLayout::new(shapes)?;
    // A disk posterior collects into a temporary sibling, unique to this process, renamed over
    // --out once saved: a failed or interrupted run never leaves a half-written posterior at
    // --out, and removes its temporary (main holds --out's write lock meanwhile).
    let partial = Temporary::beside(&args.out, "partial");
    let config = SwagParams {
        rank: args.rank,
        deviation_dtype: args.dtype.dtype(),
        store: args.store.store(partial.path()),
    }
    .check()?;
    let mut posterior = SwagPosterior::new(layout, config, &Device::Cpu)?;
    for path in &args.snapshots {
        let flat = read_flat(path, posterior.layout())?;
        let d = flat.len();
        posterior
            .collect_flat(&Tensor::from_vec(flat, d, &Device::Cpu)?)
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
    }
    if args.store == StoreArg::Disk {
        posterior.save(partial.path())?; // in place, synced
        partial.commit(&args.out)?;
    } else {
        posterior.save(&args.out)?;
    }
    println!(
        "collected {} snapshots of {} parameters (d = {}, {} deviation columns, {:?}) into {}",
        posterior.n_collected(),
        posterior.layout().len(),
        posterior.numel(),
        posterior.rows(),
        args.dtype,
        args.out.display()
    );
    if posterior.flushed_to_zero() > 0 {
        eprintln!(
            "warning: {} nonzero deviation entries were too small for {:?} relative to their column's largest and were stored as 0",
            posterior.flushed_to_zero(),
            args.dtype
        );
    }
    Ok(())
}
