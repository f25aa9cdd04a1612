//! candle-swag with your own candle model.
//!
//! ```text
//! cargo run --release --example own_model            # on a GPU when built with --features cuda
//! cargo run --release --example own_model -- --cpu
//! ```
//!
//! A hand-written candle model built from candle-nn's layers only (Linear → candle-nn BatchNorm →
//! ReLU → Linear) on the bundled digits data, trained with a plain loop. The candle-swag lines
//! are the ones marked `SWAG:`: build a `ParamSet` from the model's `VarMap`, `collect` once per
//! epoch after the SWA start, then predict with a `Predictive` for each method: the SGD iterate,
//! the SWA mean and 30 SWAG samples, the BatchNorm statistics of candle-nn's layer refreshed
//! exactly on the training data after each sample.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{batch_norm, linear, BatchNorm, Linear, Module, Optimizer, VarBuilder, VarMap};
use candle_swag::metrics::{classification_metrics, ClassificationConfig};
use candle_swag::predictive::{batches, Predictive};
use candle_swag::{
    BatchNormRefresh, BatchNormStats, ParamSet, SampleConfig, SgdConfig, SgdMomentum, SwagConfig,
    SwagPosterior,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The user's model: nothing here knows about SWAG.
struct Net {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Net {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: linear(64, 64, vb.pp("fc1"))?,
            bn: batch_norm(64, 1e-5, vb.pp("bn"))?,
            fc2: linear(64, 10, vb.pp("fc2"))?,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(xs)?;
        let h = self.bn.forward_t(&h, train)?.relu()?;
        self.fc2.forward(&h)
    }
}

fn run() -> candle_swag::Result<()> {
    let device = if std::env::args().any(|a| a == "--cpu") {
        Device::Cpu
    } else {
        // A GPU when one is present; otherwise the CPU, with a one-line notice.
        let chosen = candle_swag::device::select(candle_swag::device::DeviceRequest::Auto)?;
        if let Some(notice) = &chosen.fallback {
            eprintln!("{notice}");
        }
        chosen.device
    };
    let data = candle_swag::data::bundled::digits(&device)?;
    let (x, y) = (&data.train.features, &data.train.targets);
    let labels: Vec<u32> = data.test.targets.to_vec1::<u32>()?;

    let varmap = VarMap::new();
    let model = Net::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    // SWAG: the weights to cover (BatchNorm running statistics are left out automatically).
    let params = ParamSet::from_varmap(&varmap)?;
    let mut opt = SgdMomentum::new(params.vars().to_vec(), SgdConfig::new(0.05, 0.9, 5e-4)?)?;
    let mut posterior = SwagPosterior::for_params(&params, SwagConfig::with_rank(20))?;

    let (epochs, swa_start) = (40, 20);
    let mut rng = StdRng::seed_from_u64(0);
    let mut order: Vec<u32> = (0..data.train.len() as u32).collect();
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        // Batches of 32 in the shuffled order; a last batch of one row is dropped (BatchNorm
        // needs two rows in training mode).
        for chunk in order.chunks(32).filter(|c| c.len() > 1) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let (bx, by) = (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?);
            let loss = candle_nn::loss::cross_entropy(&model.forward_t(&bx, true)?, &by)?;
            opt.backward_step(&loss)?;
        }
        if epoch >= swa_start {
            posterior.collect(&params)?; // SWAG: one snapshot per epoch
        }
    }
    let sgd_weights = params.flatten()?;

    // SWAG: candle-nn's BatchNorm layers, found by name in the VarMap, refreshed exactly
    // (torch's update_bn) on the training data after each weight sample.
    let refresh = BatchNormRefresh::new(BatchNormStats::from_varmap(&varmap)?, batches(x, 256)?);
    let methods = [
        ("SGD", Predictive::point(&params, &sgd_weights)?),
        (
            "SWA",
            Predictive::swa(&params, &posterior)?.with_refresh(refresh.clone()),
        ),
        (
            "SWAG",
            Predictive::swag(&params, &posterior, SampleConfig::with_scale(0.5)?, 30, 0)?
                .with_refresh(refresh),
        ),
    ];
    println!(
        "d = {} weights, {} snapshots, {} deviation columns",
        posterior.numel(),
        posterior.n_collected(),
        posterior.rows()
    );
    println!(
        "{:<6} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "method", "accuracy", "nll", "ece", "brier", "mean MI"
    );
    for (name, predictive) in methods {
        // SWAG: BMA probabilities [N, C] on the device, and the epistemic/aleatoric split.
        let out = predictive.classify(&model, batches(&data.test.features, 512)?)?;
        let host = out.to_host()?;
        let m = classification_metrics(
            &host.mean_probs,
            10,
            &labels,
            &ClassificationConfig::default(),
        )?;
        println!(
            "{:<6} {:>9.4} {:>8.4} {:>8.4} {:>8.4} {:>10.5}",
            name,
            m.accuracy,
            m.nll,
            m.ece,
            m.brier,
            host.summary().mutual_information
        );
    }
    // After each prediction the model holds its SGD weights and statistics again.
    assert_eq!(
        params.flatten()?.to_vec1::<f32>()?,
        sgd_weights.to_vec1::<f32>()?
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
