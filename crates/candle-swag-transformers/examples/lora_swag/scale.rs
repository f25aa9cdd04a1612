//! `--bench-scale`: SWAG-LoRA at the size of a real small LLM, on the trainable Llama decoder.
//!
//! The model has TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 22 layers, 32 heads,
//! 4 key-value heads, vocabulary 32000, untied head; 1.1 B parameters) with random bf16
//! weights drawn at run time from a seeded generator (`N(0, 0.02²)`, norm scales 1): nothing is
//! downloaded or written to disk. LoRA r = 8, α = 16 on `q_proj` and `v_proj`. Figures, all at
//! one sequence of 128 tokens (random ids), medians of `--repeats` after one untimed call:
//! - trainable scalars and the SWAG posterior's bytes (moments + K deviation columns, f32),
//!   against the base weights' bytes;
//! - one training step (forward, next-token loss over the 127 targets, backward, AdamW) and
//!   one SWAG collection after it, as a fraction of the step;
//! - one forward pass (evaluation), and the per-sample cost of BMA beyond that forward pass:
//!   drawing a sample and writing it into the adapters' `Var`s (nothing is rebuilt).
//!
//! `--layers N` keeps the shape but stacks N decoder layers (CI runs 1); the time of a step
//! grows linearly in N while the embedding and head stay, so figures at N < 22 are not
//! TinyLlama's.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use candle_swag::{Error, ParamSet, Result, SwagPosterior};
use candle_swag_transformers::models::{LlamaModel, LlamaOptions};
use candle_swag_transformers::{Arch, BaseModel};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::json;

use super::{family_lora, median_ms, swag_params, time_sample_write, time_steps, Args};

/// TinyLlama-1.1B's decoder layers.
pub const TINYLLAMA_LAYERS: usize = 22;
/// TinyLlama-1.1B's widths: hidden, MLP, vocabulary, attention heads, key-value heads.
const HIDDEN: usize = 2048;
const INTERMEDIATE: usize = 5632;
const VOCAB: usize = 32000;
const HEADS: usize = 32;
const KV_HEADS: usize = 4;
/// Tokens in the timed sequence.
const TOKENS: usize = 128;

/// TinyLlama-1.1B's `config.json` (the fields the decoder reads), with `layers` layers.
fn tinyllama_config(layers: usize) -> serde_json::Value {
    json!({
        "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": false
    })
}

/// The weights of the Hugging Face Llama layout for `layers` layers of TinyLlama's shape, bf16.
/// Linear weights and embeddings `N(0, 0.02²)`, RMS-norm scales 1.
fn random_weights(layers: usize, seed: u64, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let (h, i, v) = (HIDDEN, INTERMEDIATE, VOCAB);
    let kv = KV_HEADS * (HIDDEN / HEADS);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
    ];
    for n in 0..layers {
        let p = format!("model.layers.{n}");
        for (name, dims) in [
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            shapes.push((format!("{p}.{name}"), dims));
        }
    }
    let normal = Normal::new(0.0f32, 0.02).map_err(|e| Error::invalid("std", e.to_string()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::with_capacity(shapes.len());
    for (name, dims) in shapes {
        let t = if dims.len() == 1 {
            Tensor::ones(dims, DType::BF16, dev)?
        } else {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(values, dims, dev)?.to_dtype(DType::BF16)?
        };
        tensors.insert(name, t);
    }
    Ok(tensors)
}

/// Runs the scale measurement (see the [module docs](self)).
pub fn run(args: &Args, dev: &Device) -> Result<()> {
    let layers = args.layers.unwrap_or(TINYLLAMA_LAYERS);
    let t = Instant::now();
    let base = BaseModel::from_tensors(tinyllama_config(layers), random_weights(layers, 0, dev)?)?;
    let made_s = t.elapsed().as_secs_f64();
    let lora = family_lora(&base, Arch::Llama, 8, dev)?;
    let model = LlamaModel::new(
        &lora,
        &LlamaOptions {
            dtype: DType::BF16,
            ..Default::default()
        },
    )?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    let base_bytes: usize = base
        .tensors()
        .values()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    let mut posterior = SwagPosterior::for_params(&params, swag_params()?)?;
    let threads = candle_core::utils::get_num_threads();
    eprintln!(
        "bench-scale: TinyLlama-1.1B shape with {layers} layer(s), random bf16 weights \
         ({} scalars, {:.2} GB, made in {made_s:.1} s); LoRA r 8 on q_proj and v_proj: {} \
         trainable scalars; SWAG posterior (K = {}) {:.2} MB; {threads} threads",
        base.numel(),
        base_bytes as f64 / 1e9,
        params.numel(),
        posterior.rank(),
        posterior.state_bytes() as f64 / 1e6,
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let ids: Vec<u32> = (0..TOKENS)
        .map(|_| rand::Rng::random_range(&mut rng, 0..VOCAB as u32))
        .collect();
    let x = Tensor::from_vec(ids, (1, TOKENS), dev)?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let (step_ms, step_min) = time_steps(&params, &mut opt, args.repeats, || {
        Ok(model.next_token_loss(&x, None, true)?)
    })?;
    let (collect_ms, _) = median_ms(args.repeats, || posterior.collect(&params))?;
    let (fwd_ms, fwd_min) = median_ms(args.repeats, || {
        model.forward(&x, None, false)?;
        Ok(())
    })?;
    eprintln!(
        "bench-scale: training step (1 x {TOKENS} tokens) median {step_ms:.0} ms (min \
         {step_min:.0}); SWAG collect {collect_ms:.2} ms = {:.3}% of a step; forward (eval) \
         median {fwd_ms:.0} ms (min {fwd_min:.0})",
        100.0 * collect_ms / step_ms
    );
    let sample = time_sample_write(
        &params,
        &posterior,
        fwd_ms,
        args.repeats,
        &format!("1 x {TOKENS}"),
    )?;
    if args.json {
        println!(
            "{}",
            json!({"impl": "candle", "model": "tinyllama-1.1b-shape-random-bf16",
                "layers": layers, "tokens": TOKENS, "rank": 8, "threads": threads,
                "repeats": args.repeats, "base_scalars": base.numel(),
                "base_bytes": base_bytes, "trainable": params.numel(),
                "swag_rank": posterior.rank(), "posterior_bytes": posterior.state_bytes(),
                "step_ms_median": step_ms, "collect_ms_median": collect_ms,
                "collect_fraction_of_step": collect_ms / step_ms,
                "forward_ms_median": fwd_ms, "sample_draw_ms": sample.draw_ms,
                "sample_write_ms": sample.write_ms,
                "bma_overhead_per_sample": (sample.draw_ms + sample.write_ms) / fwd_ms})
        );
    }
    Ok(())
}
