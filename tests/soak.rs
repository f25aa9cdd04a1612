//! Soak: round after round of collect → save → open on disk → sample → predict on a model of
//! one million parameters, in one process, must not grow its memory. The resident set size at
//! the end is within 5% of the one after round 10 (allocator and page-cache warm-up done by
//! then).
//!
//! CI runs the short form (25 rounds); `SWAG_SOAK_ROUNDS=500 cargo test --release --test soak
//! -- --nocapture` runs the full 500 and prints the RSS after round 10 and at the end.
#![cfg(target_os = "linux")]

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder, VarMap};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::swag::DeviationStore;
use candle_swag::{ParamSet, SampleParams, SwagParams, SwagPosterior};

/// One linear layer of 1000 × 1000 (+ 1000 biases): d = 1,001,000.
struct Wide(Linear);

impl ModuleT for Wide {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        self.0.forward(xs)
    }
}

/// The process's resident set size in KiB (`VmRSS` of `/proc/self/status`).
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS line"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad VmRSS line: {line}"))?
        .parse()?)
}

/// One round: a fresh disk posterior of 6 snapshots (K = 5) saved to `path`, opened again on
/// disk, and a 3-sample BMA of 64 inputs. Returns the mean of the predictive probabilities'
/// first column, so that the work cannot be optimised away.
fn round(
    params: &ParamSet,
    model: &Wide,
    x: &Tensor,
    path: &std::path::Path,
    r: usize,
) -> anyhow::Result<f64> {
    let base = params.flatten()?;
    let config = SwagParams {
        rank: 5,
        store: DeviationStore::Disk(path.to_path_buf()),
        ..Default::default()
    }
    .check()?;
    let mut posterior = SwagPosterior::for_params(params, config)?;
    for k in 0..6 {
        let shift = ((r * 6 + k) % 17) as f64 * 1e-3;
        posterior.collect_flat(&(&base + shift)?)?;
    }
    posterior.save(path)?;
    drop(posterior);
    let opened = SwagPosterior::load_with_store(
        path,
        &Device::Cpu,
        DeviationStore::Disk(path.to_path_buf()),
    )?;
    let bma = BmaParams {
        sample: SampleParams {
            scale: 0.5,
            ..Default::default()
        },
        samples: 3,
        seed: r as u64,
    }
    .check()?;
    let out = Predictive::swag(params, &opened, bma)?.classify(model, batches(x, 32)?)?;
    // Put the trained weights back: the BMA wrote samples into the Vars.
    params.write_flat(&base)?;
    Ok(out.to_host()?.mean_probs[0])
}

#[test]
fn collect_sample_predict_rounds_do_not_grow_memory() -> anyhow::Result<()> {
    let rounds: usize = match std::env::var("SWAG_SOAK_ROUNDS") {
        Ok(v) => v.parse()?,
        Err(_) => 25,
    };
    anyhow::ensure!(rounds > 10, "SWAG_SOAK_ROUNDS must exceed 10");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("soak.safetensors");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Wide(linear(1000, 1000, vb.pp("fc"))?);
    let params = ParamSet::from_varmap(&varmap)?;
    assert_eq!(params.numel(), 1_001_000);
    let x = Tensor::randn(0f32, 1.0, (64, 1000), &Device::Cpu)?;
    let mut after_10 = 0;
    let mut checksum = 0f64;
    for r in 0..rounds {
        checksum += round(&params, &model, &x, &path, r)?;
        if r + 1 == 10 {
            after_10 = rss_kib()?;
        }
    }
    let end = rss_kib()?;
    let growth = end as f64 / after_10 as f64 - 1.0;
    eprintln!(
        "soak: {rounds} rounds, RSS after round 10 {after_10} KiB, at the end {end} KiB ({:+.2}%), checksum {checksum}",
        100.0 * growth
    );
    assert!(checksum.is_finite());
    assert!(
        growth <= 0.05,
        "RSS grew by {:.1}% from round 10 to round {rounds}",
        100.0 * growth
    );
    Ok(())
}
