//! SWAG on a candle-nn conv net trained on MNIST-5k, scored clean and under rotation.
//!
//! Model (candle-nn layers only): conv(1→16, 3×3, pad 1) → BatchNorm → ReLU → max-pool 2 →
//! conv(16→32, 3×3, pad 1) → BatchNorm → ReLU → max-pool 2 → linear(32·7·7 → 10).
//! Pixels are divided by 255 (inputs in [0, 1], no mean subtraction).
//! Training: the crate's SGD (momentum 0.9, lr 0.05 constant after an optional linear warm-up
//! over `--warmup` epochs, default 0: none), weight decay 5e-4, batch 64,
//! shuffled each epoch by a seeded host RNG; weights initialised from a seeded host RNG
//! (torch's default bounds U(±1/√fan_in)) because candle's CPU RNG cannot be seeded. SWAG
//! moments are collected at the end of every epoch from `--swag-start` (0-based, default 15) on,
//! K = 20. Prediction: S = 30 samples at scale 0.5, BatchNorm refreshed exactly on the
//! training images (one pass, batch 64) after each sample.
//!
//! Independent work runs concurrently, each job on its own thread: the training runs of
//! MultiSWAG, then the methods (each predicts with its own copy of the network, so the methods
//! never share a `Var`). With `RAYON_NUM_THREADS` unset the example sets it to 1, so that candle
//! runs every op on the thread that calls it: on this small net, candle's own op-level threads
//! leave much of the second core idle, and a 6-epoch run finishes 1.46× sooner with the jobs
//! side by side than one at a time (`--jobs 1`, candle's default threads; README, Speed).
//!
//! `--bn-fallback` also measures the moving-average BatchNorm refresh (the fallback for layers
//! that cannot be listed, `BatchNormRefresh::moving_average`) against the exact one: the
//! statistics' relative error at the SWA mean, and SWAG's scores with the fallback.
//!
//! ```text
//! cargo run --release --example mnist_cnn -- --seeds 3 --swag-prefix fc --bn-fallback   # README table
//! python3 scripts/mnist_shifted_csv.py --out target/translated_3px.csv
//! cargo run --release --example mnist_cnn -- --seeds 3 --test target/translated_3px.csv
//! cargo run --release --example mnist_cnn -- --seeds 1 --epochs 2 --swag-start 1 --train-limit 512 --samples 4 --multi-runs 2   # CI
//! ```

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, Optimizer, VarBuilder, VarMap};
use candle_swag::batchnorm::{BatchNormRefresh, BatchNormStats};
use candle_swag::metrics::classification::{evaluate_classification, ClassificationConfig};
use candle_swag::optim::{SgdMomentum, SgdParams};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::schedule::{apply_lr, ConstantLr, LinearWarmup};
use candle_swag::swag::MultiSwag;
use candle_swag::{Error, ParamSet, Result, SampleParams, SwagParams, SwagPosterior};
use candle_swag_cli::data::idx::{read_idx, read_image_csv, IdxImages};
use candle_swag_cli::data::image::rotate_all;
use candle_swag_report::report::ReportBuilder;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "SWAG / MultiSWAG on a small candle-nn CNN, MNIST-5k clean and rotated")]
struct Args {
    /// Number of seeds (results are mean ± std over them).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// The first seed: the seeds run are first-seed, first-seed + 1, ... (to split the runs
    /// of a long table over several sittings; `--json` lines carry their seed).
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Training epochs per run.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// First epoch (0-based) after which SWAG moments are collected.
    #[arg(long, default_value_t = 15)]
    swag_start: usize,
    /// Epochs of linear learning-rate warm-up from 0 to 0.05, per step
    /// (`schedule::LinearWarmup`; 0: none, the recipe as measured).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Use only the first N training images (0: all 4000).
    #[arg(long, default_value_t = 0)]
    train_limit: usize,
    /// SWAG samples S per prediction.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Independent runs combined by MultiSWAG.
    #[arg(long, default_value_t = 3)]
    multi_runs: usize,
    /// Extra test set: CSV with header label,px0..px783 (pixels 0-255). Repeatable.
    #[arg(long = "test")]
    tests: Vec<PathBuf>,
    /// Partial SWAG: only parameters whose name starts with NAME (repeatable), e.g. `fc`.
    #[arg(long = "swag-prefix")]
    swag_prefixes: Vec<String>,
    /// Print one JSON object per (seed, method, set) instead of the table.
    #[arg(long)]
    json: bool,
    /// Directory of the calibration reports (first seed), one sub-directory per test set.
    #[arg(long, default_value = "target/mnist_cnn")]
    out: PathBuf,
    /// Directory holding the mnist5k-* IDX files.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
    /// How many jobs (training runs, prediction methods) run at once, each on its own thread;
    /// 0: all of them. Default: all of them on the CPU, one at a time on a GPU (concurrent
    /// training runs on one GPU were slower than one after another: 51 s against 3 × 14.4 s).
    #[arg(long)]
    jobs: Option<usize>,
    /// Also measure the moving-average BatchNorm refresh against the exact one.
    #[arg(long)]
    bn_fallback: bool,
    /// Standard deviation, in units of the pixel range, of the Gaussian noise added to the
    /// clean test images for the "pixel noise" set (pixels clamped to the range; 0: no set).
    #[arg(long, default_value_t = 0.5)]
    pixel_noise: f64,
    /// Start each training run from the torch script's initial weights and batch order
    /// (`scripts/torch_reference/mnist_cnn_torch.py --dump-init DIR`): run `r` of seed `s`
    /// reads `DIR/init_seedT.npz` and `DIR/order_seedT.npy` with `T = s * multi_runs + r`.
    /// The two frameworks then train the same recipe from the same point on the same batches.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// What `--init-from` takes from the torch script: `both` (weights and batch order),
    /// `weights` (candle shuffles the batches) or `order` (candle draws the weights): to tell
    /// which part of a start makes a difference.
    #[arg(long, value_enum, default_value_t = InitPart::Both)]
    init_part: InitPart,
    /// Print each training run's mean training loss and parameter norm after every epoch
    /// (the torch script's `--trace` prints the same lines).
    #[arg(long)]
    trace: bool,
    /// Pool with candle's own `max_pool2d`, whose backward pass gives 1/4 of the gradient
    /// (`candle_swag::pool`'s docs), to measure what the correct gradient changes.
    #[arg(long)]
    candle_max_pool: bool,
}

/// The parts of a torch start that `--init-from` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InitPart {
    Both,
    Weights,
    Order,
}

const BATCH: usize = 64;
const CLASSES: usize = 10;

struct Net {
    /// Pool with candle's own `max_pool2d`, whose gradient is 1/4 of the true one
    /// (`--candle-max-pool`, to measure the difference), instead of `candle_swag::pool`.
    candle_pool: bool,
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    fc: Linear,
}

impl Net {
    fn new(vb: VarBuilder, candle_pool: bool) -> candle_core::Result<Self> {
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let bn = candle_nn::BatchNormConfig::default(); // momentum 0.1, eps 1e-5
        Ok(Self {
            candle_pool,
            conv1: candle_nn::conv2d(1, 16, 3, pad, vb.pp("conv1"))?,
            bn1: candle_nn::batch_norm(16, bn, vb.pp("bn1"))?,
            conv2: candle_nn::conv2d(16, 32, 3, pad, vb.pp("conv2"))?,
            bn2: candle_nn::batch_norm(32, bn, vb.pp("bn2"))?,
            fc: candle_nn::linear(32 * 7 * 7, CLASSES, vb.pp("fc"))?,
        })
    }
}

impl Net {
    fn pool(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        if self.candle_pool {
            h.max_pool2d(2)
        } else {
            candle_swag::pool::max_pool2d(h, 2).map_err(candle_core::Error::wrap)
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = xs.apply(&self.conv1)?.apply_t(&self.bn1, train)?.relu()?;
        let h = self.pool(&h)?;
        let h = h.apply(&self.conv2)?.apply_t(&self.bn2, train)?.relu()?;
        let h = self.pool(&h)?;
        h.flatten_from(1)?.apply(&self.fc)
    }
}

/// Overwrites the conv and linear weights and biases with U(±1/√fan_in) from a seeded host RNG
/// (BatchNorm keeps candle's deterministic 1 / 0).
fn init_weights(params: &ParamSet, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fan_in = |name: &str| match name.split('.').next() {
        Some("conv1") => Some(9.0),
        Some("conv2") => Some(16.0 * 9.0),
        Some("fc") => Some(32.0 * 49.0),
        _ => None,
    };
    for (entry, var) in params.layout().entries().iter().zip(params.vars()) {
        if let Some(f) = fan_in(&entry.name) {
            let b = 1.0 / f64::sqrt(f);
            let v: Vec<f32> = (0..entry.numel())
                .map(|_| rng.random_range(-b..b) as f32)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), var.device())?)?;
        }
    }
    Ok(())
}

/// Images `[n, 1, 28, 28]` f32 in [0, 1] (pixels / 255) and labels `[n]` u32.
fn to_tensors(images: &IdxImages, device: &Device) -> Result<(Tensor, Tensor)> {
    let x: Vec<f32> = images.pixels.iter().map(|&p| p as f32 / 255.0).collect();
    let x = Tensor::from_vec(x, (images.count, 1, images.rows, images.cols), device)?;
    let y: Vec<u32> = images.labels.iter().map(|&l| l as u32).collect();
    Ok((x, Tensor::from_vec(y, images.count, device)?))
}

struct TestSet {
    name: String,
    images: IdxImages,
}

/// One network with its variables: the VarMap holds the parameters and the BatchNorm running
/// statistics, the ParamSet the trainable parameters (what SWAG models).
struct Model {
    varmap: VarMap,
    net: Net,
    params: ParamSet,
}

impl Model {
    fn new(device: &Device, candle_pool: bool) -> Result<Self> {
        let varmap = VarMap::new();
        let net = Net::new(
            VarBuilder::from_varmap(&varmap, DType::F32, device),
            candle_pool,
        )?;
        let params = ParamSet::from_varmap(&varmap)?;
        Ok(Self {
            varmap,
            net,
            params,
        })
    }

    /// A new network holding a copy of this one's variables (parameters and BatchNorm
    /// statistics), so that another thread can write weight samples into it.
    fn replica(&self, device: &Device) -> Result<Self> {
        let copy = Self::new(device, self.net.candle_pool)?;
        let from = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let to = copy.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, var) in from.iter() {
            let target = to.get(name).ok_or_else(|| {
                Error::LayoutMismatch(format!("replica has no variable `{name}`"))
            })?;
            target.set(var.as_tensor())?;
        }
        drop(to);
        Ok(copy)
    }
}

struct Run {
    model: Model,
    full: SwagPosterior,
    partial: Option<SwagPosterior>,
    last_sgd: Tensor,
    /// Seconds spent collecting SWAG moments in this run.
    collect_seconds: f64,
}

/// Wall times of one seed's phases.
#[derive(Default, Clone, Copy)]
struct Timing {
    /// Training all runs (concurrently with `--jobs` other than 1), collection included.
    train: f64,
    /// SWAG collection, summed over the runs.
    collect: f64,
    /// Every method's prediction with BatchNorm refresh, on every test set.
    bma: f64,
}

/// A training run's starting point written by the torch script (`--init-from`): the initial
/// weights by name and each epoch's batch order.
struct TorchStart {
    weights: Vec<(String, Tensor)>,
    order: Vec<Vec<u32>>,
}

impl TorchStart {
    fn read(dir: &std::path::Path, torch_seed: u64, epochs: usize, n: usize) -> Result<Self> {
        let weights_path = dir.join(format!("init_seed{torch_seed}.npz"));
        let weights = Tensor::read_npz(&weights_path)
            .map_err(|e| Error::bad_file(&weights_path, e.to_string()))?;
        let order_path = dir.join(format!("order_seed{torch_seed}.npy"));
        let order = Tensor::read_npy(&order_path)
            .and_then(|t| t.to_dtype(DType::I64)?.to_vec2::<i64>())
            .map_err(|e| Error::bad_file(&order_path, e.to_string()))?;
        if order.len() < epochs || order.iter().any(|row| row.len() != n) {
            return Err(Error::bad_file(
                &order_path,
                format!(
                    "{} epochs of {} indices; this run needs {epochs} epochs of {n} (same --epochs and --train-limit as the torch script)",
                    order.len(),
                    order.first().map_or(0, Vec::len)
                ),
            ));
        }
        let order = order
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|i| u32::try_from(i).ok().filter(|&i| (i as usize) < n))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| Error::bad_file(&order_path, format!("an index outside 0..{n}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self { weights, order })
    }

    /// Writes the weights into the run's parameters (every parameter must be in the file).
    fn apply(&self, params: &ParamSet) -> Result<()> {
        for (entry, var) in params.layout().entries().iter().zip(params.vars()) {
            let (_, w) = self
                .weights
                .iter()
                .find(|(name, _)| *name == entry.name)
                .ok_or_else(|| {
                    Error::LayoutMismatch(format!("the torch start has no `{}`", entry.name))
                })?;
            var.set(
                &w.to_dtype(DType::F32)?
                    .to_device(var.device())?
                    .reshape(var.shape())?,
            )?;
        }
        Ok(())
    }
}

fn train_run(
    args: &Args,
    x: &Tensor,
    y: &Tensor,
    seed: u64,
    start: Option<&TorchStart>,
    device: &Device,
) -> Result<Run> {
    let model = Model::new(device, args.candle_max_pool)?;
    let params = &model.params;
    match start {
        Some(start) if args.init_part != InitPart::Order => start.apply(params)?,
        _ => init_weights(params, seed)?,
    }
    let mut full = SwagPosterior::for_params(
        params,
        SwagParams {
            rank: 20,
            ..Default::default()
        }
        .check()?,
    )?;
    let sub = partial_params(args, params)?;
    let mut partial = match &sub {
        Some(sub) => Some(SwagPosterior::for_params(
            sub,
            SwagParams {
                rank: 20,
                ..Default::default()
            }
            .check()?,
        )?),
        None => None,
    };
    let mut opt = SgdMomentum::new(
        params.vars().to_vec(),
        SgdParams {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
        }
        .check()?,
    )?;
    let schedule = LinearWarmup::new(ConstantLr::new(0.05)?, args.warmup)?;
    let n = x.dims()[0];
    let steps_per_epoch = n.div_ceil(BATCH) as f64;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
    let mut collect_seconds = 0.0;
    for epoch in 0..args.epochs {
        match start {
            Some(start) if args.init_part != InitPart::Weights => {
                order.clone_from(&start.order[epoch])
            }
            _ => order.shuffle(&mut rng),
        }
        let mut loss_sum = 0.0;
        for (step, chunk) in order.chunks(BATCH).enumerate() {
            apply_lr(
                &mut opt,
                &schedule,
                epoch as f64 + step as f64 / steps_per_epoch,
            );
            let idx = Tensor::new(chunk, device)?;
            let xb = x.index_select(&idx, 0)?;
            let yb = y.index_select(&idx, 0)?;
            let logits = model.net.forward_t(&xb, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            if args.trace && epoch == 0 && step < 3 {
                // The first steps' loss and gradient norms, to compare with the torch script's.
                let grads = loss.backward()?;
                let mut norms = Vec::new();
                for (entry, var) in params.layout().entries().iter().zip(params.vars()) {
                    if let Some(g) = grads.get(var) {
                        let norm = g.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?;
                        norms.push(format!("{} {:.6}", entry.name, norm.to_scalar::<f64>()?));
                    }
                }
                println!(
                    "trace step {step}: loss {:.6}; gradient norms: {}",
                    loss.to_scalar::<f32>()?,
                    norms.join(", ")
                );
                opt.step(&grads)?;
            } else {
                opt.backward_step(&loss)?;
            }
            if args.trace {
                loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            }
        }
        if args.trace {
            let norm = params
                .flatten()?
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .sqrt()?;
            println!(
                "trace seed {seed} epoch {epoch}: mean training loss {:.6}, parameter norm {:.6}",
                loss_sum / n as f64,
                norm.to_scalar::<f64>()?
            );
        }
        if epoch >= args.swag_start {
            let t = Instant::now();
            full.collect(params)?;
            if let (Some(sub), Some(post)) = (&sub, partial.as_mut()) {
                post.collect(sub)?;
            }
            collect_seconds += t.elapsed().as_secs_f64();
        }
    }
    if full.n_collected() < 2 {
        return Err(Error::invalid(
            "swag-start",
            format!(
                "{} collections with --epochs {} --swag-start {}; SWAG needs at least 2",
                full.n_collected(),
                args.epochs,
                args.swag_start
            ),
        ));
    }
    let last_sgd = params.flatten()?;
    Ok(Run {
        model,
        full,
        partial,
        last_sgd,
        collect_seconds,
    })
}

/// The parameters of partial SWAG (`--swag-prefix`), if asked.
fn partial_params(args: &Args, params: &ParamSet) -> Result<Option<ParamSet>> {
    if args.swag_prefixes.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = args.swag_prefixes.iter().map(String::as_str).collect();
    Ok(Some(params.select_prefix(&names)?))
}

/// Where a method's weights come from.
#[derive(Clone, Copy)]
enum Weights {
    Sgd,
    Swa,
    SwagDiag,
    Swag,
    /// SWAG over the `--swag-prefix` parameters only.
    Partial,
    MultiSwag,
    /// SWAG with the moving-average BatchNorm refresh instead of the exact one.
    SwagMovingAverageBn,
    /// SWAG on the posterior of training run R alone (the members of MultiSWAG).
    SwagRun(usize),
}

/// What every prediction job reads.
struct Shared<'a> {
    args: &'a Args,
    runs: &'a [Run],
    x_train: &'a Tensor,
    x_test: &'a Tensor,
    device: &'a Device,
    sample_seed: u64,
}

/// One method's BMA probabilities `[rows of all test sets, classes]`, flattened, computed on a
/// copy of run 0's network (run 0 is the SWAG run; MultiSWAG adds the others' posteriors).
fn predict(job: Weights, sh: &Shared) -> Result<Vec<f32>> {
    let main = &sh.runs[0];
    let model = main.model.replica(sh.device)?;
    let params = &model.params;
    let train_batches = batches(sh.x_train, BATCH)?;
    let refresh = match job {
        Weights::SwagMovingAverageBn => BatchNormRefresh::moving_average(train_batches, 1)?,
        _ => BatchNormRefresh::new(BatchNormStats::from_varmap(&model.varmap)?, train_batches),
    };
    let scale = SampleParams {
        scale: 0.5,
        ..Default::default()
    }
    .check()?;
    let (s, seed) = (sh.args.samples, sh.sample_seed);
    let sub;
    let multi;
    let predictive = match job {
        Weights::Sgd => Predictive::point(params, &main.last_sgd)?,
        Weights::Swa => Predictive::swa(params, &main.full)?,
        Weights::SwagDiag => Predictive::swag(
            params,
            &main.full,
            BmaParams {
                sample: SampleParams {
                    diag_only: true,
                    ..scale.into()
                },
                samples: s,
                seed,
            }
            .check()?,
        )?,
        Weights::Swag | Weights::SwagMovingAverageBn => Predictive::swag(
            params,
            &main.full,
            BmaParams {
                sample: scale.into(),
                samples: s,
                seed,
            }
            .check()?,
        )?,
        Weights::Partial => {
            sub = partial_params(sh.args, params)?
                .ok_or_else(|| Error::invalid("swag-prefix", "no prefix given"))?;
            let post = main
                .partial
                .as_ref()
                .ok_or_else(|| Error::invalid("swag-prefix", "no partial posterior"))?;
            Predictive::swag(
                &sub,
                post,
                BmaParams {
                    sample: scale.into(),
                    samples: s,
                    seed,
                }
                .check()?,
            )?
        }
        Weights::SwagRun(r) => Predictive::swag(
            params,
            &sh.runs[r].full,
            BmaParams {
                sample: scale.into(),
                samples: s,
                seed,
            }
            .check()?,
        )?,
        Weights::MultiSwag => {
            multi = MultiSwag::new(sh.runs.iter().map(|r| &r.full).collect::<Vec<_>>())?;
            Predictive::multi_swag(
                params,
                &multi,
                BmaParams {
                    sample: scale.into(),
                    samples: s,
                    seed,
                }
                .check()?,
            )?
        }
    };
    let out = predictive
        .with_refresh(refresh)
        .classify(&model.net, batches(sh.x_test, 100)?)?;
    Ok(out.probs.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Relative error of the moving-average refresh (1 and 2 passes, starting from the statistics
/// left by training) against the exact refresh, at the SWA mean: per layer,
/// `‖mean_ma − mean_exact‖ / ‖mean_exact‖` and the same for the variances.
fn fallback_error(sh: &Shared) -> Result<Vec<(usize, String, f64, f64)>> {
    let main = &sh.runs[0];
    let model = main.model.replica(sh.device)?;
    model.params.write_flat(&main.full.mean()?)?;
    let layers = BatchNormStats::from_varmap(&model.varmap)?;
    let read = |l: &BatchNormStats| -> Result<(Vec<f64>, Vec<f64>)> {
        let host = |v: &candle_core::Var| -> Result<Vec<f64>> {
            Ok(v.as_tensor().to_dtype(DType::F64)?.to_vec1()?)
        };
        Ok((host(l.running_mean())?, host(l.running_var())?))
    };
    let trained: Vec<_> = layers.iter().map(read).collect::<Result<_>>()?;
    BatchNormRefresh::new(layers.clone(), batches(sh.x_train, BATCH)?).run(&model.net)?;
    let exact: Vec<_> = layers.iter().map(read).collect::<Result<_>>()?;
    let rel = |a: &[f64], b: &[f64]| {
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    };
    let mut errors = Vec::new();
    for passes in [1, 2] {
        for (l, (m, v)) in layers.iter().zip(&trained) {
            l.running_mean()
                .set(&Tensor::new(m.as_slice(), sh.device)?.to_dtype(DType::F32)?)?;
            l.running_var()
                .set(&Tensor::new(v.as_slice(), sh.device)?.to_dtype(DType::F32)?)?;
        }
        BatchNormRefresh::moving_average(batches(sh.x_train, BATCH)?, passes)?.run(&model.net)?;
        for (l, (em, ev)) in layers.iter().zip(&exact) {
            let (m, v) = read(l)?;
            errors.push((passes, l.name().to_string(), rel(&m, em), rel(&v, ev)));
        }
    }
    Ok(errors)
}

type Job<'a, T> = Box<dyn FnOnce() -> Result<T> + Send + 'a>;

/// Runs `jobs`, at most `threads` at once (0: all), each on a thread of its own; the results
/// come back in the jobs' order, the first error wins.
fn run_jobs<T: Send>(threads: usize, jobs: Vec<Job<'_, T>>) -> Result<Vec<T>> {
    let n = jobs.len();
    let threads = if threads == 0 { n } else { threads.min(n) };
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<Result<T>>>>());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let next = {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    if q.is_empty() {
                        None
                    } else {
                        Some(q.remove(0))
                    }
                };
                let Some((i, job)) = next else { break };
                let r = job();
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::invalid("jobs", "a job did not run"))))
        .collect()
}

/// Metrics of one (seed, method, set).
#[derive(serde::Serialize, Clone)]
struct Row {
    seed: u64,
    method: String,
    set: String,
    acc: f64,
    nll: f64,
    ece: f64,
    brier: f64,
}

fn run() -> Result<()> {
    let args = Args::parse();
    if args.samples == 0 || args.multi_runs == 0 || args.seeds == 0 {
        return Err(Error::invalid(
            "samples/multi-runs/seeds",
            "must each be at least 1",
        ));
    }
    let device = if args.cpu {
        Device::Cpu
    } else {
        let chosen = candle_swag::device::select(candle_swag::device::DeviceRequest::Auto)?;
        if let Some(notice) = &chosen.fallback {
            eprintln!("{notice}");
        }
        chosen.device
    };
    let n_jobs = args.jobs.unwrap_or(if device.is_cpu() { 0 } else { 1 });
    if n_jobs != 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Before any thread exists (candle reads it at each op; see the module docs).
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let d = &args.data;
    let mut train = read_idx(
        d.join("mnist5k-train-images-idx3-ubyte"),
        d.join("mnist5k-train-labels-idx1-ubyte"),
    )?;
    if args.train_limit > 0 && args.train_limit < train.count {
        train.count = args.train_limit;
        train
            .pixels
            .truncate(args.train_limit * train.rows * train.cols);
        train.labels.truncate(args.train_limit);
    }
    let test = read_idx(
        d.join("mnist5k-test-images-idx3-ubyte"),
        d.join("mnist5k-test-labels-idx1-ubyte"),
    )?;
    let mut sets = vec![];
    for deg in [30.0, 60.0] {
        sets.push(TestSet {
            name: format!("rotated {deg}°"),
            images: IdxImages {
                pixels: rotate_all(&test.pixels, test.rows, test.cols, deg),
                ..test.clone()
            },
        });
    }
    if args.pixel_noise > 0.0 {
        sets.push(TestSet {
            name: format!("pixel noise {}", args.pixel_noise),
            images: IdxImages {
                pixels: add_pixel_noise(&test.pixels, args.pixel_noise)?,
                ..test.clone()
            },
        });
    }
    sets.insert(
        0,
        TestSet {
            name: "clean".into(),
            images: test,
        },
    );
    for path in &args.tests {
        sets.push(TestSet {
            name: path.display().to_string(),
            images: read_image_csv(path)?,
        });
    }
    // All test sets in one tensor, so each weight sample refreshes BatchNorm once.
    let (x_train, y_train) = to_tensors(&train, &device)?;
    let mut xs = Vec::new();
    let mut labels: Vec<Vec<u32>> = Vec::new();
    for s in &sets {
        let (x, y) = to_tensors(&s.images, &device)?;
        xs.push(x);
        labels.push(y.to_vec1()?);
    }
    let x_test = Tensor::cat(&xs, 0)?;
    let opts = ClassificationConfig::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut reports: Vec<ReportBuilder> =
        sets.iter().map(|s| ReportBuilder::new(&s.name)).collect();
    let mut timings = Vec::new();
    let mut memory: Vec<(String, usize)> = Vec::new();
    let mut fallback = Vec::new();
    for seed in args.first_seed..args.first_seed + args.seeds {
        let mut timing = Timing::default();
        let t = Instant::now();
        let starts = match &args.init_from {
            Some(dir) => (0..args.multi_runs as u64)
                .map(|r| {
                    let torch_seed = seed * args.multi_runs as u64 + r;
                    TorchStart::read(dir, torch_seed, args.epochs, train.count).map(Some)
                })
                .collect::<Result<Vec<_>>>()?,
            None => (0..args.multi_runs).map(|_| None).collect(),
        };
        let training: Vec<Job<Run>> = (0..args.multi_runs as u64)
            .zip(&starts)
            .map(|(r, start)| {
                let (args, x, y, device) = (&args, &x_train, &y_train, &device);
                let start = start.as_ref();
                Box::new(move || train_run(args, x, y, seed * 1000 + r, start, device)) as Job<Run>
            })
            .collect();
        let runs = run_jobs(n_jobs, training)?;
        timing.train = t.elapsed().as_secs_f64();
        timing.collect = runs.iter().map(|r| r.collect_seconds).sum();

        let t = Instant::now();
        let mut methods = vec![
            ("SGD".to_string(), Weights::Sgd),
            ("SWA".into(), Weights::Swa),
            ("SWAG-diag".into(), Weights::SwagDiag),
            ("SWAG".into(), Weights::Swag),
        ];
        if runs[0].partial.is_some() {
            let name = format!("SWAG ({})", args.swag_prefixes.join(","));
            methods.push((name, Weights::Partial));
        }
        methods.push((
            format!("MultiSWAG ({} runs)", args.multi_runs),
            Weights::MultiSwag,
        ));
        if args.multi_runs > 1 {
            // Each member alone: an ensemble should score at least their mean.
            for r in 0..args.multi_runs {
                methods.push((format!("SWAG run {r}"), Weights::SwagRun(r)));
            }
        }
        if args.bn_fallback {
            methods.push((
                "SWAG (BN moving average)".into(),
                Weights::SwagMovingAverageBn,
            ));
        }
        let shared = Shared {
            args: &args,
            runs: &runs,
            x_train: &x_train,
            x_test: &x_test,
            device: &device,
            sample_seed: seed * 7919 + 17,
        };
        let jobs: Vec<Job<Vec<f32>>> = methods
            .iter()
            .map(|&(_, w)| {
                let sh = &shared;
                Box::new(move || predict(w, sh)) as Job<Vec<f32>>
            })
            .collect();
        let all_probs = run_jobs(n_jobs, jobs)?;
        timing.bma = t.elapsed().as_secs_f64();
        timings.push(timing);
        if args.bn_fallback {
            fallback.push((seed, fallback_error(&shared)?));
        }
        if seed == args.first_seed {
            memory.push(("SWAG (all parameters)".into(), runs[0].full.state_bytes()));
            if let Some(post) = &runs[0].partial {
                memory.push((
                    format!("SWAG ({})", args.swag_prefixes.join(",")),
                    post.state_bytes(),
                ));
            }
        }
        for ((name, _), probs) in methods.iter().zip(&all_probs) {
            let mut offset = 0;
            for (k, set) in sets.iter().enumerate() {
                let n = set.images.count * CLASSES;
                let p = &probs[offset..offset + n];
                offset += n;
                let eval = evaluate_classification(p, CLASSES, &labels[k], &opts)?;
                let m = eval.metrics;
                rows.push(Row {
                    seed,
                    method: name.clone(),
                    set: set.name.clone(),
                    acc: m.accuracy,
                    nll: m.nll,
                    ece: m.ece,
                    brier: m.brier,
                });
                if seed == args.first_seed {
                    let b = std::mem::replace(&mut reports[k], ReportBuilder::new(""));
                    reports[k] = b.classification_method(name, p, CLASSES, &labels[k])?;
                }
            }
        }
    }
    // Reports last, each directory atomically: an error above leaves no half-written output.
    let mut report_dirs = Vec::new();
    for (set, report) in sets.iter().zip(&reports) {
        let dir = args
            .out
            .join(candle_swag_report::report::file_safe_name(&set.name, "set"));
        report.write(&dir)?;
        report_dirs.push(dir);
    }
    // With --json, stdout holds only the rows; the timings and the fallback go to stderr.
    let mut notes = String::new();
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&rows, &sets, args.seeds);
    }
    let jobs = match n_jobs {
        0 => "all jobs at once".to_string(),
        j => format!("{j} job(s) at once"),
    };
    notes += &format!(
        "\nwall time per seed (s), {jobs}, RAYON_NUM_THREADS={}:\n\
         training ({} runs, collection included) | of which SWAG collection (summed over runs) | \
         BMA with BN refresh ({} methods) | total\n",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        args.multi_runs,
        rows.iter()
            .filter(|r| r.seed == args.first_seed && r.set == "clean")
            .count()
    );
    for (seed, t) in (args.first_seed..).zip(&timings) {
        notes += &format!(
            "seed {seed}: {:.1} | {:.3} | {:.1} | {:.1}\n",
            t.train,
            t.collect,
            t.bma,
            t.train + t.bma
        );
    }
    notes += &ensemble_check(&rows, &sets, &args);
    if !fallback.is_empty() {
        notes += "\nmoving-average BatchNorm refresh against the exact one, at the SWA mean \
                  (relative L2 error of the running mean | running variance):\n";
        for (seed, errors) in &fallback {
            for (passes, layer, em, ev) in errors {
                notes += &format!("seed {seed}, {passes} pass(es), {layer}: {em:.2e} | {ev:.2e}\n");
            }
        }
    }
    if args.json {
        eprint!("{notes}");
        return Ok(());
    }
    print!("{notes}");
    println!("\nposterior state (seed {}):", args.first_seed);
    for (name, bytes) in &memory {
        println!("  {name}: {:.2} MiB", *bytes as f64 / (1024.0 * 1024.0));
    }
    println!(
        "\nreports: {}",
        report_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Gaussian noise of standard deviation `sigma` (in units of the 0–255 range) added to every
/// pixel, rounded and clamped to the range; the same images for every run (fixed seed).
fn add_pixel_noise(pixels: &[u8], sigma: f64) -> Result<Vec<u8>> {
    let normal = rand_distr::Normal::new(0.0, sigma * 255.0)
        .map_err(|e| Error::invalid("pixel-noise", e.to_string()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9);
    Ok(pixels
        .iter()
        .map(|&p| (p as f64 + rng.sample(normal)).round().clamp(0.0, 255.0) as u8)
        .collect())
}

/// Per seed and test set: MultiSWAG's accuracy and NLL against the mean of its members' own
/// SWAG rows (`SWAG run R`). An ensemble's NLL is at most its members' mean NLL when it averages
/// their predictive probabilities (Jensen); accuracy has no such guarantee but usually follows.
fn ensemble_check(rows: &[Row], sets: &[TestSet], args: &Args) -> String {
    if args.multi_runs < 2 {
        return String::new();
    }
    let mut out = String::from(
        "\nMultiSWAG against the mean of its runs' own SWAG (accuracy, NLL; ok: acc >= mean, NLL <= mean):\n",
    );
    for seed in args.first_seed..args.first_seed + args.seeds {
        for set in sets {
            let of = |pred: &dyn Fn(&str) -> bool| -> Vec<&Row> {
                rows.iter()
                    .filter(|r| r.seed == seed && r.set == set.name && pred(&r.method))
                    .collect()
            };
            let members = of(&|m: &str| m.starts_with("SWAG run "));
            let multi = of(&|m: &str| m.starts_with("MultiSWAG"));
            let (Some(multi), false) = (multi.first(), members.is_empty()) else {
                continue;
            };
            let n = members.len() as f64;
            let acc = members.iter().map(|r| r.acc).sum::<f64>() / n;
            let nll = members.iter().map(|r| r.nll).sum::<f64>() / n;
            let verdict = |ok: bool| if ok { "ok" } else { "NOT MET" };
            out += &format!(
                "seed {seed}, {}: acc {:.3} vs {acc:.3} ({}), NLL {:.3} vs {nll:.3} ({})\n",
                set.name,
                multi.acc,
                verdict(multi.acc >= acc),
                multi.nll,
                verdict(multi.nll <= nll)
            );
        }
    }
    out
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    // Sample std (divisor n − 1); 0 for one seed.
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

fn print_table(rows: &[Row], sets: &[TestSet], seeds: u64) {
    println!("mean ± std over {seeds} seed(s) (std: divisor n−1)\n");
    println!("| test set | method | accuracy | NLL | ECE | Brier |\n|---|---|---|---|---|---|");
    let mut methods: Vec<&str> = Vec::new();
    for r in rows {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    for set in sets {
        for m in &methods {
            let sel: Vec<&Row> = rows
                .iter()
                .filter(|r| r.set == set.name && r.method == *m)
                .collect();
            let col = |f: fn(&Row) -> f64| {
                let (mu, sd) = mean_std(&sel.iter().map(|r| f(r)).collect::<Vec<_>>());
                format!("{mu:.3} ± {sd:.3}")
            };
            println!(
                "| {} | {m} | {} | {} | {} | {} |",
                set.name,
                col(|r| r.acc),
                col(|r| r.nll),
                col(|r| r.ece),
                col(|r| r.brier)
            );
        }
    }
}

fn main() {
    candle_swag::device::keep_freed_memory();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
