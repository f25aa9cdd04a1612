//! What f16 and bf16 deviation columns cost in accuracy, on a real trained network.
//!
//! ```text
//! cargo run --release --example half_precision              # 40 epochs, K = 20, 50 samples
//! cargo run --release --example half_precision -- --epochs 4 --samples 5   # short mode (CI)
//! ```
//!
//! An MLP (64 → 128 → ReLU → 10) is trained on the bundled digits with SGD, and every epoch
//! after the SWA start the same weights are collected into three posteriors that differ only in
//! the storage dtype of their columns: f32, bf16 and f16 (per-column scale, see
//! `candle_swag::swag::store`). Then, for the same seeds:
//! - columns: ‖D_half − D_f32‖_F / ‖D_f32‖_F (the stored columns times their scales);
//! - samples: ‖θ_half − θ_f32‖ / ‖θ_f32 − mean‖, the error relative to the sample's own
//!   excursion from the SWA mean, mean and max over the seeds;
//! - log_prob: |log p_half(θ) − log p_f32(θ)| at the f32 samples, mean and max, beside |log p|;
//! - the test NLL of a 30-sample BMA with each posterior.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Linear, Optimizer, VarBuilder, VarMap};
use candle_swag::metrics::{classification_metrics, ClassificationConfig};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::{ParamSet, SampleConfig, SgdMomentum, SgdParams, SwagParams, SwagPosterior};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

struct Net {
    fc1: Linear,
    fc2: Linear,
}

impl Module for Net {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(xs)?.relu()?)
    }
}

fn arg(name: &str, default: usize) -> candle_swag::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| candle_swag::Error::invalid(name, "expects a positive integer")),
    }
}

fn norm(t: &Tensor) -> candle_swag::Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt())
}

/// The columns times their scales, `[rows, d]` f32.
fn scaled_columns(p: &SwagPosterior) -> candle_swag::Result<Tensor> {
    let dev = p.deviations()?.to_dtype(DType::F32)?;
    let scales = Tensor::new(p.deviation_scales(), &Device::Cpu)?.unsqueeze(1)?;
    Ok(dev.broadcast_mul(&scales)?)
}

fn run() -> candle_swag::Result<()> {
    let (epochs, samples) = (arg("--epochs", 40)?, arg("--samples", 50)?);
    let device = Device::Cpu;
    let data = candle_swag_cli::data::bundled::digits(&device)?;
    let (x, y) = (&data.train.features, &data.train.targets);
    let labels: Vec<u32> = data.test.targets.to_vec1::<u32>()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = Net {
        fc1: linear(64, 128, vb.pp("fc1"))?,
        fc2: linear(128, 10, vb.pp("fc2"))?,
    };
    let params = ParamSet::from_varmap(&varmap)?;
    let mut opt = SgdMomentum::new(
        params.vars().to_vec(),
        SgdParams {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
        }
        .check()?,
    )?;
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    let mut posteriors = dtypes
        .iter()
        .map(|&dt| {
            SwagPosterior::for_params(
                &params,
                SwagParams {
                    rank: 20,
                    deviation_dtype: dt,
                    ..Default::default()
                }
                .check()?,
            )
        })
        .collect::<candle_swag::Result<Vec<_>>>()?;
    let swa_start = epochs / 2;
    let mut rng = StdRng::seed_from_u64(0);
    let mut order: Vec<u32> = (0..data.train.len() as u32).collect();
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(32) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let (bx, by) = (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?);
            let loss = candle_nn::loss::cross_entropy(&model.forward(&bx)?, &by)?;
            opt.backward_step(&loss)?;
        }
        if epoch >= swa_start {
            for p in &mut posteriors {
                p.collect(&params)?;
            }
        }
    }
    let reference = &posteriors[0];
    let mean = reference.mean()?;
    let opts = SampleConfig::default();
    let columns = scaled_columns(reference)?;
    println!(
        "d = {}, K = 20, {} snapshots, {} columns; {} samples at scale 0.5",
        reference.numel(),
        reference.n_collected(),
        reference.rows(),
        samples
    );
    println!(
        "{:<5} {:>12} {:>12} {:>12} {:>13} {:>13} {:>8} {:>9} {:>8}",
        "dtype",
        "column err",
        "sample err",
        "max",
        "|Δlog p| mean",
        "|Δlog p| max",
        "|log p|",
        "flushed",
        "BMA nll"
    );
    for (dt, p) in dtypes.iter().zip(&posteriors) {
        let col_err = norm(&scaled_columns(p)?.sub(&columns)?)? / norm(&columns)?;
        let (mut errs, mut dlp, mut lp_abs) = (Vec::new(), Vec::new(), 0f64);
        for seed in 0..samples as u64 {
            let want = reference.sample_flat_seeded(seed, &opts)?;
            let got = p.sample_flat_seeded(seed, &opts)?;
            errs.push(norm(&got.sub(&want)?)? / norm(&want.sub(&mean)?)?);
            let (a, b) = (reference.log_prob(&want, &opts)?, p.log_prob(&want, &opts)?);
            dlp.push((a - b).abs());
            lp_abs += a.abs() / samples as f64;
        }
        let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max_of = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        let out = Predictive::swag(
            &params,
            p,
            BmaParams {
                sample: opts.into(),
                samples: 30,
                seed: 0,
            }
            .check()?,
        )?
        .classify(&model, batches(&data.test.features, 512)?)?
        .to_host()?;
        let nll = classification_metrics(
            &out.mean_probs,
            10,
            &labels,
            &ClassificationConfig::default(),
        )?
        .nll;
        println!(
            "{:<5} {:>12.3e} {:>12.3e} {:>12.3e} {:>13.3e} {:>13.3e} {:>8.0} {:>9} {:>8.4}",
            format!("{dt:?}"),
            col_err,
            mean_of(&errs),
            max_of(&errs),
            mean_of(&dlp),
            max_of(&dlp),
            lp_abs,
            p.flushed_to_zero(),
            nll
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
