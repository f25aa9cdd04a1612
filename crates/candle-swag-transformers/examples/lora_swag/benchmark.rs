//! The SWAG-LoRA benchmark: all-MiniLM-L6-v2 fine-tuned with LoRA on real, human-rated text,
//! and every method of the comparison scored in and out of distribution.
//!
//! ```text
//! cargo run --release --example lora_swag [-- --quick] [--json]
//!     [--seeds N] [--runs R] [--test FILE.csv]... [--ood FILE.txt]... [--out DIR]
//! ```
//!
//! - **Model**: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), fetched by
//!   `scripts/fetch_minilm.sh` into `target/minilm` on first use (or `--model-dir DIR`).
//! - **Data**: the sentence-level sentiment ratings of Hutto and Gilbert (2014), at least 20
//!   human raters a sentence, from the PyPI package `vaderSentiment` 3.3.2, fetched by
//!   `scripts/fetch_sentiment_text.sh` into `target/sentiment-text` (or `--data-dir DIR`):
//!   Rotten Tomatoes snippets are the in-distribution set (train / validation / test, one
//!   fixed split for every seed), Amazon product-review sentences the shifted set, and New
//!   York Times editorial sentences the raters found neutral the out-of-distribution set.
//!   Labels: `negative` / `positive` (see the script). Each set is a fixed random subset of
//!   its file, of the sizes printed at the start.
//! - **Methods** (one seed = `--runs` LoRA runs, R = 3 by default): MAP-LoRA (run 0 at its
//!   best validation checkpoint), MAP-LoRA + temperature scaling (fitted on the validation
//!   split), last-layer SWAG on cached trunk features (trunk at run 0's MAP), SWAG-diagonal-LoRA
//!   and SWAG-LoRA (run 0), MultiSWAG-LoRA (the R runs' SWAG samples pooled: S per run), and
//!   the LoRA ensemble (the R runs' MAP models).
//! - **Recipe**: LoRA r = 8, alpha = 16, dropout 0.1 on query and value of every layer, plus a
//!   new classifier head; AdamW (weight decay 0.01), batch 32, a linear warm-up over 6% of the
//!   fine-tuning epochs (`schedule::LinearWarmup`) into a cosine anneal from `--lr` to
//!   `--swa-lr` (`schedule::SwaLr`) over the fine-tuning epochs; after each fine-tuning epoch
//!   the validation NLL, and the best epoch's weights are MAP-LoRA; from there SWA epochs at
//!   `--swa-lr` collect `--snapshots` SWAG snapshots per epoch (rank K = every snapshot, at
//!   most 10). The sample scale of SWAG and of SWAG-diagonal is tuned on the validation split
//!   (`candle_swag::tune`, `--tune-samples` samples a grid point); MultiSWAG uses SWAG's scale.
//!   BMA: `--samples` samples (S = 10).
//! - **Metrics**, per method and set: accuracy, NLL, ECE (15 equal-width bins), Brier; on each
//!   OOD set the AUROC against the in-distribution test set, by mutual information (BMA
//!   methods), by predictive entropy, and for MAP by its maximum probability. Mean ± standard
//!   error over seeds; `--json` prints one line per seed, method and set (keys `seed`,
//!   `method`, `set`, `acc`, `nll`, `ece`, `brier`, `auroc`, `auroc_entropy`), then the means.
//!   The calibration reports (HTML, reliability diagrams) of the first seed go to `--out`.
//!
//! **Reproducible**: a seed fixes the LoRA initialisation, the batch order, the dropout masks
//! (`BertOptions::dropout_seed`, seed × 1000 + run) and the SWAG samples, so two runs of one
//! seed print the same rows on one machine and thread count (checked: two `--quick --json`
//! runs, identical output); another thread count may order floating-point sums differently.
//!
//! `--quick` runs the same pipeline on small subsets (CI's check); where the model or the text
//! cannot be fetched, it says so and runs the smoke pipeline on a tiny random model instead.
//!
//! `--summarise FILE.json` (repeatable) trains nothing: it reads the per-seed rows that
//! earlier `--json` runs printed (the mean lines are skipped) and prints the table over all
//! their seeds, so that seeds run apart (`--first-seed 1 --seeds 2`) make one table. A seed,
//! method and set found twice is an error naming both places.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::Optimizer;
use candle_swag::metrics::ood::ood_metrics_in_out;
use candle_swag::metrics::recalibration::{apply_temperature, fit_temperature, softmax_rows};
use candle_swag::metrics::uncertainty::{decompose_uncertainty, UncertaintyDecomposition};
use candle_swag::metrics::{classification_metrics, ClassificationConfig};
use candle_swag::predictive::BmaParams;
use candle_swag::schedule::{apply_lr, AnnealStrategy, LinearWarmup, SwaLr};
use candle_swag::tune::tune_classification;
use candle_swag::{
    Error, ParamSet, Predictive, Result, SampleParams, SgdMomentum, SgdParams, SwagParams,
    SwagPosterior,
};
use candle_swag_report::report::ReportBuilder;
use candle_swag_transformers::features::{cache_features, cached};
use candle_swag_transformers::text::read_text_lines;
use candle_swag_transformers::tokenize::TOKENIZER_FILE;
use candle_swag_transformers::{
    arch, BaseModel, BertClassifier, BertOptions, LabelledText, Lora, LoraParams, TextTokenizer,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The benchmark's options (see the module docs).
struct BenchArgs {
    model_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    tests: Vec<PathBuf>,
    oods: Vec<PathBuf>,
    out: PathBuf,
    quick: bool,
    json: bool,
    seeds: usize,
    first_seed: u64,
    runs: usize,
    n_train: usize,
    n_val: usize,
    n_eval: usize,
    map_epochs: usize,
    swa_epochs: usize,
    snapshots: usize,
    samples: usize,
    tune_samples: usize,
    batch: usize,
    lr: f64,
    swa_lr: f64,
    summarise: Vec<PathBuf>,
}

impl BenchArgs {
    fn defaults(quick: bool) -> Self {
        let (n_train, n_val, n_eval) = if quick {
            (128, 48, 48)
        } else {
            (1000, 200, 300)
        };
        Self {
            model_dir: None,
            data_dir: None,
            tests: Vec::new(),
            oods: Vec::new(),
            out: PathBuf::from("target/lora_swag_bench"),
            quick,
            json: false,
            seeds: if quick { 1 } else { 3 },
            first_seed: 0,
            runs: if quick { 2 } else { 3 },
            n_train,
            n_val,
            n_eval,
            map_epochs: if quick { 1 } else { 2 },
            swa_epochs: if quick { 1 } else { 2 },
            snapshots: if quick { 3 } else { 5 },
            samples: if quick { 3 } else { 10 },
            tune_samples: if quick { 2 } else { 5 },
            batch: 32,
            lr: 1e-3,
            swa_lr: 5e-4,
            summarise: Vec::new(),
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| Error::invalid(name, format!("expects a number, got `{v}`")))
}

fn parse_args() -> Result<BenchArgs> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut args = BenchArgs::defaults(raw.iter().any(|a| a == "--quick"));
    let mut it = raw.into_iter();
    while let Some(a) = it.next() {
        let name = a.trim_start_matches("--").to_string();
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::invalid(&name, "expects a value"))
        };
        match a.as_str() {
            "--quick" => {}
            "--json" => args.json = true,
            "--model-dir" => args.model_dir = Some(value()?.into()),
            "--data-dir" => args.data_dir = Some(value()?.into()),
            "--test" => args.tests.push(value()?.into()),
            "--ood" => args.oods.push(value()?.into()),
            "--out" => args.out = value()?.into(),
            "--seeds" => args.seeds = number(&name, &value()?)?,
            "--first-seed" => args.first_seed = number(&name, &value()?)?,
            "--runs" => args.runs = number(&name, &value()?)?,
            "--train" => args.n_train = number(&name, &value()?)?,
            "--val" => args.n_val = number(&name, &value()?)?,
            "--eval" => args.n_eval = number(&name, &value()?)?,
            "--map-epochs" => args.map_epochs = number(&name, &value()?)?,
            "--swa-epochs" => args.swa_epochs = number(&name, &value()?)?,
            "--snapshots" => args.snapshots = number(&name, &value()?)?,
            "--samples" => args.samples = number(&name, &value()?)?,
            "--tune-samples" => args.tune_samples = number(&name, &value()?)?,
            "--batch" => args.batch = number(&name, &value()?)?,
            "--lr" => args.lr = number(&name, &value()?)?,
            "--swa-lr" => args.swa_lr = number(&name, &value()?)?,
            "--summarise" => args.summarise.push(value()?.into()),
            other => {
                return Err(Error::invalid(
                    other,
                    "unknown option (the benchmark's options are in the example's docs; \
                     --smoke and --bench-step select the other modes)",
                ))
            }
        }
    }
    for (name, v, min) in [
        ("seeds", args.seeds, 1),
        ("runs", args.runs, 2),
        ("train", args.n_train, 2),
        ("val", args.n_val, 2),
        ("eval", args.n_eval, 2),
        ("map-epochs", args.map_epochs, 1),
        ("swa-epochs", args.swa_epochs, 1),
        ("samples", args.samples, 1),
        ("tune-samples", args.tune_samples, 1),
        ("batch", args.batch, 1),
    ] {
        if v < min {
            return Err(Error::invalid(
                name,
                format!("must be at least {min}, got {v}"),
            ));
        }
    }
    if args.snapshots * args.swa_epochs < 2 {
        return Err(Error::invalid(
            "snapshots",
            "SWAG needs at least 2 snapshots (--snapshots per epoch times --swa-epochs)",
        ));
    }
    for (name, v) in [("lr", args.lr), ("swa-lr", args.swa_lr)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::invalid(name, format!("must be > 0, got {v}")));
        }
    }
    Ok(args)
}

/// Runs `scripts/NAME DIR` (a fetch script of the repository) when `dir` lacks `probe`.
fn fetch_if_missing(script: &str, dir: &Path, probe: &str) -> Result<()> {
    if dir.join(probe).is_file() {
        return Ok(());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    eprintln!("fetching: {} {}", path.display(), dir.display());
    let status = std::process::Command::new("bash")
        .arg(&path)
        .arg(dir)
        .status()
        .map_err(|e| Error::invalid(script, format!("could not run {}: {e}", path.display())))?;
    if !status.success() || !dir.join(probe).is_file() {
        return Err(Error::invalid(
            script,
            format!("{} failed ({status}); nothing was fetched", path.display()),
        ));
    }
    Ok(())
}

/// One scored set, tokenized in batches of similar length (its rows reordered by length, the
/// labels with them): padding costs little, and order does not change a metric.
struct EvalSet {
    name: String,
    batches: Vec<Tensor>,
    labels: Option<Vec<u32>>,
}

impl EvalSet {
    fn new(
        name: &str,
        texts: &[String],
        labels: Option<&[u32]>,
        tok: &TextTokenizer,
        dev: &Device,
    ) -> Result<Self> {
        let order = by_length(texts, tok)?;
        let mut batches = Vec::new();
        for chunk in order.chunks(64) {
            let refs: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            batches.push(tok.encode_batch(&refs, dev)?.packed()?);
        }
        Ok(Self {
            name: name.to_string(),
            batches,
            labels: labels.map(|l| order.iter().map(|&i| l[i]).collect()),
        })
    }

    fn inputs(&self) -> impl Iterator<Item = candle_core::Result<Tensor>> + Clone + '_ {
        cached(&self.batches)
    }

    fn rows(&self) -> Result<usize> {
        let mut n = 0;
        for b in &self.batches {
            n += b.dim(0)?;
        }
        Ok(n)
    }
}

/// Row indices sorted by token count (stable: ties keep file order).
fn by_length(texts: &[String], tok: &TextTokenizer) -> Result<Vec<usize>> {
    let mut lens = Vec::with_capacity(texts.len());
    for t in texts {
        lens.push(tok.encode_ids(t)?.len());
    }
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    Ok(order)
}

/// `n` rows of `table` at random (fixed seed), or all of them when it has fewer.
fn subset(table: &LabelledText, n: usize, seed: u64) -> (Vec<String>, Vec<u32>) {
    let mut idx: Vec<usize> = (0..table.len()).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    idx.truncate(n);
    (
        idx.iter().map(|&i| table.texts[i].clone()).collect(),
        idx.iter().map(|&i| table.labels[i]).collect(),
    )
}

/// The in-distribution training rows, the validation split, and every scored set.
struct Data {
    train_texts: Vec<String>,
    train_labels: Vec<u32>,
    classes: Vec<String>,
    val: EvalSet,
    labelled: Vec<EvalSet>,
    ood: Vec<EvalSet>,
}

fn load_data(args: &BenchArgs, dir: &Path, tok: &TextTokenizer, dev: &Device) -> Result<Data> {
    let movies = LabelledText::read_csv(dir.join("movie_reviews.csv"))?;
    let need = args.n_train + args.n_val + args.n_eval;
    if movies.len() < need {
        return Err(Error::bad_file(
            dir.join("movie_reviews.csv"),
            format!(
                "{} rows, fewer than --train + --val + --eval = {need}",
                movies.len()
            ),
        ));
    }
    // One fixed split for every seed: the seeds vary the training, not the data.
    let (texts, labels) = subset(&movies, need, 1234);
    let (a, b) = (args.n_train, args.n_train + args.n_val);
    let classes = movies.classes.clone();
    let val = EvalSet::new("validation", &texts[a..b], Some(&labels[a..b]), tok, dev)?;
    let mut labelled = vec![EvalSet::new(
        "movie reviews (in-distribution)",
        &texts[b..],
        Some(&labels[b..]),
        tok,
        dev,
    )?];
    let products = LabelledText::read_csv_with_classes(dir.join("product_reviews.csv"), &classes)?;
    let (t, l) = subset(&products, args.n_eval, 99);
    labelled.push(EvalSet::new(
        "product reviews (shifted)",
        &t,
        Some(&l),
        tok,
        dev,
    )?);
    for path in &args.tests {
        let table = LabelledText::read_csv_with_classes(path, &classes)?;
        labelled.push(EvalSet::new(
            &path.display().to_string(),
            &table.texts,
            Some(&table.labels),
            tok,
            dev,
        )?);
    }
    let mut news = read_text_lines(dir.join("news_neutral.txt"))?;
    news.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    news.truncate(args.n_eval);
    let mut ood = vec![EvalSet::new("neutral news (OOD)", &news, None, tok, dev)?];
    for path in &args.oods {
        let lines = read_text_lines(path)?;
        ood.push(EvalSet::new(
            &path.display().to_string(),
            &lines,
            None,
            tok,
            dev,
        )?);
    }
    Ok(Data {
        train_texts: texts[..a].to_vec(),
        train_labels: labels[..a].to_vec(),
        classes,
        val,
        labelled,
        ood,
    })
}

/// LoRA r = 8, alpha 16 on query and value, the head new; adapters seeded by `seed`.
fn lora(base: &BaseModel, seed: u64, dev: &Device) -> Result<Lora> {
    let targets = [
        "*.attention.self.query.weight",
        "*.attention.self.value.weight",
    ];
    Lora::new(
        base,
        &LoraParams {
            new_weights: vec![arch::HEAD.into()],
            alpha: 16.0,
            seed,
            ..LoraParams::new(&targets, 8)
        }
        .check()?,
        dev,
    )
}

/// The recipe's model options; `dropout_seed` keys the run's dropout masks.
fn bert_options(dropout_seed: u64) -> BertOptions {
    BertOptions {
        lora_dropout: 0.1,
        dropout_seed,
        ..Default::default()
    }
}

/// What one LoRA run leaves: its MAP weights and its SWAG posterior (flat, in the layout
/// every run shares).
struct RunOut {
    map: Tensor,
    posterior: SwagPosterior,
}

/// Mean NLL of `model` on the validation split at its current weights.
fn val_nll(model: &impl ModuleT, val: &EvalSet, classes: usize) -> Result<f64> {
    let logits = logits_of(model, val)?;
    let probs = softmax_rows(&logits, classes)?;
    let labels = val.labels.as_deref().unwrap_or_default();
    Ok(classification_metrics(&probs, classes, labels, &ClassificationConfig::default())?.nll)
}

/// The model's logits on every row of `set`, row-major, in the set's order.
fn logits_of(model: &impl ModuleT, set: &EvalSet) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for b in &set.batches {
        out.extend(model.forward_t(b, false)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// One LoRA run (see the module docs' recipe).
fn train_run(
    base: &BaseModel,
    data: &Data,
    tok: &TextTokenizer,
    args: &BenchArgs,
    seed: u64,
    run: usize,
    dev: &Device,
) -> Result<RunOut> {
    let run_seed = seed * 1000 + run as u64;
    let lora = lora(base, run_seed, dev)?;
    let model = BertClassifier::new(&lora, data.classes.len(), &bert_options(run_seed))?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: args.lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let epochs = args.map_epochs;
    let schedule = LinearWarmup::new(
        SwaLr::new(args.lr, args.swa_lr, epochs, AnnealStrategy::Cos)?,
        0.06 * epochs as f64,
    )?;
    let total = args.snapshots * args.swa_epochs;
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: total.min(10),
            ..Default::default()
        }
        .check()?,
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(run_seed);
    let n = data.train_texts.len();
    let steps_per_epoch = n.div_ceil(args.batch);
    let mut best: Option<(f64, Tensor, usize)> = None;
    let t = Instant::now();
    for epoch in 0..epochs + args.swa_epochs {
        if epoch == epochs {
            // SWA from the best validation checkpoint: MAP-LoRA.
            if let Some((_, w, _)) = &best {
                params.write_flat(w)?;
            }
        }
        let batches = epoch_batches(args.batch, &data.train_texts, &mut rng);
        let collect_every = (steps_per_epoch / args.snapshots).max(1);
        let mut collected = 0;
        for (step, idx) in batches.iter().enumerate() {
            let e = epoch as f64 + step as f64 / steps_per_epoch as f64;
            apply_lr(&mut opt, &schedule, e);
            let refs: Vec<&str> = idx.iter().map(|&i| data.train_texts[i].as_str()).collect();
            let x = tok.encode_batch(&refs, dev)?.packed()?;
            let y: Vec<u32> = idx.iter().map(|&i| data.train_labels[i]).collect();
            let y = Tensor::from_vec(y, idx.len(), dev)?;
            let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &y)?;
            opt.backward_step(&loss)?;
            if epoch >= epochs && (step + 1) % collect_every == 0 && collected < args.snapshots {
                posterior.collect(&params)?;
                collected += 1;
            }
        }
        if epoch < epochs {
            let nll = val_nll(&model, &data.val, data.classes.len())?;
            if best.as_ref().is_none_or(|(b, _, _)| nll < *b) {
                best = Some((nll, params.flatten()?, epoch));
            }
            eprintln!(
                "seed {seed} run {run}: epoch {epoch} validation NLL {nll:.4} ({:.0} s)",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let (_, map, best_epoch) = best.ok_or_else(|| Error::invalid("map-epochs", "no epoch"))?;
    eprintln!(
        "seed {seed} run {run}: MAP from epoch {best_epoch}, {} SWAG snapshots; {:.0} s",
        posterior.n_collected(),
        t.elapsed().as_secs_f64()
    );
    Ok(RunOut { map, posterior })
}

/// One epoch's mini-batches (row indices): shuffled, then sorted by text length within
/// groups of 16 batches so that a batch pads little, and the batches shuffled again.
fn epoch_batches(batch: usize, texts: &[String], rng: &mut rand::rngs::StdRng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..texts.len()).collect();
    idx.shuffle(rng);
    let mut out = Vec::new();
    for group in idx.chunks_mut(batch * 16) {
        group.sort_by_key(|&i| texts[i].len());
        out.extend(group.chunks(batch).map(<[usize]>::to_vec));
    }
    out.shuffle(rng);
    out
}

/// Logits per weight sample `[S][rows · C]` of a prediction over `inputs`.
fn sample_logits(
    pred: &Predictive,
    model: &impl ModuleT,
    inputs: impl Iterator<Item = candle_core::Result<Tensor>> + Clone,
) -> Result<Vec<Vec<f32>>> {
    let mut out: Vec<Vec<f32>> = Vec::new();
    pred.for_each_output(model, inputs, |s, _, logits| {
        if s == out.len() {
            out.push(Vec::new());
        }
        out[s].extend(logits.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })?;
    Ok(out)
}

/// The BMA of sample logits at `temperature` (1: none): probabilities averaged over
/// samples, and the entropies.
fn bma_of(
    samples: &[Vec<f32>],
    classes: usize,
    temperature: f64,
) -> Result<UncertaintyDecomposition> {
    let mut probs = Vec::new();
    for s in samples {
        probs.extend(apply_temperature(s, classes, temperature)?);
    }
    decompose_uncertainty(&probs, samples.len(), classes)
}

/// A method's predictions on every set: `[set][S][rows · C]` logits (S = 1 for a point).
type SetLogits = Vec<Vec<Vec<f32>>>;

/// One row of the results.
#[derive(Clone)]
struct Row {
    seed: u64,
    method: String,
    set: String,
    acc: f64,
    nll: f64,
    ece: f64,
    brier: f64,
    auroc: f64,
    auroc_entropy: f64,
}

/// The methods that score with one point estimate (their OOD score is 1 − max probability;
/// every other method's is the mutual information of its samples).
const POINT_METHODS: [&str; 2] = ["MAP-LoRA", "MAP-LoRA + temperature"];

/// One method of one seed: its BMA on each scored set, computed once.
struct Method {
    name: &'static str,
    /// One per set: labelled sets first, then the OOD sets.
    bmas: Vec<UncertaintyDecomposition>,
    /// Whether the method is a point prediction (its OOD score is the maximum probability).
    point: bool,
}

impl Method {
    /// The name of its OOD score (what its `auroc` is by).
    fn ood_score(point: bool) -> &'static str {
        if point {
            "max prob"
        } else {
            "mutual info"
        }
    }
}

fn scale_bma(samples: usize, scale: f64, diag_only: bool, seed: u64) -> Result<BmaParams> {
    Ok(BmaParams {
        sample: SampleParams {
            scale,
            diag_only,
            ..Default::default()
        },
        samples,
        seed,
    })
}

/// The SWAG sample scale with the lowest validation NLL (`candle_swag::tune`'s grid).
#[allow(clippy::too_many_arguments)]
fn tuned_scale<'a>(
    params: &ParamSet,
    posterior: &SwagPosterior,
    model: &impl ModuleT,
    inputs: impl Iterator<Item = candle_core::Result<Tensor>> + Clone + 'a,
    labels: &[u32],
    args: &BenchArgs,
    diag_only: bool,
    seed: u64,
) -> Result<f64> {
    let tuned = tune_classification(
        |scale| {
            if scale == 0.0 {
                return Predictive::swa(params, posterior);
            }
            Predictive::swag(
                params,
                posterior,
                scale_bma(args.tune_samples, scale, diag_only, seed)?.check()?,
            )
        },
        model,
        inputs,
        labels,
    )?;
    Ok(tuned.best.scale)
}

/// Everything one seed computes: the runs, then every method on every set.
fn run_seed(
    base: &BaseModel,
    data: &Data,
    tok: &TextTokenizer,
    args: &BenchArgs,
    seed: u64,
    dev: &Device,
) -> Result<Vec<Method>> {
    let mut runs = Vec::with_capacity(args.runs);
    for r in 0..args.runs {
        runs.push(train_run(base, data, tok, args, seed, r, dev)?);
    }
    let t = Instant::now();
    // One model for every prediction: the runs' weights share its layout.
    let lora0 = lora(base, seed * 1000, dev)?;
    // Predictions run in evaluation mode: no dropout, so the seed plays no part.
    let model = BertClassifier::new(&lora0, data.classes.len(), &bert_options(0))?;
    let params = ParamSet::from_varmap(lora0.varmap())?;
    let sets: Vec<&EvalSet> = data.labelled.iter().chain(&data.ood).collect();
    let c = data.classes.len();

    // Points: MAP of each run (run 0 is MAP-LoRA; all of them the ensemble).
    let mut maps: Vec<SetLogits> = Vec::new();
    for run in &runs {
        let p = Predictive::point(&params, &run.map)?;
        let mut per_set = Vec::new();
        for s in &sets {
            per_set.push(sample_logits(&p, &model, s.inputs())?);
        }
        maps.push(per_set);
    }
    params.write_flat(&runs[0].map)?;
    let temp = fit_temperature(
        &logits_of(&model, &data.val)?,
        c,
        data.val.labels.as_deref().unwrap_or_default(),
    )?;
    let last_layer = last_layer_swag(&model, &params, data, &sets, tok, args, seed)?;
    let val_labels = data.val.labels.as_deref().unwrap_or_default();
    let bma_seed = |r: usize| seed * 1000 + 500 + r as u64;
    // SWAG's scale, then SWAG-diagonal's.
    let mut scales = [0.0; 2];
    for (scale, diag_only) in scales.iter_mut().zip([false, true]) {
        *scale = tuned_scale(
            &params,
            &runs[0].posterior,
            &model,
            data.val.inputs(),
            val_labels,
            args,
            diag_only,
            bma_seed(0),
        )?;
    }
    let [scale, scale_diag] = scales;
    eprintln!(
        "seed {seed}: temperature {:.3}, SWAG scale {scale}, SWAG-diagonal scale {scale_diag} \
         (validation)",
        temp.temperature
    );
    let mut swag: Vec<SetLogits> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let p = Predictive::swag(
            &params,
            &run.posterior,
            scale_bma(args.samples, scale, false, bma_seed(r))?.check()?,
        )?;
        swag.push(
            sets.iter()
                .map(|s| sample_logits(&p, &model, s.inputs()))
                .collect::<Result<_>>()?,
        );
    }
    let p = Predictive::swag(
        &params,
        &runs[0].posterior,
        scale_bma(args.samples, scale_diag, true, bma_seed(0))?.check()?,
    )?;
    let diag: SetLogits = sets
        .iter()
        .map(|s| sample_logits(&p, &model, s.inputs()))
        .collect::<Result<_>>()?;
    eprintln!(
        "seed {seed}: predictions in {:.0} s",
        t.elapsed().as_secs_f64()
    );

    // Pools samples over runs, set by set.
    let pooled = |of: &[SetLogits]| -> SetLogits {
        (0..sets.len())
            .map(|k| of.iter().flat_map(|r| r[k].iter().cloned()).collect())
            .collect()
    };
    let method = |name, logits: &SetLogits, temperature| -> Result<Method> {
        Ok(Method {
            name,
            bmas: logits
                .iter()
                .map(|set| bma_of(set, c, temperature))
                .collect::<Result<_>>()?,
            point: POINT_METHODS.contains(&name),
        })
    };
    Ok(vec![
        method(POINT_METHODS[0], &maps[0], 1.0)?,
        method(POINT_METHODS[1], &maps[0], temp.temperature)?,
        method("LoRA ensemble", &pooled(&maps), 1.0)?,
        method("last-layer SWAG", &last_layer, 1.0)?,
        method("SWAG-diagonal-LoRA", &diag, 1.0)?,
        method("SWAG-LoRA", &swag[0], 1.0)?,
        method("MultiSWAG-LoRA", &pooled(&swag), 1.0)?,
    ])
}

/// Last-layer SWAG with the trunk at the MAP adapters (in `params` now): features cached
/// once, the head trained on them from its MAP weights with SGD (moments collected each epoch
/// of the second half), BMA over `--samples` head samples at the validation-tuned scale.
fn last_layer_swag(
    model: &BertClassifier,
    params: &ParamSet,
    data: &Data,
    sets: &[&EvalSet],
    tok: &TextTokenizer,
    args: &BenchArgs,
    seed: u64,
) -> Result<SetLogits> {
    let dev = model.bert().device().clone();
    let trunk = candle_nn::func_t(|xs: &Tensor, _| model.features(xs));
    let head = candle_nn::func_t(|f: &Tensor, train| model.head_forward(f, train));
    let head_params = params.select_prefix(&[arch::HEAD])?;
    let keep = params.flatten()?;
    let train_set = EvalSet::new(
        "train",
        &data.train_texts,
        Some(&data.train_labels),
        tok,
        &dev,
    )?;
    let feats = cache_features(&trunk, train_set.inputs())?;
    let labels = train_set.labels.as_deref().unwrap_or_default();
    let mut sgd = SgdMomentum::new(
        head_params.vars().to_vec(),
        SgdParams {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
        }
        .check()?,
    )?;
    let mut posterior = SwagPosterior::for_params(
        &head_params,
        SwagParams {
            rank: 10,
            ..Default::default()
        }
        .check()?,
    )?;
    let epochs = 20;
    for epoch in 0..epochs {
        let mut row = 0;
        for f in &feats {
            let n = f.dim(0)?;
            let y = Tensor::from_vec(labels[row..row + n].to_vec(), n, &dev)?;
            row += n;
            let loss = candle_nn::loss::cross_entropy(&head.forward_t(f, true)?, &y)?;
            sgd.backward_step(&loss)?;
        }
        if epoch >= epochs / 2 {
            posterior.collect(&head_params)?;
        }
    }
    let val = cache_features(&trunk, data.val.inputs())?;
    let val_labels = data.val.labels.as_deref().unwrap_or_default();
    let scale = tuned_scale(
        &head_params,
        &posterior,
        &head,
        cached(&val),
        val_labels,
        args,
        false,
        seed * 1000 + 900,
    )?;
    eprintln!("seed {seed}: last-layer SWAG scale {scale} (validation)");
    let p = Predictive::swag(
        &head_params,
        &posterior,
        scale_bma(args.samples, scale, false, seed * 1000 + 900)?.check()?,
    )?;
    let mut out = Vec::new();
    for s in sets {
        let f = cache_features(&trunk, s.inputs())?;
        out.push(sample_logits(&p, &head, cached(&f))?);
    }
    params.write_flat(&keep)?;
    Ok(out)
}

/// The rows of one seed: every method on every labelled set, and its AUROC on every OOD set
/// against the in-distribution test set (the first labelled set).
fn score(methods: &[Method], data: &Data, seed: u64) -> Result<Vec<Row>> {
    let c = data.classes.len();
    let n_lab = data.labelled.len();
    let mut rows = Vec::new();
    for m in methods {
        let in_dist = &m.bmas[0];
        for (u, set) in m.bmas.iter().zip(&data.labelled) {
            let labels = set.labels.as_deref().unwrap_or_default();
            let metrics =
                classification_metrics(&u.mean_probs, c, labels, &ClassificationConfig::default())?;
            rows.push(Row {
                seed,
                method: m.name.to_string(),
                set: set.name.clone(),
                acc: metrics.accuracy,
                nll: metrics.nll,
                ece: metrics.ece,
                brier: metrics.brier,
                auroc: f64::NAN,
                auroc_entropy: f64::NAN,
            });
        }
        for (u, set) in m.bmas[n_lab..].iter().zip(&data.ood) {
            // A point prediction has no mutual information: its score is 1 - max probability.
            let score_of = |d: &UncertaintyDecomposition| -> Vec<f64> {
                if m.point {
                    d.mean_probs
                        .chunks(c)
                        .map(|p| 1.0 - p.iter().cloned().fold(0.0, f64::max))
                        .collect()
                } else {
                    d.mutual_information.clone()
                }
            };
            let auroc = ood_metrics_in_out(&score_of(in_dist), &score_of(u))?.auroc;
            let auroc_entropy =
                ood_metrics_in_out(&in_dist.predictive_entropy, &u.predictive_entropy)?.auroc;
            rows.push(Row {
                seed,
                method: m.name.to_string(),
                set: set.name.clone(),
                acc: f64::NAN,
                nll: f64::NAN,
                ece: f64::NAN,
                brier: f64::NAN,
                auroc,
                auroc_entropy,
            });
        }
    }
    Ok(rows)
}

/// `null` for a NaN (a metric that does not apply), the number otherwise.
fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn row_json(r: &Row, seed: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"seed": seed, "method": r.method, "set": r.set, "acc": json_num(r.acc),
        "nll": json_num(r.nll), "ece": json_num(r.ece), "brier": json_num(r.brier),
        "auroc": json_num(r.auroc), "auroc_entropy": json_num(r.auroc_entropy)})
}

/// Mean and standard error (sample standard deviation / sqrt(n); 0 for one value).
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The table over seeds (mean ± s.e.), and with `--json` one `"seed": "mean"` line per row.
fn summarise(rows: &[Row], methods: &[(&str, bool)], sets: &[String], json: bool, seeds: usize) {
    println!("\nSWAG-LoRA benchmark, mean ± s.e. over {seeds} seed(s):");
    for set in sets {
        println!("\n{set}");
        for &(m, point) in methods {
            let these: Vec<&Row> = rows
                .iter()
                .filter(|r| r.method == m && &r.set == set)
                .collect();
            let col = |f: fn(&Row) -> f64| mean_se(&these.iter().map(|r| f(r)).collect::<Vec<_>>());
            let (acc, nll, ece, brier, auroc, aent) = (
                col(|r| r.acc),
                col(|r| r.nll),
                col(|r| r.ece),
                col(|r| r.brier),
                col(|r| r.auroc),
                col(|r| r.auroc_entropy),
            );
            if acc.0.is_finite() {
                println!(
                    "  {m:<24} acc {:.3} ± {:.3}  nll {:.4} ± {:.4}  ece {:.4} ± {:.4}  brier \
                     {:.4} ± {:.4}",
                    acc.0, acc.1, nll.0, nll.1, ece.0, ece.1, brier.0, brier.1
                );
            } else {
                let by = Method::ood_score(point);
                println!(
                    "  {m:<24} AUROC ({by}) {:.4} ± {:.4}  AUROC (entropy) {:.4} ± {:.4}",
                    auroc.0, auroc.1, aent.0, aent.1
                );
            }
            if json {
                let mean = Row {
                    seed: 0,
                    method: m.to_string(),
                    set: set.clone(),
                    acc: acc.0,
                    nll: nll.0,
                    ece: ece.0,
                    brier: brier.0,
                    auroc: auroc.0,
                    auroc_entropy: aent.0,
                };
                println!("{}", row_json(&mean, serde_json::json!("mean")));
            }
        }
    }
}

/// The first seed's calibration reports: one per labelled set (every method, reliability
/// diagrams), the OOD detection with the in-distribution set's report.
fn write_reports(methods: &[Method], data: &Data, out: &Path) -> Result<Vec<PathBuf>> {
    let c = data.classes.len();
    let n_lab = data.labelled.len();
    let mut builders = Vec::new();
    for (k, set) in data.labelled.iter().enumerate() {
        let mut b = ReportBuilder::new(format!("SWAG-LoRA benchmark: {}", set.name));
        let labels = set.labels.as_deref().unwrap_or_default();
        for m in methods {
            let u = &m.bmas[k];
            b = b.classification_method(m.name, &u.mean_probs, c, labels)?;
            if k == 0 {
                let in_dist = u;
                for (o, ood) in m.bmas[n_lab..].iter().zip(&data.ood) {
                    b = b.ood_method(
                        &format!("{} vs {}", m.name, ood.name),
                        "predictive entropy",
                        &in_dist.predictive_entropy,
                        &o.predictive_entropy,
                    )?;
                }
            }
        }
        builders.push((set.name.clone(), b));
    }
    // Every report is built before any is written; each directory is written atomically.
    let mut dirs = Vec::new();
    for (name, b) in builders {
        let dir = out.join(candle_swag_report::report::file_safe_name(&name, "set"));
        b.write(&dir)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// `--summarise`: the per-seed rows of earlier `--json` runs, read back (see the module docs).
fn read_rows(files: &[PathBuf]) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        for (k, line) in text.lines().enumerate() {
            let at = |reason: String| Error::bad_file(file, format!("line {}: {reason}", k + 1));
            // Only JSON objects are rows; a `"seed": "mean"` line is a summary, not a row.
            if !line.trim_start().starts_with('{') {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
            if v["seed"] == "mean" {
                continue;
            }
            let seed = v["seed"]
                .as_u64()
                .ok_or_else(|| at("`seed` is not a whole number".into()))?;
            let text_of = |key: &str| {
                v[key]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| at(format!("`{key}` is not a string")))
            };
            let (method, set) = (text_of("method")?, text_of("set")?);
            // A metric that does not apply is `null`; read back as NaN, as it was computed.
            let num = |key: &str| match &v[key] {
                serde_json::Value::Null => Ok(f64::NAN),
                x => x
                    .as_f64()
                    .ok_or_else(|| at(format!("`{key}` is not a number or null"))),
            };
            let place = format!("{} line {}", file.display(), k + 1);
            if let Some(first) = seen.insert((seed, method.clone(), set.clone()), place) {
                return Err(at(format!(
                    "seed {seed}, method `{method}`, set `{set}` is already at {first}"
                )));
            }
            rows.push(Row {
                seed,
                acc: num("acc")?,
                nll: num("nll")?,
                ece: num("ece")?,
                brier: num("brier")?,
                auroc: num("auroc")?,
                auroc_entropy: num("auroc_entropy")?,
                method,
                set,
            });
        }
    }
    if rows.is_empty() {
        return Err(Error::invalid(
            "summarise",
            "the files hold no per-seed rows (write them with --json)",
        ));
    }
    Ok(rows)
}

/// Prints the table of `--summarise`'s files: methods and sets in the order first read.
fn summarise_files(args: &BenchArgs) -> Result<()> {
    let rows = read_rows(&args.summarise)?;
    let mut methods: Vec<(&str, bool)> = Vec::new();
    let mut sets: Vec<String> = Vec::new();
    let mut seeds = std::collections::BTreeSet::new();
    for r in &rows {
        if !methods.iter().any(|(m, _)| *m == r.method) {
            methods.push((&r.method, POINT_METHODS.contains(&r.method.as_str())));
        }
        if !sets.contains(&r.set) {
            sets.push(r.set.clone());
        }
        seeds.insert(r.seed);
    }
    summarise(&rows, &methods, &sets, args.json, seeds.len());
    Ok(())
}

pub fn run() -> Result<()> {
    let args = parse_args()?;
    if !args.summarise.is_empty() {
        return summarise_files(&args);
    }
    let dev = Device::Cpu;
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/minilm"));
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/sentiment-text"));
    let fetched = (|| -> Result<()> {
        if args.model_dir.is_none() {
            fetch_if_missing("fetch_minilm.sh", &model_dir, "model.safetensors")?;
        }
        if args.data_dir.is_none() {
            fetch_if_missing("fetch_sentiment_text.sh", &data_dir, "movie_reviews.csv")?;
        }
        Ok(())
    })();
    if let Err(e) = fetched {
        if args.quick {
            eprintln!(
                "quick: {e}; the real model or text could not be fetched, so the smoke \
                 pipeline runs on a tiny random BERT instead (not a result)"
            );
            return super::smoke_fallback();
        }
        return Err(e);
    }
    if !model_dir.join(TOKENIZER_FILE).is_file() {
        return Err(Error::invalid(
            "model-dir",
            format!(
                "{} has no {TOKENIZER_FILE}: the benchmark reads text with the model's \
                 tokenizer",
                model_dir.display()
            ),
        ));
    }
    let t = Instant::now();
    let base = BaseModel::load(&model_dir, &dev)?;
    let tok = TextTokenizer::from_model_dir(&model_dir, 128)?.truncating(true);
    let data = load_data(&args, &data_dir, &tok, &dev)?;
    eprintln!(
        "SWAG-LoRA benchmark: {} ({} scalars, frozen), text from {}: {} training rows, \
         validation {}, {}; {} seed(s) x {} runs, {} + {} epochs, S = {}",
        model_dir.display(),
        base.numel(),
        data_dir.display(),
        data.train_texts.len(),
        data.val.rows()?,
        data.labelled
            .iter()
            .chain(&data.ood)
            .map(|s| Ok(format!("{} {}", s.name, s.rows()?)))
            .collect::<Result<Vec<_>>>()?
            .join(", "),
        args.seeds,
        args.runs,
        args.map_epochs,
        args.swa_epochs,
        args.samples
    );
    let mut rows = Vec::new();
    let mut names: Vec<(&str, bool)> = Vec::new();
    let mut report_dirs = Vec::new();
    for seed in args.first_seed..args.first_seed + args.seeds as u64 {
        let methods = run_seed(&base, &data, &tok, &args, seed, &dev)?;
        let these = score(&methods, &data, seed)?;
        if args.json {
            for r in &these {
                println!("{}", row_json(r, serde_json::json!(r.seed)));
            }
        }
        rows.extend(these);
        if names.is_empty() {
            names = methods.iter().map(|m| (m.name, m.point)).collect();
            report_dirs = write_reports(&methods, &data, &args.out)?;
        }
        eprintln!(
            "seed {seed} done: {:.0} s in all",
            t.elapsed().as_secs_f64()
        );
    }
    let sets: Vec<String> = data
        .labelled
        .iter()
        .chain(&data.ood)
        .map(|s| s.name.clone())
        .collect();
    summarise(&rows, &names, &sets, args.json, args.seeds);
    for d in report_dirs {
        eprintln!("report: {}", d.join("report.html").display());
    }
    eprintln!("benchmark: {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}
