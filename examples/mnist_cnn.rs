//! SWAG on a candle-nn conv net trained on MNIST-5k, scored clean and under rotation.
//!
//! Model (candle-nn layers only): conv(1→16, 3×3, pad 1) → BatchNorm → ReLU → max-pool 2 →
//! conv(16→32, 3×3, pad 1) → BatchNorm → ReLU → max-pool 2 → linear(32·7·7 → 10).
//! Pixels are divided by 255 (inputs in [0, 1], no mean subtraction).
//! Training: the crate's SGD (momentum 0.9, lr 0.05 constant, weight decay 5e-4), batch 64,
//! shuffled each epoch by a seeded host RNG; weights initialised from a seeded host RNG
//! (torch's default bounds U(±1/√fan_in)) because candle's CPU RNG cannot be seeded. SWAG
//! moments are collected at the end of every epoch from `--swag-start` (0-based, default 15) on,
//! K = 20. Prediction: S = 30 samples at scale 0.5, BatchNorm refreshed exactly on the
//! training images (one pass, batch 64) after each sample.
//!
//! ```text
//! cargo run --release --example mnist_cnn -- --seeds 3
//! cargo run --release --example mnist_cnn -- --seeds 1 --epochs 2 --swag-start 1 --train-limit 512 --samples 4 --multi-runs 2   # CI
//! ```

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, Optimizer, VarBuilder, VarMap};
use candle_swag::batchnorm::{BatchNormRefresh, BatchNormStats};
use candle_swag::data::idx::{read_idx, read_image_csv, IdxImages};
use candle_swag::data::image::rotate_all;
use candle_swag::metrics::classification::{evaluate_classification, ClassificationConfig};
use candle_swag::optim::{SgdConfig, SgdMomentum};
use candle_swag::predictive::{batches, Predictive};
use candle_swag::report::ReportBuilder;
use candle_swag::swag::MultiSwag;
use candle_swag::{Error, ParamSet, Result, SampleConfig, SwagConfig, SwagPosterior};
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
}

const BATCH: usize = 64;
const CLASSES: usize = 10;

struct Net {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    fc: Linear,
}

impl Net {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let bn = candle_nn::BatchNormConfig::default(); // momentum 0.1, eps 1e-5
        Ok(Self {
            conv1: candle_nn::conv2d(1, 16, 3, pad, vb.pp("conv1"))?,
            bn1: candle_nn::batch_norm(16, bn, vb.pp("bn1"))?,
            conv2: candle_nn::conv2d(16, 32, 3, pad, vb.pp("conv2"))?,
            bn2: candle_nn::batch_norm(32, bn, vb.pp("bn2"))?,
            fc: candle_nn::linear(32 * 7 * 7, CLASSES, vb.pp("fc"))?,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = xs.apply(&self.conv1)?.apply_t(&self.bn1, train)?.relu()?;
        let h = h.max_pool2d(2)?;
        let h = h.apply(&self.conv2)?.apply_t(&self.bn2, train)?.relu()?;
        let h = h.max_pool2d(2)?;
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

struct Run {
    varmap: VarMap,
    net: Net,
    params: ParamSet,
    full: SwagPosterior,
    partial: Option<(ParamSet, SwagPosterior)>,
    last_sgd: Tensor,
}

#[derive(Default, Clone, Copy)]
struct Timing {
    train: f64,
    collect: f64,
    bma: f64,
}

fn train_run(
    args: &Args,
    x: &Tensor,
    y: &Tensor,
    seed: u64,
    device: &Device,
    timing: &mut Timing,
) -> Result<Run> {
    let varmap = VarMap::new();
    let net = Net::new(VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let params = ParamSet::from_varmap(&varmap)?;
    init_weights(&params, seed)?;
    let mut full = SwagPosterior::for_params(&params, SwagConfig::with_rank(20))?;
    let mut partial = if args.swag_prefixes.is_empty() {
        None
    } else {
        let names: Vec<&str> = args.swag_prefixes.iter().map(String::as_str).collect();
        let sub = params.select_prefix(&names)?;
        let post = SwagPosterior::for_params(&sub, SwagConfig::with_rank(20))?;
        Some((sub, post))
    };
    let mut opt = SgdMomentum::new(params.vars().to_vec(), SgdConfig::new(0.05, 0.9, 5e-4)?)?;
    let n = x.dims()[0];
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
    for epoch in 0..args.epochs {
        let t = Instant::now();
        order.shuffle(&mut rng);
        for chunk in order.chunks(BATCH) {
            let idx = Tensor::new(chunk, device)?;
            let xb = x.index_select(&idx, 0)?;
            let yb = y.index_select(&idx, 0)?;
            let logits = net.forward_t(&xb, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            opt.backward_step(&loss)?;
        }
        timing.train += t.elapsed().as_secs_f64();
        if epoch >= args.swag_start {
            let t = Instant::now();
            full.collect(&params)?;
            if let Some((sub, post)) = partial.as_mut() {
                post.collect(sub)?;
            }
            timing.collect += t.elapsed().as_secs_f64();
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
        varmap,
        net,
        params,
        full,
        partial,
        last_sgd,
    })
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
        Device::cuda_if_available(0)?
    };
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
    for seed in args.first_seed..args.first_seed + args.seeds {
        let mut timing = Timing::default();
        let runs = (0..args.multi_runs)
            .map(|r| {
                train_run(
                    &args,
                    &x_train,
                    &y_train,
                    seed * 1000 + r as u64,
                    &device,
                    &mut timing,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        let main = &runs[0];
        // MultiSWAG: each run's posterior lives on its own net; its samples are written into
        // run 0's parameters (same layout), so one net and one refresh serve all of them.
        let multi = MultiSwag::new(runs.iter().map(|r| &r.full).collect::<Vec<_>>())?;
        let bn = BatchNormStats::from_varmap(&main.varmap, 0.1)?;
        let refresh = BatchNormRefresh::new(bn, batches(&x_train, BATCH)?);
        let sample_seed = seed * 7919 + 17;
        let scale = SampleConfig::with_scale(0.5)?;
        let diag = scale.with_diag_only(true);
        let mut methods: Vec<(String, Predictive)> = vec![
            (
                "SGD".into(),
                Predictive::point(&main.params, &main.last_sgd)?.with_refresh(refresh.clone()),
            ),
            (
                "SWA".into(),
                Predictive::swa(&main.params, &main.full)?.with_refresh(refresh.clone()),
            ),
            (
                "SWAG-diag".into(),
                Predictive::swag(&main.params, &main.full, diag, args.samples, sample_seed)?
                    .with_refresh(refresh.clone()),
            ),
            (
                "SWAG".into(),
                Predictive::swag(&main.params, &main.full, scale, args.samples, sample_seed)?
                    .with_refresh(refresh.clone()),
            ),
        ];
        if let Some((sub, post)) = &main.partial {
            methods.push((
                format!("SWAG ({})", args.swag_prefixes.join(",")),
                Predictive::swag(sub, post, scale, args.samples, sample_seed)?
                    .with_refresh(refresh.clone()),
            ));
        }
        methods.push((
            format!("MultiSWAG ({} runs)", args.multi_runs),
            Predictive::multi_swag(&main.params, &multi, scale, args.samples, sample_seed)?
                .with_refresh(refresh.clone()),
        ));
        if seed == args.first_seed {
            memory.push(("SWAG (all parameters)".into(), main.full.state_bytes()));
            if let Some((_, post)) = &main.partial {
                memory.push((
                    format!("SWAG ({})", args.swag_prefixes.join(",")),
                    post.state_bytes(),
                ));
            }
        }
        for (name, pred) in &methods {
            let out = pred.classify(&main.net, batches(&x_test, 100)?)?;
            let probs: Vec<Vec<f32>> = out.probs.to_dtype(DType::F32)?.to_vec2()?;
            let mut offset = 0;
            for (k, set) in sets.iter().enumerate() {
                let n = set.images.count;
                let p: Vec<f32> = probs[offset..offset + n]
                    .iter()
                    .flatten()
                    .copied()
                    .collect();
                offset += n;
                let eval = evaluate_classification(&p, CLASSES, &labels[k], &opts)?;
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
                    reports[k] = b.classification_method(name, &p, CLASSES, &labels[k])?;
                }
            }
        }
        timing.bma = t.elapsed().as_secs_f64();
        timings.push(timing);
    }
    // Reports last, each directory atomically: an error above leaves no half-written output.
    let mut report_dirs = Vec::new();
    for (set, report) in sets.iter().zip(&reports) {
        let slug: String = set
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = args.out.join(slug);
        report.write(&dir)?;
        report_dirs.push(dir);
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    print_table(&rows, &sets, args.seeds);
    println!("\nwall time per seed (s): training | SWAG collection | BMA with BN refresh | total");
    for (seed, t) in (args.first_seed..).zip(&timings) {
        println!(
            "seed {seed}: {:.1} | {:.2} | {:.1} | {:.1}   ({} training runs)",
            t.train,
            t.collect,
            t.bma,
            t.train + t.collect + t.bma,
            args.multi_runs
        );
    }
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

/// Keeps freed memory in the process (glibc only). candle's CPU convolutions allocate and free
/// their im2col buffers (megabytes each) at every forward and backward pass; with glibc's
/// defaults each buffer goes back to the kernel when freed and is faulted in again page by
/// page on the next pass, which cost half of this example's wall time in kernel page faults.
/// The same settings can be given to any program from outside, without code:
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3.
    for (param, value) in [(-3, 32 << 20), (-1, 1 << 30), (-2, 64 << 20)] {
        // SAFETY: mallopt only changes allocator settings; it is called before any other
        // thread exists, and a value it refuses (return 0) leaves the default in place.
        unsafe {
            mallopt(param, value);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() {
    keep_freed_memory();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
