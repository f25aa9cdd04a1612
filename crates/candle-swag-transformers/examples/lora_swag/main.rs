//! LoRA fine-tuning, SWAG over the adapters and BMA, on the crate's trainable families.
//!
//! ```text
//! cargo run --release --example lora_swag -- \
//!     --arch bert|llama|vit [--model-dir DIR] [--text FILE.csv] --smoke [--json] \
//!     [--steps N] [--samples S] [--lr LR]
//! cargo run --release --example lora_swag -- \
//!     --arch bert --model-dir target/minilm --bench-step [--repeats N] [--json]
//! cargo run --release --example lora_swag -- --bench-scale [--layers N] [--repeats N] [--json]
//! ```
//!
//! `--smoke` without `--model-dir` writes a tiny random-weight model of the architecture in
//! Hugging Face layout to a temporary directory and runs the whole pipeline on a deterministic
//! toy task: a SMOKE TEST of the plumbing, not a result. With `--model-dir` holding a
//! `tokenizer.json`, BERT reads real text: the rows of `--text FILE.csv` (columns `text` and
//! `label`; every fifth row is held out as the test set), else a toy sentiment task.
//!
//! Every architecture trains its trainable family ([`BertClassifier`], [`LlamaModel`],
//! [`VitClassifier`]: gradients reach every adapter, which is checked after the first step, or
//! the run stops with an error naming the tensors without one) and SWAG samples are put into
//! the model by writing its `Var`s, with nothing rebuilt (timed against one forward pass).
//! candle-transformers' models (`LoraModel`) stay the inference path. Rows (one per method):
//! MAP-LoRA (the last iterate), SWAG-LoRA (BMA over adapter samples), and for BERT/ViT
//! last-layer SWAG with cached trunk features. Llama predicts the next token at every position
//! (one class per token of the config's `vocab_size`; one pass per window). Timings go to
//! stderr.
//!
//! `--bench-step` times one LoRA training step (batch 32, 128 tokens, r = 8 on query and value,
//! AdamW) and one forward pass of the same batch on the trainable BERT, median of `--repeats`,
//! plus the cost of writing a SWAG sample into the model;
//! `scripts/torch_reference/lora_step_torch.py` times the same step in torch + peft.
//!
//! `--bench-scale` measures SWAG-LoRA on a Llama decoder of TinyLlama-1.1B's shape with random
//! bf16 weights made at run time (see `scale.rs`): trainable scalars, posterior bytes, the
//! collection's share of a training step and BMA's per-sample overhead against a forward pass.

mod benchmark;
mod scale;

use std::time::Instant;

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::Optimizer;
use candle_swag::metrics::{classification_metrics, ClassificationConfig};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::{
    ClassificationOutput, Error, ParamSet, Result, SampleParams, SgdMomentum, SgdParams,
    SwagParams, SwagPosterior,
};
use candle_swag_transformers::arch;
use candle_swag_transformers::features::{cache_features, cached};
use candle_swag_transformers::models::{LlamaModel, LlamaOptions, VitClassifier, VitOptions};
use candle_swag_transformers::tokenize::TOKENIZER_FILE;
use candle_swag_transformers::{
    params_without_gradient, tiny, Arch, BaseModel, BertClassifier, BertModel, BertOptions,
    LabelledText, Lora, LoraParams, TextTokenizer,
};
use rand::{Rng, SeedableRng};

struct Args {
    arch: Arch,
    model_dir: Option<std::path::PathBuf>,
    text: Option<std::path::PathBuf>,
    bench_step: bool,
    bench_scale: bool,
    /// Decoder layers of `--bench-scale` (TinyLlama's 22 when absent).
    layers: Option<usize>,
    json: bool,
    steps: usize,
    samples: usize,
    repeats: usize,
    lr: Option<f64>,
}

fn whole(name: &str, v: String) -> Result<usize> {
    v.parse()
        .map_err(|_| Error::invalid(name, format!("expects a whole number, got `{v}`")))
}

impl Default for Args {
    fn default() -> Self {
        Self {
            arch: Arch::Bert,
            model_dir: None,
            text: None,
            bench_step: false,
            bench_scale: false,
            layers: None,
            json: false,
            steps: 40,
            samples: 30,
            repeats: 7,
            lr: None,
        }
    }
}

fn parse_args() -> Result<Args> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| Error::invalid(name, "expects a value"))
        };
        match a.as_str() {
            "--arch" => args.arch = value("arch")?.parse()?,
            "--model-dir" => args.model_dir = Some(value("model-dir")?.into()),
            "--text" => args.text = Some(value("text")?.into()),
            // The mode's flag: the smoke pipeline is what this parser runs.
            "--smoke" => {}
            "--bench-step" => args.bench_step = true,
            "--bench-scale" => args.bench_scale = true,
            "--layers" => {
                let n = whole("layers", value("layers")?)?;
                if n == 0 {
                    return Err(Error::invalid("layers", "must be at least 1, got 0"));
                }
                args.layers = Some(n);
            }
            "--json" => args.json = true,
            "--steps" => args.steps = whole("steps", value("steps")?)?,
            "--samples" => args.samples = whole("samples", value("samples")?)?,
            "--repeats" => args.repeats = whole("repeats", value("repeats")?)?,
            "--lr" => {
                let v = value("lr")?;
                let lr: f64 = v
                    .parse()
                    .map_err(|_| Error::invalid("lr", format!("expects a number, got `{v}`")))?;
                if !(lr.is_finite() && lr > 0.0) {
                    return Err(Error::invalid("lr", format!("must be > 0, got {v}")));
                }
                args.lr = Some(lr);
            }
            other => return Err(Error::invalid(other, "unknown option")),
        }
    }
    if args.steps < 4 {
        return Err(Error::invalid(
            "steps",
            format!(
                "must be at least 4 (gradients are checked after the first step and SWAG \
                 collects the second half), got {}",
                args.steps
            ),
        ));
    }
    if args.samples == 0 || args.repeats == 0 {
        return Err(Error::invalid(
            "samples",
            "--samples and --repeats must be >= 1",
        ));
    }
    if args.layers.is_some() && !args.bench_scale {
        return Err(Error::invalid(
            "layers",
            "--layers is read by --bench-scale only",
        ));
    }
    if args.text.is_some() && !matches!(args.arch, Arch::Bert) {
        return Err(Error::invalid("text", "--text is read by --arch bert only"));
    }
    Ok(args)
}

/// A labelled set: inputs, labels, number of classes.
struct Task {
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Vec<u32>,
    classes: usize,
    what: String,
}

/// BERT without a tokenizer: 15 lowercase bytes; label 1 when most letters are in n..z.
fn byte_majority_task(dev: &Device) -> Result<Task> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let len = 15;
    let mut make = |n: usize| -> Result<(Tensor, Vec<u32>)> {
        let mut ids = Vec::with_capacity(n * len);
        let mut ys = Vec::with_capacity(n);
        for _ in 0..n {
            let row: Vec<u32> = (0..len).map(|_| rng.random_range(97u32..123)).collect();
            ys.push(u32::from(
                row.iter().filter(|&&c| c >= 110).count() * 2 > len,
            ));
            ids.extend(row);
        }
        Ok((Tensor::from_vec(ids, (n, len), dev)?, ys))
    };
    let (x_train, y_train) = make(256)?;
    let (x_test, y_test) = make(128)?;
    Ok(Task {
        y_train: Tensor::from_vec(y_train, 256, dev)?,
        x_train,
        x_test,
        y_test,
        classes: 2,
        what: "toy bytes (majority of n..z)".into(),
    })
}

/// A toy sentiment task in English sentences (for a real tokenizer): label 1 when positive.
fn toy_sentences(n: usize, seed: u64) -> (Vec<String>, Vec<u32>) {
    const SUBJECTS: [&str; 8] = [
        "the movie",
        "this film",
        "the show",
        "the book",
        "our dinner",
        "the trip",
        "the concert",
        "my new phone",
    ];
    const GOOD: [&str; 6] = [
        "great",
        "wonderful",
        "excellent",
        "lovely",
        "fantastic",
        "delightful",
    ];
    const BAD: [&str; 6] = [
        "terrible",
        "awful",
        "boring",
        "dreadful",
        "disappointing",
        "poor",
    ];
    const TEMPLATES: [(&str, &str); 4] = [
        ("", " was "),
        ("i thought ", " was really "),
        ("honestly, ", " is "),
        ("everyone said ", " felt "),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut texts = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let good = rng.random_bool(0.5);
        let adj = if good { GOOD } else { BAD }[rng.random_range(0..6)];
        let s = SUBJECTS[rng.random_range(0..SUBJECTS.len())];
        let (pre, mid) = TEMPLATES[rng.random_range(0..TEMPLATES.len())];
        texts.push(format!("{pre}{s}{mid}{adj}."));
        labels.push(u32::from(good));
    }
    (texts, labels)
}

/// BERT with the checkpoint's tokenizer: `--text FILE.csv` (every fifth row held out) or the
/// toy sentences; inputs packed as `[n, 3, L]` (ids, token types, mask).
fn text_task(args: &Args, tok: &TextTokenizer, dev: &Device) -> Result<Task> {
    let (train, test, classes, what) = match &args.text {
        Some(path) => {
            let table = LabelledText::read_csv(path)?;
            if table.len() < 5 {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "{} rows: at least 5 are needed (every fifth row is the test set)",
                        table.len()
                    ),
                ));
            }
            let (mut tr, mut te) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
            for (i, (t, l)) in table.texts.iter().zip(&table.labels).enumerate() {
                let side = if i % 5 == 4 { &mut te } else { &mut tr };
                side.0.push(t.clone());
                side.1.push(*l);
            }
            let what = format!("{} ({} classes)", path.display(), table.classes.len());
            (tr, te, table.classes.len(), what)
        }
        None => (
            toy_sentences(256, 21),
            toy_sentences(128, 22),
            2,
            "toy sentences (sentiment)".to_string(),
        ),
    };
    let encode = |texts: &[String]| -> Result<Tensor> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        tok.encode_batch(&refs, dev)?.packed()
    };
    let n_train = train.1.len();
    Ok(Task {
        x_train: encode(&train.0)?,
        y_train: Tensor::from_vec(train.1, n_train, dev)?,
        x_test: encode(&test.0)?,
        y_test: test.1,
        classes,
        what,
    })
}

/// ViT: 1×16×16 noise with a bright 4×4 square; label 1 when the square is in the right half.
fn square_side_task(dev: &Device) -> Result<Task> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut make = |n: usize| -> Result<(Tensor, Vec<u32>)> {
        let mut px = Vec::with_capacity(n * 256);
        let mut ys = Vec::with_capacity(n);
        for _ in 0..n {
            let (r0, c0) = (rng.random_range(0..13usize), rng.random_range(0..13usize));
            ys.push(u32::from(c0 + 2 >= 8));
            for r in 0..16 {
                for c in 0..16 {
                    let inside = (r0..r0 + 4).contains(&r) && (c0..c0 + 4).contains(&c);
                    px.push(rng.random_range(-0.3f32..0.3) + if inside { 1.0 } else { 0.0 });
                }
            }
        }
        Ok((Tensor::from_vec(px, (n, 1, 16, 16), dev)?, ys))
    };
    let (x_train, y_train) = make(256)?;
    let (x_test, y_test) = make(128)?;
    Ok(Task {
        y_train: Tensor::from_vec(y_train, 256, dev)?,
        x_train,
        x_test,
        y_test,
        classes: 2,
        what: "toy squares (left or right half)".into(),
    })
}

/// Llama: windows of 12 tokens of a repeated sentence; the labels are the next token at every
/// position (`[n, 12]`), one class per token of the config's `vocab_size`.
fn next_token_task(sentence: &[u32], vocab_size: usize, what: &str, dev: &Device) -> Result<Task> {
    if let Some(&top) = sentence.iter().max() {
        if top as usize >= vocab_size {
            return Err(Error::invalid(
                "vocab_size",
                format!(
                    "the toy next-token task uses token id {top}, the model's vocabulary has \
                     {vocab_size}"
                ),
            ));
        }
    }
    if sentence.is_empty() {
        return Err(Error::invalid("text", "the toy sentence gives no tokens"));
    }
    let len = 12;
    // Test rows: the BMA holds [rows · 12, vocab] probabilities; a large vocabulary gets fewer.
    let n_test = if vocab_size > 4096 { 16 } else { 128 };
    let need = 300 + n_test + len + 1;
    let stream: Vec<u32> = sentence.iter().copied().cycle().take(need).collect();
    let make = |start: usize, n: usize| -> Result<(Tensor, Vec<u32>)> {
        let mut ids = Vec::with_capacity(n * len);
        let mut ys = Vec::with_capacity(n * len);
        for w in stream.windows(len + 1).skip(start).take(n) {
            ids.extend_from_slice(&w[..len]);
            ys.extend_from_slice(&w[1..]);
        }
        Ok((Tensor::from_vec(ids, (n, len), dev)?, ys))
    };
    let (x_train, y_train) = make(0, 256)?;
    let (x_test, y_test) = make(300, n_test)?;
    Ok(Task {
        y_train: Tensor::from_vec(y_train, (256, len), dev)?,
        x_train,
        x_test,
        y_test,
        classes: vocab_size,
        what: format!(
            "toy next token at every position, {what} ({vocab_size} classes: the config's \
             vocab_size)"
        ),
    })
}

fn report(json: bool, method: &str, out: &ClassificationOutput, task: &Task) -> Result<()> {
    let width = out.probs.dim(1)?;
    if width != task.classes || out.probs.dim(0)? != task.y_test.len() {
        return Err(Error::invalid(
            method,
            format!(
                "the model gives {} rows of {width} probabilities, the test set has {} rows \
                 of {} classes",
                out.probs.dim(0)?,
                task.y_test.len(),
                task.classes
            ),
        ));
    }
    let host = out.to_host()?;
    let m = classification_metrics(
        &host.mean_probs,
        task.classes,
        &task.y_test,
        &ClassificationConfig::default(),
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({"method": method, "set": "test (smoke)", "acc": m.accuracy,
                "nll": m.nll, "ece": m.ece, "brier": m.brier})
        );
    } else {
        println!(
            "{method:<24} set=test(smoke) acc={:.3} nll={:.4} ece={:.4} brier={:.4}",
            m.accuracy, m.nll, m.ece, m.brier
        );
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The median of `reps` timings (ms) of `f`, after one untimed call; also the minimum.
fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(ms(t));
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

fn swag_params() -> Result<candle_swag::SwagConfig> {
    SwagParams {
        rank: 10,
        ..Default::default()
    }
    .check()
}

fn bma(samples: usize) -> Result<candle_swag::predictive::BmaConfig> {
    BmaParams {
        sample: SampleParams {
            scale: 0.5,
            ..Default::default()
        },
        samples,
        seed: 0,
    }
    .check()
}

/// Mini-batch `step` of at most `size` rows, cycling through the training set.
fn minibatch(task: &Task, step: usize, size: usize) -> Result<(Tensor, Tensor)> {
    let n = task.x_train.dim(0)?;
    let size = size.min(n);
    let b = (step * size) % n;
    let len = size.min(n - b);
    Ok((
        task.x_train.narrow(0, b, len)?,
        task.y_train.narrow(0, b, len)?,
    ))
}

/// Names a few of `names` in one line.
fn some_names(names: &[String]) -> String {
    let mut s = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 3 {
        s.push_str(&format!(", ... ({} more)", names.len() - 3));
    }
    s
}

/// The gradient check of the trainable families: at step 0 only the `A` factors may get no
/// gradient (`B` is 0 at init, so `dL/dA = 0` exactly); from step 1 on, every tensor must.
fn check_gradients(
    params: &ParamSet,
    grads: &candle_core::backprop::GradStore,
    step: usize,
) -> Result<()> {
    let dead = params_without_gradient(params, grads)?;
    let bad: Vec<String> = if step == 0 {
        dead.into_iter()
            .filter(|n| !n.ends_with("lora_A.weight"))
            .collect()
    } else {
        dead
    };
    if !bad.is_empty() {
        return Err(Error::invalid(
            "gradients",
            format!(
                "after step {step}, {} of {} trainable tensors get no gradient: {}",
                bad.len(),
                params.vars().len(),
                some_names(&bad)
            ),
        ));
    }
    if step == 1 {
        eprintln!(
            "gradients: all {} trainable tensors (every adapter, and the head where there is \
             one) get one after the first step",
            params.vars().len()
        );
    }
    Ok(())
}

/// Median and minimum (ms) of `repeats` optimizer steps on `loss()`, after one untimed step;
/// the gradients are checked after the first two steps (every trainable tensor gets one).
fn time_steps(
    params: &ParamSet,
    opt: &mut candle_nn::AdamW,
    repeats: usize,
    mut loss: impl FnMut() -> Result<Tensor>,
) -> Result<(f64, f64)> {
    let mut step_no = 0;
    median_ms(repeats, || {
        let grads = loss()?.backward()?;
        if step_no < 2 {
            check_gradients(params, &grads, step_no)?;
        }
        step_no += 1;
        Ok(opt.step(&grads)?)
    })
}

/// Milliseconds to draw one flat SWAG sample and to write it into the model's `Var`s.
struct SampleCost {
    draw_ms: f64,
    write_ms: f64,
}

/// The cost of putting a SWAG sample into a model that reads its `Var`s at forward time:
/// drawing the flat sample, and writing it into the `Var`s, against one forward pass.
fn time_sample_write(
    params: &ParamSet,
    posterior: &SwagPosterior,
    forward_ms: f64,
    repeats: usize,
    what: &str,
) -> Result<SampleCost> {
    let opts = SampleParams::default().check()?;
    let keep = params.flatten()?;
    let sample = posterior.sample_flat_seeded(1, &opts)?;
    let (draw_ms, _) = median_ms(repeats, || {
        posterior.sample_flat_seeded(2, &opts)?;
        Ok(())
    })?;
    let (write_ms, _) = median_ms(repeats, || params.write_flat(&sample))?;
    params.write_flat(&keep)?;
    eprintln!(
        "timing: writing a SWAG sample into the model's Vars {write_ms:.3} ms (no rebuild) vs \
         one forward pass of {what} {forward_ms:.3} ms: {:.2}% (target <= 10%); drawing the \
         sample {draw_ms:.3} ms ({:.2}%)",
        100.0 * write_ms / forward_ms,
        100.0 * draw_ms / forward_ms
    );
    Ok(SampleCost { draw_ms, write_ms })
}

/// The adapters: query and value (Llama: q_proj and v_proj), rank `rank`, `alpha = 2r`; the
/// classifier head a new weight (BERT, ViT).
fn family_lora(base: &BaseModel, arch: Arch, rank: usize, dev: &Device) -> Result<Lora> {
    let (targets, head): ([&str; 2], bool) = match arch {
        Arch::Bert => (
            [
                "*.attention.self.query.weight",
                "*.attention.self.value.weight",
            ],
            true,
        ),
        Arch::Vit => (
            [
                "*.attention.attention.query.weight",
                "*.attention.attention.value.weight",
            ],
            true,
        ),
        Arch::Llama => (["*.q_proj.weight", "*.v_proj.weight"], false),
    };
    Lora::new(
        base,
        &LoraParams {
            new_weights: if head {
                vec![arch::HEAD.into()]
            } else {
                Vec::new()
            },
            ..LoraParams::new(&targets, rank)
        }
        .check()?,
        dev,
    )
}

/// LoRA with AdamW on a model that reads its adapter `Var`s at forward time (every adapter
/// checked for a gradient), SWAG moments after each step of the second half, SWAG samples
/// written into the `Var`s (timed against a forward pass), the MAP-LoRA and SWAG-LoRA rows.
/// The labels may be `[n]` (one class a row) or `[n, L]` (one a position: the model's outputs
/// are then `[n·L, classes]`). Returns the parameters, at the MAP weights.
fn train_and_bma(
    model: &impl ModuleT,
    params: &ParamSet,
    task: &Task,
    args: &Args,
    batch: usize,
    lr: f64,
) -> Result<()> {
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: args.lr.unwrap_or(lr),
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut posterior = SwagPosterior::for_params(params, swag_params()?)?;
    let train_t = Instant::now();
    for step in 0..args.steps {
        let (xb, yb) = minibatch(task, step, batch)?;
        let loss =
            candle_nn::loss::cross_entropy(&model.forward_t(&xb, true)?, &yb.flatten_all()?)?;
        let grads = loss.backward()?;
        if step < 2 {
            check_gradients(params, &grads, step)?;
        }
        opt.step(&grads)?;
        if step >= args.steps / 2 {
            posterior.collect(params)?;
        }
    }
    eprintln!(
        "training: {} steps of {batch} rows in {:.1} ms",
        args.steps,
        ms(train_t)
    );

    let test_batch = task.x_test.narrow(0, 0, task.x_test.dim(0)?.min(64))?;
    let (forward_ms, _) = median_ms(args.repeats, || {
        model.forward_t(&test_batch, false)?;
        Ok(())
    })?;
    time_sample_write(
        params,
        &posterior,
        forward_ms,
        args.repeats.max(10),
        &format!("{:?}", test_batch.dims()),
    )?;

    let map = params.flatten()?;
    let out = Predictive::point(params, &map)?.classify(model, batches(&task.x_test, 64)?)?;
    report(args.json, "MAP-LoRA", &out, task)?;
    let swag = Predictive::swag(params, &posterior, bma(args.samples)?)?;
    let out = swag.classify(model, batches(&task.x_test, 64)?)?;
    report(args.json, "SWAG-LoRA", &out, task)?;
    // Predictive leaves the MAP weights in the Vars.
    Ok(())
}

/// Prints the size of what trains.
fn describe(
    task: &Task,
    family: &str,
    params: &ParamSet,
    adapted: usize,
    base: &BaseModel,
) -> Result<()> {
    eprintln!(
        "task: {}; {} training rows, {} test rows, inputs {:?}",
        task.what,
        task.x_train.dim(0)?,
        task.x_test.dim(0)?,
        task.x_train.dims()
    );
    eprintln!(
        "trainable {family}: {} scalars in {} tensors ({adapted} adapted weights; base: {} \
         scalars, frozen)",
        params.numel(),
        params.vars().len(),
        base.numel()
    );
    Ok(())
}

/// The trainable BERT ([`BertClassifier`]): [`train_and_bma`], then last-layer SWAG on cached
/// features.
fn bert_trainable(dir: &std::path::Path, args: &Args, dev: &Device) -> Result<()> {
    let base = BaseModel::load(dir, dev)?;
    let real = args.model_dir.is_some();
    let lora = family_lora(&base, Arch::Bert, if real { 8 } else { 4 }, dev)?;
    let has_tokenizer = dir.join(TOKENIZER_FILE).is_file();
    if args.text.is_some() && !has_tokenizer {
        return Err(Error::invalid(
            "text",
            format!(
                "--text needs the model's tokenizer: {} has no {TOKENIZER_FILE}",
                dir.display()
            ),
        ));
    }
    // The classes come from the task; the classifier is built with as many outputs.
    let task = if has_tokenizer {
        let max_len = BertModel::new(&lora, &BertOptions::default())?
            .max_len()
            .min(128);
        text_task(args, &TextTokenizer::from_model_dir(dir, max_len)?, dev)?
    } else {
        byte_majority_task(dev)?
    };
    let clf = BertClassifier::new(&lora, task.classes, &BertOptions::default())?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    describe(&task, "BERT", &params, clf.bert().adapted().len(), &base)?;
    train_and_bma(
        &clf,
        &params,
        &task,
        args,
        if real { 32 } else { 64 },
        if real { 1e-3 } else { 5e-3 },
    )?;

    // Last-layer SWAG, the trunk frozen at the MAP adapters.
    let trunk = candle_nn::func_t(|xs: &Tensor, _| clf.features(xs));
    let head = candle_nn::func_t(|f: &Tensor, train| clf.head_forward(f, train));
    let head_params = params.select_prefix(&[arch::HEAD])?;
    last_layer_cached(&trunk, &head, &head_params, &task, args, || {
        for b in batches(&task.x_test, 64)? {
            clf.forward_t(&b?, false)?;
        }
        Ok(())
    })
}

/// The trainable ViT ([`VitClassifier`]) on the toy squares: [`train_and_bma`], then
/// last-layer SWAG on cached features.
fn vit_trainable(dir: &std::path::Path, args: &Args, dev: &Device) -> Result<()> {
    let base = BaseModel::load(dir, dev)?;
    let lora = family_lora(&base, Arch::Vit, 4, dev)?;
    let task = square_side_task(dev)?;
    let clf = VitClassifier::new(&lora, task.classes, &VitOptions::default())?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    describe(&task, "ViT", &params, clf.vit().adapted().len(), &base)?;
    train_and_bma(&clf, &params, &task, args, 64, 5e-3)?;
    let trunk = candle_nn::func_t(|xs: &Tensor, _| clf.features(xs));
    let head = candle_nn::func_t(|f: &Tensor, _| clf.head_forward(f));
    let head_params = params.select_prefix(&[arch::HEAD])?;
    last_layer_cached(&trunk, &head, &head_params, &task, args, || {
        for b in batches(&task.x_test, 64)? {
            clf.forward_t(&b?, false)?;
        }
        Ok(())
    })
}

/// The trainable Llama-family decoder ([`LlamaModel`]) on next-token prediction at every
/// position of toy windows (the checkpoint's tokenizer when it has one, else bytes); one class
/// per token of the config's vocabulary.
fn llama_trainable(dir: &std::path::Path, args: &Args, dev: &Device) -> Result<()> {
    let base = BaseModel::load(dir, dev)?;
    let real = args.model_dir.is_some();
    let lora = family_lora(&base, Arch::Llama, if real { 8 } else { 4 }, dev)?;
    let model = LlamaModel::new(&lora, &LlamaOptions::default())?;
    let vocab = model.config().vocab_size;
    let text = "the quick brown fox jumps over the lazy dog. ";
    let (stream, what) = if dir.join(TOKENIZER_FILE).is_file() {
        let tok = TextTokenizer::from_model_dir(dir, model.max_len())?;
        let ids = tok.encode_ids(text)?;
        (
            ids,
            format!("{} tokens", dir.join(TOKENIZER_FILE).display()),
        )
    } else {
        (text.bytes().map(u32::from).collect(), "bytes".to_string())
    };
    let task = next_token_task(&stream, vocab, &what, dev)?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    describe(&task, "Llama", &params, model.adapted().len(), &base)?;
    train_and_bma(
        &model,
        &params,
        &task,
        args,
        if real { 8 } else { 64 },
        if real { 1e-3 } else { 1e-2 },
    )?;
    eprintln!(
        "last-layer SWAG (cached) is not run for llama: the posterior would be over the \
         vocabulary-wide output layer (tied to the embeddings)"
    );
    Ok(())
}

/// `--bench-step`: one LoRA training step (batch 32 × 128 tokens, or the model's maximum
/// length if shorter; r = 8 on query and value; AdamW) and one forward pass of the same batch
/// on the trainable BERT, median of `--repeats` after a warm-up; and the cost of writing a
/// SWAG sample. The inputs are the ids `lora_step_torch.py` builds: every token real.
fn bench_step(dir: &std::path::Path, args: &Args, dev: &Device) -> Result<()> {
    if !matches!(args.arch, Arch::Bert) {
        return Err(Error::invalid(
            "bench-step",
            "--bench-step times the trainable BERT (MiniLM): use --arch bert",
        ));
    }
    let base = BaseModel::load(dir, dev)?;
    let lora = family_lora(&base, Arch::Bert, 8, dev)?;
    let clf = BertClassifier::new(&lora, 2, &BertOptions::default())?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    let (n, len) = (32usize, clf.bert().max_len().min(128));
    let vocab = clf.bert().config().base.vocab_size;
    // The same ids as the torch script: [CLS] ... [SEP] around deterministic word pieces.
    let ids: Vec<u32> = (0..n * len)
        .map(|k| {
            let (i, j) = (k / len, k % len);
            let id = if j == 0 {
                101
            } else if j == len - 1 {
                102
            } else {
                1000 + (i * 7919 + j * 31) % 20000
            };
            (id % vocab) as u32
        })
        .collect();
    let x = Tensor::from_vec(ids, (n, len), dev)?;
    let y = Tensor::from_vec((0..n as u32).map(|i| i % 2).collect::<Vec<_>>(), n, dev)?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: args.lr.unwrap_or(1e-4),
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let mut posterior = SwagPosterior::for_params(&params, swag_params()?)?;
    let mut collect_ms = Vec::new();
    let (step_ms, step_min) = time_steps(&params, &mut opt, args.repeats, || {
        Ok(candle_nn::loss::cross_entropy(
            &clf.forward_t(&x, true)?,
            &y,
        )?)
    })?;
    // SWAG collection after a step, timed apart (what a step costs more with SWAG on).
    for _ in 0..3 {
        let loss = candle_nn::loss::cross_entropy(&clf.forward_t(&x, true)?, &y)?;
        opt.backward_step(&loss)?;
        let t = Instant::now();
        posterior.collect(&params)?;
        collect_ms.push(ms(t));
    }
    collect_ms.sort_by(f64::total_cmp);
    let (fwd_ms, fwd_min) = median_ms(args.repeats, || {
        clf.forward_t(&x, false)?;
        Ok(())
    })?;
    let threads = candle_core::utils::get_num_threads();
    eprintln!(
        "bench-step: trainable BERT {}, batch {n} x {len} tokens, LoRA r 8 on query and value \
         ({} trainable scalars, head included), AdamW; {threads} threads",
        dir.display(),
        params.numel()
    );
    eprintln!(
        "bench-step: training step median {step_ms:.1} ms (min {step_min:.1}) over {} repeats; \
         forward (eval) median {fwd_ms:.1} ms (min {fwd_min:.1}); SWAG collect {:.3} ms",
        args.repeats, collect_ms[1]
    );
    time_sample_write(
        &params,
        &posterior,
        fwd_ms,
        args.repeats.max(10),
        &format!("{n} x {len}"),
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"impl": "candle", "model": dir.display().to_string(),
                "batch": n, "tokens": len, "rank": 8, "threads": threads,
                "repeats": args.repeats, "step_ms_median": step_ms, "step_ms_min": step_min,
                "forward_ms_median": fwd_ms, "forward_ms_min": fwd_min,
                "trainable": params.numel()})
        );
    }
    Ok(())
}

/// Last-layer SWAG with the trunk frozen at the MAP adapters: features cached once, the head
/// trained on them with SGD (moments collected each epoch of the second half), then BMA over S
/// head samples on cached test features; timed against one full forward pass (`full`).
fn last_layer_cached(
    trunk: &impl ModuleT,
    head: &impl ModuleT,
    head_params: &ParamSet,
    task: &Task,
    args: &Args,
    full: impl Fn() -> Result<()>,
) -> Result<()> {
    let train_feats = cache_features(trunk, batches(&task.x_train, 64)?)?;
    let mut sgd = SgdMomentum::new(
        head_params.vars().to_vec(),
        SgdParams {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-4,
        }
        .check()?,
    )?;
    let mut posterior = SwagPosterior::for_params(head_params, swag_params()?)?;
    let epochs = 30;
    for epoch in 0..epochs {
        for (b, f) in train_feats.iter().enumerate() {
            let yb = task.y_train.narrow(0, b * 64, f.dim(0)?)?;
            let loss = candle_nn::loss::cross_entropy(&head.forward_t(f, true)?, &yb)?;
            sgd.backward_step(&loss)?;
        }
        if epoch >= epochs / 2 {
            posterior.collect(head_params)?;
        }
    }

    // One full forward pass over the test set, against S cached samples (trunk once + S heads).
    let full_t = Instant::now();
    full()?;
    let full_ms = ms(full_t);
    let t = Instant::now();
    let test_feats = cache_features(trunk, batches(&task.x_test, 64)?)?;
    let out = Predictive::swag(head_params, &posterior, bma(args.samples)?)?
        .classify(head, cached(&test_feats))?;
    let cached_ms = ms(t);
    eprintln!(
        "timing: last-layer SWAG, S = {} samples with cached features {cached_ms:.3} ms vs one \
         full forward pass {full_ms:.3} ms (ratio {:.3}; target <= 1.2)",
        args.samples,
        cached_ms / full_ms
    );
    report(args.json, "last-layer SWAG (cached)", &out, task)
}

fn run() -> Result<()> {
    run_with(parse_args()?)
}

/// The BERT smoke pipeline on a tiny random model: the benchmark's `--quick` where the real
/// model or text cannot be fetched.
fn smoke_fallback() -> Result<()> {
    run_with(Args::default())
}

fn run_with(args: Args) -> Result<()> {
    let dev = Device::Cpu;
    if args.bench_scale {
        return scale::run(&args, &dev);
    }
    let _tmp;
    let dir = match &args.model_dir {
        Some(d) => d.clone(),
        None => {
            let t = std::env::temp_dir().join(format!("lora_swag_smoke_{}", std::process::id()));
            let n = tiny::write_random_model(args.arch, &t, 0)?;
            eprintln!(
                "smoke test: tiny random {:?} ({n} parameters) in {}",
                args.arch,
                t.display()
            );
            _tmp = TempDir(t.clone());
            t
        }
    };
    if args.bench_step {
        return bench_step(&dir, &args, &dev);
    }
    match args.arch {
        Arch::Bert => bert_trainable(&dir, &args, &dev),
        Arch::Vit => vit_trainable(&dir, &args, &dev),
        Arch::Llama => llama_trainable(&dir, &args, &dev),
    }
}

/// Removes the smoke model's temporary directory at the end.
struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    candle_swag::device::keep_freed_memory();
    // Without --smoke, --bench-step or --bench-scale: the SWAG-LoRA benchmark on real text (benchmark.rs).
    let smoke_or_step = std::env::args()
        .any(|a| ["--smoke", "--bench-step", "--bench-scale"].contains(&a.as_str()));
    let result = if smoke_or_step {
        run()
    } else {
        benchmark::run()
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
