//! LoRA fine-tuning, SWAG over the adapters and BMA on a candle-transformers model.
//!
//! ```text
//! cargo run --release -p candle-swag-transformers --example lora_swag -- \
//!     --arch bert|llama|vit [--model-dir DIR] --smoke [--json] [--steps N] [--samples S] [--lr LR]
//! ```
//!
//! `--smoke` without `--model-dir` writes a tiny random-weight model of the architecture in
//! Hugging Face layout to a temporary directory and runs the whole pipeline on a deterministic
//! toy task: a SMOKE TEST of the plumbing, not a result. Rows (one per method): MAP-LoRA (the
//! last iterate), SWAG-LoRA (BMA over adapter samples), and for BERT/ViT last-layer SWAG with
//! cached trunk features. Timings (the rebuild after an adapter change against one forward pass;
//! S cached head samples against one full forward pass) go to stderr.

use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::Optimizer;
use candle_swag::metrics::{classification_metrics, ClassificationConfig};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::{
    ClassificationOutput, Error, ParamSet, Result, SampleParams, SgdMomentum, SgdParams,
    SwagParams, SwagPosterior,
};
use candle_swag_transformers::features::{cache_features, cached};
use candle_swag_transformers::{
    arch, config, params_without_gradient, tiny, Arch, BaseModel, Lora, LoraModel, LoraParams,
};
use rand::{Rng, SeedableRng};

struct Args {
    arch: Arch,
    model_dir: Option<std::path::PathBuf>,
    smoke: bool,
    json: bool,
    steps: usize,
    samples: usize,
    lr: Option<f64>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        arch: Arch::Bert,
        model_dir: None,
        smoke: false,
        json: false,
        steps: 40,
        samples: 30,
        lr: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| Error::invalid(name, "expects a value"))
        };
        match a.as_str() {
            "--arch" => args.arch = value("arch")?.parse()?,
            "--model-dir" => args.model_dir = Some(value("model-dir")?.into()),
            "--smoke" => args.smoke = true,
            "--json" => args.json = true,
            "--steps" => {
                args.steps = value("steps")?
                    .parse()
                    .map_err(|_| Error::invalid("steps", "expects a whole number"))?
            }
            "--samples" => {
                args.samples = value("samples")?
                    .parse()
                    .map_err(|_| Error::invalid("samples", "expects a whole number"))?
            }
            "--lr" => {
                args.lr = Some(
                    value("lr")?
                        .parse()
                        .map_err(|_| Error::invalid("lr", "expects a number"))?,
                )
            }
            other => return Err(Error::invalid(other, "unknown option")),
        }
    }
    if !args.smoke {
        return Err(Error::invalid(
            "smoke",
            "only --smoke is implemented (the full benchmark is not); add --smoke",
        ));
    }
    Ok(args)
}

/// A toy labelled set: inputs, labels, number of classes.
struct Task {
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Vec<u32>,
    classes: usize,
}

/// BERT: 15 lowercase bytes; label 1 when most letters are in n..z.
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
    })
}

/// Llama: windows of 12 bytes of a repeated sentence; the label is the next byte (260 classes).
fn next_byte_task(dev: &Device) -> Result<Task> {
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(20);
    let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
    let len = 12;
    let make = |start: usize, n: usize| -> Result<(Tensor, Vec<u32>)> {
        let mut ids = Vec::with_capacity(n * len);
        let mut ys = Vec::with_capacity(n);
        for i in start..start + n {
            ids.extend_from_slice(&bytes[i..i + len]);
            ys.push(bytes[i + len]);
        }
        Ok((Tensor::from_vec(ids, (n, len), dev)?, ys))
    };
    let (x_train, y_train) = make(0, 256)?;
    let (x_test, y_test) = make(300, 128)?;
    Ok(Task {
        y_train: Tensor::from_vec(y_train, 256, dev)?,
        x_train,
        x_test,
        y_test,
        classes: 260,
    })
}

fn report(json: bool, method: &str, out: &ClassificationOutput, task: &Task) -> Result<()> {
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

/// LoRA fine-tuning with AdamW, SWAG moments collected after every step of the second half;
/// then the MAP-LoRA and SWAG-LoRA rows and the rebuild timing.
fn lora_swag<M: ModuleT + 'static>(
    model: &LoraModel<M>,
    task: &Task,
    args: &Args,
) -> Result<ParamSet> {
    let params = model.params()?;
    eprintln!(
        "trainable: {} scalars in {} tensors (base: {} scalars, frozen)",
        params.numel(),
        params.vars().len(),
        model.lora().base().numel()
    );
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: args.lr.unwrap_or(if matches!(args.arch, Arch::Llama) {
                3e-2
            } else {
                5e-3
            }),
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 10,
            ..Default::default()
        }
        .check()?,
    )?;
    let start = args.steps / 2;
    for step in 0..args.steps {
        // Mini-batches of 64; the model rebuilds itself after each optimizer step.
        let b = (step * 64) % task.x_train.dim(0)?;
        let (xb, yb) = (
            task.x_train.narrow(0, b, 64)?,
            task.y_train.narrow(0, b, 64)?,
        );
        let loss = candle_nn::loss::cross_entropy(&model.model()?.forward_t(&xb, true)?, &yb)?;
        let grads = loss.backward()?;
        if step == 0 {
            let dead = params_without_gradient(&params, &grads)?;
            let b_dead = dead.iter().filter(|n| n.contains("lora_B")).count();
            let b_all = params
                .layout()
                .entries()
                .iter()
                .filter(|e| e.name.contains("lora_B"))
                .count();
            if b_all > 0 && b_dead == b_all {
                eprintln!(
                    "WARNING: no gradient reaches the adapters ({} of {} trainable tensors get \
                     none): candle-nn 0.11.1's fused layer_norm / rms_norm / softmax_last_dim \
                     have no backward pass and the model uses them between the adapters and the \
                     loss; the adapters stay at init, only a head trains",
                    dead.len(),
                    params.vars().len()
                );
            }
        }
        opt.step(&grads)?;
        if step >= start {
            posterior.collect(&params)?;
        }
    }

    // Timing: a rebuild (after an adapter change) against one forward pass of one batch.
    let batch = task.x_test.narrow(0, 0, 64)?;
    let current = model.model()?;
    current.forward_t(&batch, false)?; // warm-up
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        current.forward_t(&batch, false)?;
    }
    let forward_ms = ms(t) / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        model.rebuild()?;
    }
    let rebuild_ms = ms(t) / reps as f64;
    eprintln!(
        "timing: rebuild {rebuild_ms:.3} ms vs one forward pass of 64 rows {forward_ms:.3} ms \
         (rebuild/forward = {:.3})",
        rebuild_ms / forward_ms
    );

    let map = params.flatten()?;
    let out = Predictive::point(&params, &map)?.classify(model, batches(&task.x_test, 64)?)?;
    report(args.json, "MAP-LoRA", &out, task)?;
    let swag = Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: args.samples,
            seed: 0,
        }
        .check()?,
    )?;
    let out = swag.classify(model, batches(&task.x_test, 64)?)?;
    report(args.json, "SWAG-LoRA", &out, task)?;
    Ok(params)
}

/// Last-layer SWAG with the trunk frozen at the MAP adapters: features cached once, the head
/// trained on them with SGD (moments collected each epoch of the second half), then BMA over S
/// head samples on cached test features; timed against one full forward pass.
fn last_layer_cached(
    model: &LoraModel<arch::SequenceClassifier>,
    params: &ParamSet,
    task: &Task,
    args: &Args,
) -> Result<()> {
    let current = model.model()?;
    let trunk = candle_nn::func_t(|xs: &Tensor, _| current.features(xs));
    let train_feats = cache_features(&trunk, batches(&task.x_train, 64)?)?;
    let head = current.head().clone();
    let head_params = params.select_prefix(&[arch::HEAD])?;
    let mut sgd = SgdMomentum::new(
        head_params.vars().to_vec(),
        SgdParams {
            lr: 0.05,
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
    let epochs = 30;
    for epoch in 0..epochs {
        for (b, f) in train_feats.iter().enumerate() {
            let yb = task.y_train.narrow(0, b * 64, f.dim(0)?)?;
            let loss = candle_nn::loss::cross_entropy(&head.forward_t(f, true)?, &yb)?;
            sgd.backward_step(&loss)?;
        }
        if epoch >= epochs / 2 {
            posterior.collect(&head_params)?;
        }
    }

    // One full forward pass over the test set, against S cached samples (trunk once + S heads).
    let full_t = Instant::now();
    for b in batches(&task.x_test, 64)? {
        current.forward_t(&b?, false)?;
    }
    let full_ms = ms(full_t);
    let t = Instant::now();
    let test_feats = cache_features(&trunk, batches(&task.x_test, 64)?)?;
    let out = Predictive::swag(
        &head_params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: args.samples,
            seed: 0,
        }
        .check()?,
    )?
    .classify(&head, cached(&test_feats))?;
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
    let args = parse_args()?;
    let dev = Device::Cpu;
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
    let base = BaseModel::load(&dir, &dev)?;
    let cfg_path = dir.join("config.json");
    match args.arch {
        Arch::Bert | Arch::Vit => {
            let (targets, task, build): (_, _, Box<dyn Fn(_) -> _ + Send + Sync>) = match args.arch
            {
                Arch::Bert => (
                    [
                        "*.attention.self.query.weight",
                        "*.attention.self.value.weight",
                    ],
                    byte_majority_task(&dev)?,
                    Box::new(arch::bert_classifier(
                        config::bert(base.config(), &cfg_path)?,
                        2,
                    )),
                ),
                _ => (
                    [
                        "*.attention.attention.query.weight",
                        "*.attention.attention.value.weight",
                    ],
                    square_side_task(&dev)?,
                    Box::new(arch::vit_classifier(
                        config::vit(base.config(), &cfg_path)?,
                        2,
                    )),
                ),
            };
            let lora = Lora::new(
                &base,
                &LoraParams {
                    new_weights: vec![arch::HEAD.into()],
                    ..LoraParams::new(&targets, 4)
                }
                .check()?,
                &dev,
            )?;
            let model = LoraModel::new(&lora, DType::F32, build)?;
            let params = lora_swag(&model, &task, &args)?;
            last_layer_cached(&model, &params, &task, &args)?;
        }
        Arch::Llama => {
            let cfg = config::llama(base.config(), &cfg_path)?;
            let lora = Lora::new(
                &base,
                &LoraParams::new(
                    &[
                        "*.q_proj.weight",
                        "*.v_proj.weight",
                        "*.o_proj.weight",
                        "*.down_proj.weight",
                    ],
                    4,
                )
                .check()?,
                &dev,
            )?;
            let model = LoraModel::new(&lora, DType::F32, arch::llama_next_token(cfg))?;
            lora_swag(&model, &next_byte_task(&dev)?, &args)?;
            eprintln!(
                "last-layer SWAG (cached) is not run for llama: candle-transformers' Llama does \
                 not expose the hidden states before its (tied) output layer"
            );
        }
    }
    Ok(())
}

/// Removes the smoke model's temporary directory at the end.
struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
