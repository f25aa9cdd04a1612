//! `swag inspect`: print a posterior's layout and summary statistics.

use std::path::PathBuf;

use candle_core::Device;
use candle_swag::swag::{ShardSet, SwagPosterior};
use candle_swag::Result;

use crate::store::StoreArg;

/// Arguments of `swag inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Posterior file, or a shard set's JSON index.
    posterior: PathBuf,
    /// `disk` streams the columns from the file instead of reading them into memory; `auto`
    /// streams whenever the file's format allows it.
    #[arg(long, value_enum, default_value_t = StoreArg::Auto)]
    store: StoreArg,
}

fn summary(xs: &[f32]) -> (f64, f64, f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let min = xs.iter().fold(f64::INFINITY, |a, &x| a.min(x as f64));
    let max = xs.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
    let rms = (xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
    (mean, rms, min, max)
}

/// A shard set: one line per shard, then the totals.
fn inspect_shards(args: &Args) -> Result<()> {
    let set = ShardSet::load(&args.posterior, &Device::Cpu)?;
    println!("shard set   {}", args.posterior.display());
    println!(
        "parameters  {} tensors, d = {}, in {} shards",
        set.layout().len(),
        set.layout().numel(),
        set.shards().len()
    );
    println!(
        "\n{:<28} {:>14} {:>10} {:>11} {:>9} {:>12}",
        "file", "parameters", "d", "snapshots", "columns", "MiB"
    );
    for (e, p) in set.shards() {
        println!(
            "{:<28} {:>14} {:>10} {:>11} {:>9} {:>12.1}",
            e.file.display(),
            format!("{}..{}", e.first_param, e.first_param + e.params),
            p.numel(),
            p.n_collected(),
            p.rows(),
            p.state_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if args.posterior.extension().is_some_and(|e| e == "json") {
        return inspect_shards(&args);
    }
    let store = args.store.store_for_file(&args.posterior)?;
    let streamed = matches!(store, candle_swag::swag::DeviationStore::Disk(_));
    let p = SwagPosterior::load_with_store(&args.posterior, &Device::Cpu, store)?;
    // The whole file is checked, columns included (one read when they stay on disk).
    p.verify_columns()?;
    println!("posterior   {}", args.posterior.display());
    println!(
        "snapshots   {} collected, {} of K = {} deviation columns held ({:?}{})",
        p.n_collected(),
        p.rows(),
        p.rank(),
        p.config().deviation_dtype(),
        if p.variance_is_legacy() {
            ", variance from a version-1 file"
        } else {
            ""
        }
    );
    println!(
        "parameters  {} tensors, d = {} ({:.1} MiB of state in memory; columns {})",
        p.layout().len(),
        p.numel(),
        p.state_bytes() as f64 / (1 << 20) as f64,
        if streamed {
            "streamed from the file"
        } else {
            "in memory"
        }
    );
    let mean = p.mean()?.to_vec1::<f32>()?;
    let var = p.variance(1e-30)?.to_vec1::<f32>()?;
    println!(
        "\n{:<32} {:>14} {:>8} {:>11} {:>11} {:>11}",
        "name", "shape", "offset", "|mean| rms", "std mean", "std max"
    );
    for e in p.layout().entries() {
        let r = e.offset..e.offset + e.numel();
        let (_, rms, _, _) = summary(&mean[r.clone()]);
        let std: Vec<f32> = var[r].iter().map(|v| v.sqrt()).collect();
        let (std_mean, _, _, std_max) = summary(&std);
        println!(
            "{:<32} {:>14} {:>8} {:>11.4e} {:>11.4e} {:>11.4e}",
            e.name,
            format!("{:?}", e.shape),
            e.offset,
            rms,
            std_mean,
            std_max
        );
    }
    if p.rows() > 0 {
        let norms = p.deviation_norms()?;
        let joined: Vec<String> = norms.iter().map(|n| format!("{n:.3e}")).collect();
        println!(
            "\ndeviation column norms (oldest first): {}",
            joined.join(" ")
        );
    }
    Ok(())
}
