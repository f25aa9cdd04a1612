//! candle-swag with your own candle model.
//!
//! ```text
//! cargo run --release --example own_model
//! ```
//!
//! A hand-written candle model (Linear → BatchNorm → ReLU → Linear) on the bundled digits data,
//! trained with a plain loop. The only candle-swag lines are the ones marked `SWAG:`: build a
//! `ParamSet` from the model's `VarMap`, `collect` once per epoch after the SWA start, then for
//! each of S samples write a weight sample into the Vars, refresh the BatchNorm statistics on
//! the training data, and average the predicted probabilities (Bayesian model averaging).

use candle_core::{DType, Device, ModuleT, Tensor, D};
use candle_nn::{linear, Linear, Module, Optimizer, VarBuilder, VarMap};
use candle_swag::batchnorm::{refresh_batchnorm, BatchNorm, BatchNormConfig, HasBatchNorm};
use candle_swag::layout::ParamSet;
use candle_swag::metrics::classification::{classification_metrics, ClassificationOptions};
use candle_swag::optim::{SgdConfig, SgdMomentum};
use candle_swag::swag::{SampleOptions, SwagConfig, SwagPosterior};
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
    fn new(vb: VarBuilder) -> candle_swag::Result<Self> {
        Ok(Self {
            fc1: linear(64, 64, vb.pp("fc1"))?,
            bn: BatchNorm::new(64, BatchNormConfig::default(), vb.pp("bn"))?,
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

/// Lets candle-swag find the BatchNorm layers to refresh after each weight sample.
impl HasBatchNorm for Net {
    fn batchnorms(&self) -> Vec<BatchNorm> {
        vec![self.bn.clone()]
    }
}

fn batches(x: &Tensor, y: &Tensor, order: &[u32], size: usize) -> Vec<(Tensor, Tensor)> {
    order
        .chunks(size)
        .filter(|c| c.len() > 1)
        .filter_map(|c| {
            let idx = Tensor::from_slice(c, c.len(), x.device()).ok()?;
            Some((x.index_select(&idx, 0).ok()?, y.index_select(&idx, 0).ok()?))
        })
        .collect()
}

fn probabilities(model: &Net, x: &Tensor) -> candle_core::Result<Vec<f32>> {
    candle_nn::ops::softmax(&model.forward_t(x, false)?, D::Minus1)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn run() -> candle_swag::Result<()> {
    let device = Device::Cpu;
    let data = candle_swag::data::bundled::digits(&device)?;
    let (x, y) = (&data.train.features, &data.train.targets);
    let labels: Vec<u32> = data.test.targets.to_vec1::<u32>()?;

    let varmap = VarMap::new();
    let model = Net::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    // SWAG: the weights to cover (BatchNorm running statistics are left out automatically).
    let params = ParamSet::from_varmap(&varmap)?;
    let mut opt = SgdMomentum::new(
        params.vars().to_vec(),
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
        },
    )?;
    let mut posterior = SwagPosterior::for_params(&params, SwagConfig::with_rank(20))?;

    let (epochs, swa_start) = (40, 20);
    let mut rng = StdRng::seed_from_u64(0);
    let mut order: Vec<u32> = (0..data.train.len() as u32).collect();
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        for (bx, by) in batches(x, y, &order, 32) {
            let loss = candle_nn::loss::cross_entropy(&model.forward_t(&bx, true)?, &by)?;
            opt.backward_step(&loss)?;
        }
        if epoch >= swa_start {
            posterior.collect(&params)?; // SWAG: one snapshot per epoch
        }
    }
    let metrics = |probs: &[f32]| {
        classification_metrics(probs, 10, &labels, &ClassificationOptions::default())
    };
    let sgd = metrics(&probabilities(&model, &data.test.features)?)?;

    // SWAG: Bayesian model averaging over 30 weight samples.
    let refresh_batches = || batches(x, y, &order, 256).into_iter().map(|(bx, _)| Ok(bx));
    let samples = 30;
    let mut bma = vec![0f32; labels.len() * 10];
    for _ in 0..samples {
        posterior.sample_into(&params, &SampleOptions::with_scale(0.5), &mut rng)?;
        refresh_batchnorm(&model, refresh_batches(), None)?;
        for (acc, p) in bma
            .iter_mut()
            .zip(probabilities(&model, &data.test.features)?)
        {
            *acc += p / samples as f32;
        }
    }
    let swag = metrics(&bma)?;

    // SWA: the mean weights, with their own BatchNorm statistics.
    posterior.write_mean_into(&params)?;
    refresh_batchnorm(&model, refresh_batches(), None)?;
    let swa = metrics(&probabilities(&model, &data.test.features)?)?;

    println!(
        "d = {} weights, {} snapshots, {} deviation columns",
        posterior.numel(),
        posterior.n_collected(),
        posterior.rows()
    );
    println!(
        "{:<6} {:>9} {:>8} {:>8} {:>8}",
        "method", "accuracy", "nll", "ece", "brier"
    );
    for (name, m) in [("SGD", &sgd), ("SWA", &swa), ("SWAG", &swag)] {
        println!(
            "{:<6} {:>9.4} {:>8.4} {:>8.4} {:>8.4}",
            name, m.accuracy, m.nll, m.ece, m.brier
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
