//! `swag collect`: build a posterior offline from weight checkpoints.

use std::path::PathBuf;

use candle_core::Device;
use candle_swag::layout::ParamLayout;
use candle_swag::swag::{SwagConfig, SwagPosterior};
use candle_swag::{Error, Result};

/// Arguments of `swag collect`.
#[derive(clap::Args)]
pub struct Args {
    /// K, the number of deviation columns kept.
    #[arg(long, default_value_t = 20)]
    rank: usize,
    /// Output posterior file (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Store the deviations in bf16 (halves the K×d buffer).
    #[arg(long)]
    bf16: bool,
    /// Only cover parameters whose name starts with one of these prefixes (repeatable).
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    /// Checkpoint files of named tensors (e.g. VarMap::save or PyTorch safetensors), in order.
    #[arg(required = true)]
    snapshots: Vec<PathBuf>,
}

/// Loads one checkpoint, naming the file in any error.
pub fn load_checkpoint(
    path: &PathBuf,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    if !path.exists() {
        return Err(Error::bad_file(path, "file not found"));
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, format!("not a readable safetensors checkpoint: {e}")))
}

pub fn run(args: Args) -> Result<()> {
    let first = load_checkpoint(&args.snapshots[0])?;
    let mut names: Vec<String> = first
        .keys()
        .filter(|n| !candle_swag::layout::is_buffer_name(n))
        .filter(|n| args.prefixes.is_empty() || args.prefixes.iter().any(|p| n.starts_with(p)))
        .cloned()
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::bad_file(
            &args.snapshots[0],
            "no parameter to cover (empty checkpoint, or no name matches --prefix)",
        ));
    }
    let layout = ParamLayout::new(
        names
            .iter()
            .map(|n| (n.clone(), first[n].dims().to_vec()))
            .collect(),
    )?;
    let config = SwagConfig::with_rank(args.rank).with_deviation_dtype(if args.bf16 {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    })?;
    let mut posterior = SwagPosterior::new(layout, config, &Device::Cpu)?;
    for (i, path) in args.snapshots.iter().enumerate() {
        let tensors = if i == 0 {
            first.clone()
        } else {
            load_checkpoint(path)?
        };
        let flat = posterior
            .layout()
            .flatten_named(&tensors)
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        posterior
            .collect_flat(&flat)
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
    }
    posterior.save(&args.out)?;
    println!(
        "collected {} snapshots of {} parameters (d = {}, {} deviation columns) into {}",
        posterior.n_collected(),
        posterior.layout().len(),
        posterior.numel(),
        posterior.rows(),
        args.out.display()
    );
    Ok(())
}
