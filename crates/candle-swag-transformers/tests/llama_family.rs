//! The trainable Llama family (`models::llama`: Llama, Mistral, Qwen2) against
//! candle-transformers' models, its gradients against finite differences, padding, the sliding
//! window, and bad input.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{Optimizer, VarBuilder};
use candle_swag::{Error, ParamSet, Result};
use candle_swag_transformers::models::{LlamaModel, LlamaOptions};
use candle_swag_transformers::{
    config, params_without_gradient, tiny, Arch, BaseModel, Lora, LoraParams,
};
use candle_transformers::models::{llama as ct_llama, qwen2 as ct_qwen2};

/// Every linear layer of the decoder.
const ALL_LINEAR: [&str; 7] = [
    "*.self_attn.q_proj.weight",
    "*.self_attn.k_proj.weight",
    "*.self_attn.v_proj.weight",
    "*.self_attn.o_proj.weight",
    "*.mlp.gate_proj.weight",
    "*.mlp.up_proj.weight",
    "*.mlp.down_proj.weight",
];

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|e| Error::io("tempdir", e))
}

/// The tiny Llama of `tiny.rs`: 4 heads, 2 KV heads (GQA), tied embeddings, 64 positions.
fn tiny_llama(seed: u64) -> Result<tempfile::TempDir> {
    let dir = tempdir()?;
    tiny::write_random_model(Arch::Llama, dir.path(), seed)?;
    Ok(dir)
}

/// Deterministic `N(0, 0.08²)`-ish values (a cheap hash), shape `dims`.
fn noise(dims: &[usize], salt: usize) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i * 7919 + salt * 104_729) % 1009) as f32 / 1009.0 - 0.5) * 0.25)
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

/// Writes `config` and `tensors` as a model directory.
fn write_model(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    candle_swag_transformers::lora::write_safetensors(
        dir.join("model.safetensors"),
        tensors,
        HashMap::new(),
    )?;
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(config)?).map_err(|e| Error::io(&p, e))
}

/// A variant of the tiny Llama: `edit` changes the config, `extra` adds tensors.
fn variant(
    seed: u64,
    edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
    extra: impl Fn(&mut HashMap<String, Tensor>) -> Result<()>,
) -> Result<tempfile::TempDir> {
    let src = tiny_llama(seed)?;
    let base = BaseModel::load(src.path(), &Device::Cpu)?;
    let mut cfg = tiny::tiny_config(Arch::Llama);
    if let Some(obj) = cfg.as_object_mut() {
        edit(obj);
    }
    let mut tensors = base.tensors().clone();
    extra(&mut tensors)?;
    let dir = tempdir()?;
    write_model(dir.path(), &cfg, &tensors)?;
    Ok(dir)
}

fn lora_on(base: &BaseModel, targets: &[&str], rank: usize) -> Result<Lora> {
    let params = LoraParams {
        seed: 7,
        ..LoraParams::new(targets, rank)
    };
    Lora::new(base, &params.check()?, &Device::Cpu)
}

/// Deterministic ids in 5..255 (the tiny vocabulary is 260).
fn ids(n: usize, len: usize, salt: usize) -> Result<Tensor> {
    let v: Vec<u32> = (0..n * len)
        .map(|i| 5 + ((i * 37 + salt * 11 + i / len * 3) % 250) as u32)
        .collect();
    Ok(Tensor::from_vec(v, (n, len), &Device::Cpu)?)
}

/// Writes deterministic non-zero values into every `B` (a non-trivial update).
fn perturb_b(lora: &Lora) -> Result<()> {
    for (k, ad) in lora.adapters().values().enumerate() {
        let (out, r) = ad.b.dims2()?;
        let v: Vec<f32> = (0..out * r)
            .map(|i| (((i * 13 + k * 5) % 17) as f32 / 17.0 - 0.5) * 0.4)
            .collect();
        ad.b.set(&Tensor::from_vec(v, (out, r), lora.device())?)?;
    }
    Ok(())
}

/// `max |a − b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    let num = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let den = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(num / den.max(f32::MIN_POSITIVE))
}

/// candle-transformers' `Llama` over `tensors`, run once per prefix (its `forward` returns the
/// last position's logits): `[n, L, vocab]`.
fn candle_llama_all_positions(
    tensors: HashMap<String, Tensor>,
    config_json: &serde_json::Value,
    x: &Tensor,
) -> Result<Tensor> {
    let cfg = config::llama(config_json, Path::new("config.json"))?;
    let model = ct_llama::Llama::load(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        &cfg,
    )?;
    let (_, len) = x.dims2()?;
    let mut rows = Vec::with_capacity(len);
    for t in 1..=len {
        let mut cache = ct_llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu)?;
        rows.push(model.forward(&x.narrow(1, 0, t)?, 0, &mut cache)?);
    }
    Ok(Tensor::stack(&rows, 1)?)
}

fn message<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_position_equals_candle_transformers_with_gqa_and_tied_embeddings() -> Result<()> {
    let dir = tiny_llama(1)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    assert!(!base.tensors().contains_key("lm_head.weight"));
    let lora = lora_on(&base, &ALL_LINEAR, 4)?;
    let ours = LlamaModel::new(&lora, &LlamaOptions::default())?;
    assert_eq!(ours.adapted().len(), 7 * 2);
    let c = ours.config();
    assert!(c.tie_word_embeddings && c.num_key_value_heads < c.num_attention_heads);
    let x = ids(3, 9, 0)?;
    let a = ours.forward(&x, None, false)?;
    assert_eq!(a.dims(), &[3, 9, 260]);
    let b = candle_llama_all_positions(base.tensors().clone(), base.config(), &x)?;
    let e = rel_err(&a, &b)?;
    assert!(e <= 1e-5, "relative error {e}");
    // As a ModuleT: [n·L, vocab], row i·L + t.
    let flat = ours.forward_t(&x, false)?;
    assert_eq!(flat.dims(), &[27, 260]);
    assert_eq!(
        flat.to_vec2::<f32>()?,
        a.reshape((27, 260))?.to_vec2::<f32>()?
    );
    Ok(())
}

#[test]
fn adapters_written_after_the_build_are_seen_and_equal_the_merged_model() -> Result<()> {
    let dir = tiny_llama(2)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(&base, &ALL_LINEAR, 3)?;
    let ours = LlamaModel::new(&lora, &LlamaOptions::default())?;
    let x = ids(2, 8, 1)?;
    let before = ours.forward(&x, None, false)?;
    perturb_b(&lora)?;
    let after = ours.forward(&x, None, false)?;
    let merged = candle_llama_all_positions(lora.merged_tensors()?, base.config(), &x)?;
    let e = rel_err(&after, &merged)?;
    assert!(e <= 1e-5, "relative error against the merged model {e}");
    let moved = rel_err(&before, &merged)?;
    assert!(
        moved > 1e-2,
        "the adapters barely moved the output ({moved})"
    );
    Ok(())
}

/// Untied embeddings (`lm_head.weight` read, and adaptable) and full multi-head attention.
#[test]
fn untied_embeddings_and_multi_head_attention_equal_candle_transformers() -> Result<()> {
    let dir = variant(
        3,
        |c| {
            c.insert("tie_word_embeddings".into(), false.into());
            c.insert("num_key_value_heads".into(), 4.into());
        },
        |t| {
            t.insert("lm_head.weight".into(), noise(&[260, 64], 1)?);
            for n in 0..2 {
                for p in ["k_proj", "v_proj"] {
                    t.insert(
                        format!("model.layers.{n}.self_attn.{p}.weight"),
                        noise(&[64, 64], 2 + n)?,
                    );
                }
            }
            Ok(())
        },
    )?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(
        &base,
        &["*.q_proj.weight", "*.v_proj.weight", "lm_head.weight"],
        2,
    )?;
    let ours = LlamaModel::new(&lora, &LlamaOptions::default())?;
    assert!(ours.adapted().contains(&"lm_head.weight"));
    let x = ids(2, 7, 2)?;
    let e0 = rel_err(
        &ours.forward(&x, None, false)?,
        &candle_llama_all_positions(base.tensors().clone(), base.config(), &x)?,
    )?;
    perturb_b(&lora)?;
    let e1 = rel_err(
        &ours.forward(&x, None, false)?,
        &candle_llama_all_positions(lora.merged_tensors()?, base.config(), &x)?,
    )?;
    assert!(e0 <= 1e-5 && e1 <= 1e-5, "relative errors {e0}, {e1}");
    Ok(())
}

fn qwen2_config() -> serde_json::Value {
    let mut cfg = tiny::tiny_config(Arch::Llama);
    if let Some(c) = cfg.as_object_mut() {
        c.insert("model_type".into(), "qwen2".into());
        c.insert("hidden_act".into(), "silu".into());
        c.insert("sliding_window".into(), 64.into());
        c.insert("max_window_layers".into(), 2.into());
        c.insert("use_sliding_window".into(), false.into());
        c.insert("rope_theta".into(), 1_000_000.0.into());
    }
    cfg
}

/// A Qwen2-style checkpoint: q/k/v biases, GQA, tied embeddings, a large `rope_theta`.
fn tiny_qwen2(seed: u64) -> Result<tempfile::TempDir> {
    let src = tiny_llama(seed)?;
    let base = BaseModel::load(src.path(), &Device::Cpu)?;
    let mut tensors = base.tensors().clone();
    for n in 0..2 {
        for (p, out) in [("q_proj", 64), ("k_proj", 32), ("v_proj", 32)] {
            tensors.insert(
                format!("model.layers.{n}.self_attn.{p}.bias"),
                noise(&[out], 10 + n * 3 + out)?,
            );
        }
    }
    let dir = tempdir()?;
    write_model(dir.path(), &qwen2_config(), &tensors)?;
    Ok(dir)
}

#[test]
fn a_qwen2_config_with_qkv_bias_equals_candle_transformers_qwen2() -> Result<()> {
    let dir = tiny_qwen2(4)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(&base, &ALL_LINEAR, 2)?;
    let ours = LlamaModel::new(&lora, &LlamaOptions::default())?;
    assert_eq!(ours.config().rope_theta, 1e6);
    let x = ids(2, 10, 3)?;
    let cfg: ct_qwen2::Config = serde_json::from_value(qwen2_config())?;
    let reference = |tensors: HashMap<String, Tensor>| -> Result<(Tensor, Tensor)> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        // Hidden states of every position (after the final norm), and the last logits.
        let hidden = ct_qwen2::Model::new(&cfg, vb.clone())?.forward(&x, 0, None)?;
        let last = ct_qwen2::ModelForCausalLM::new(&cfg, vb)?.forward(&x, 0)?;
        Ok((hidden, last))
    };
    let check = |tensors| -> Result<(f32, f32)> {
        let (hidden, last) = reference(tensors)?;
        let e_h = rel_err(&ours.hidden_states(&x, None, false)?, &hidden)?;
        let logits = ours.forward(&x, None, false)?;
        let e_l = rel_err(&logits.narrow(1, 9, 1)?, &last)?;
        Ok((e_h, e_l))
    };
    let (h0, l0) = check(base.tensors().clone())?;
    perturb_b(&lora)?;
    let (h1, l1) = check(lora.merged_tensors()?)?;
    assert!(
        h0 <= 1e-5 && l0 <= 1e-5 && h1 <= 1e-5 && l1 <= 1e-5,
        "relative errors {h0} {l0} {h1} {l1}"
    );
    // Qwen2 requires the biases: a missing one is named.
    let mut tensors = base.tensors().clone();
    tensors.remove("model.layers.1.self_attn.k_proj.bias");
    let mdir = tempdir()?;
    write_model(mdir.path(), &qwen2_config(), &tensors)?;
    let e = message(LlamaModel::frozen(
        &BaseModel::load(mdir.path(), &Device::Cpu)?,
        &LlamaOptions::default(),
    ));
    assert!(
        e.contains("model.layers.1.self_attn.k_proj.bias") && e.contains("model.safetensors"),
        "{e}"
    );
    Ok(())
}

/// A Mistral config reads the same weights; its sliding window limits what each position
/// sees (2 layers, window 2: position t depends on tokens t − 2 ..= t only).
#[test]
fn a_mistral_config_and_its_sliding_window() -> Result<()> {
    let src = tiny_llama(5)?;
    let base = BaseModel::load(src.path(), &Device::Cpu)?;
    let mistral = |window: usize| -> Result<LlamaModel> {
        let mut cfg = tiny::tiny_config(Arch::Llama);
        if let Some(c) = cfg.as_object_mut() {
            c.insert("model_type".into(), "mistral".into());
            c.insert("sliding_window".into(), window.into());
        }
        let dir = tempdir()?;
        write_model(dir.path(), &cfg, base.tensors())?;
        LlamaModel::frozen(
            &BaseModel::load(dir.path(), &Device::Cpu)?,
            &LlamaOptions::default(),
        )
    };
    let llama = LlamaModel::frozen(&base, &LlamaOptions::default())?;
    let x = ids(1, 8, 4)?;
    let wide = mistral(8)?.forward(&x, None, false)?;
    assert_eq!(
        wide.to_vec3::<f32>()?,
        llama.forward(&x, None, false)?.to_vec3::<f32>()?
    );
    let narrow = mistral(2)?;
    let mut changed = x.to_vec2::<u32>()?;
    changed[0][0] = 200;
    let y = Tensor::new(changed, &Device::Cpu)?;
    let (a, b) = (
        narrow.forward(&x, None, false)?,
        narrow.forward(&y, None, false)?,
    );
    // Position 2 sees token 0 (through position 1 in layer 1); position 3 does not.
    assert!(rel_err(&a.narrow(1, 2, 1)?, &b.narrow(1, 2, 1)?)? > 1e-4);
    assert_eq!(
        a.narrow(1, 3, 5)?.to_vec3::<f32>()?,
        b.narrow(1, 3, 5)?.to_vec3::<f32>()?
    );
    Ok(())
}

#[test]
fn a_right_padded_batch_gives_the_unpadded_logits_at_real_tokens() -> Result<()> {
    let dir = tiny_llama(6)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(&base, &["*.q_proj.weight", "*.v_proj.weight"], 2)?;
    perturb_b(&lora)?;
    let model = LlamaModel::new(&lora, &LlamaOptions::default())?;
    let long = ids(1, 10, 5)?;
    let short = ids(1, 4, 6)?;
    let padded = Tensor::cat(
        &[&short, &Tensor::zeros((1, 6), DType::U32, &Device::Cpu)?],
        1,
    )?;
    let batch = Tensor::cat(&[&long, &padded], 0)?;
    let mask = Tensor::new(&[[1u32; 10], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], &Device::Cpu)?;
    let out = model.forward(&batch, Some(&mask), false)?;
    let e = rel_err(
        &out.narrow(0, 1, 1)?.narrow(1, 0, 4)?,
        &model.forward(&short, None, false)?,
    )?;
    assert!(e <= 1e-5, "padded vs unpadded {e}");
    let e = rel_err(&out.narrow(0, 0, 1)?, &model.forward(&long, None, false)?)?;
    assert!(e <= 1e-5, "the unpadded row changed {e}");
    // Packed inputs carry the mask: [n, 2, L] and the tokenizer's [n, 3, L].
    let packed2 = Tensor::stack(&[&batch, &mask], 1)?;
    let packed3 = Tensor::stack(&[&batch, &batch.zeros_like()?, &mask], 1)?;
    let flat = out.reshape((20, 260))?.to_vec2::<f32>()?;
    assert_eq!(model.forward_t(&packed2, false)?.to_vec2::<f32>()?, flat);
    assert_eq!(model.forward_t(&packed3, false)?.to_vec2::<f32>()?, flat);
    // The loss counts real targets only: padding does not change it.
    let l_pad = model.next_token_loss(
        &padded,
        Some(&Tensor::new(
            &[[1u32, 1, 1, 1, 0, 0, 0, 0, 0, 0]],
            &Device::Cpu,
        )?),
        false,
    )?;
    let l_short = model.next_token_loss(&short, None, false)?;
    let (a, b) = (l_pad.to_scalar::<f32>()?, l_short.to_scalar::<f32>()?);
    assert!((a - b).abs() <= 1e-5 * b.abs(), "{a} vs {b}");
    Ok(())
}

/// One AdamW step from init (B = 0, so only B moves), then the gradients of a second loss.
#[test]
fn every_adapter_gets_a_gradient() -> Result<()> {
    let dir = variant(
        7,
        |c| {
            c.insert("tie_word_embeddings".into(), false.into());
        },
        |t| {
            t.insert("lm_head.weight".into(), noise(&[260, 64], 3)?);
            Ok(())
        },
    )?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let mut targets = ALL_LINEAR.to_vec();
    targets.push("lm_head.weight");
    let lora = lora_on(&base, &targets, 2)?;
    let model = LlamaModel::new(&lora, &LlamaOptions::default())?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    assert_eq!(params.vars().len(), 2 * (7 * 2 + 1));
    let x = ids(3, 8, 7)?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let grads = model.next_token_loss(&x, None, true)?.backward()?;
    let dead = params_without_gradient(&params, &grads)?;
    assert!(
        dead.iter().all(|n| n.ends_with("lora_A.weight")),
        "{dead:?}"
    );
    assert_eq!(dead.len(), 15);
    opt.step(&grads)?;
    // Through the ModuleT path, as a training loop on Predictive's model would.
    let logits = model.forward_t(&x.narrow(1, 0, 7)?, true)?;
    let targets = x.narrow(1, 1, 7)?.flatten_all()?;
    let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
    let dead = params_without_gradient(&params, &loss.backward()?)?;
    assert!(dead.is_empty(), "no gradient: {dead:?}");
    Ok(())
}

#[test]
fn adapter_gradients_match_central_finite_differences() -> Result<()> {
    let dir = tiny_qwen2(8)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(
        &base,
        &[
            "*.q_proj.weight",
            "*.k_proj.weight",
            "*.v_proj.weight",
            "*.down_proj.weight",
        ],
        2,
    )?;
    perturb_b(&lora)?;
    // In f64 (the f32 adapters are cast at forward time), so that the central differences are
    // not lost in rounding.
    let model = LlamaModel::new(
        &lora,
        &LlamaOptions {
            dtype: DType::F64,
            ..Default::default()
        },
    )?;
    let x = ids(2, 6, 9)?;
    let mask = Tensor::new(&[[1u32; 6], [1, 1, 1, 1, 0, 0]], &Device::Cpu)?;
    let w = Tensor::from_vec(
        (0..2 * 6 * 260)
            .map(|i| (i * 29 % 23) as f64 / 23.0 - 0.5)
            .collect::<Vec<_>>(),
        (2, 6, 260),
        &Device::Cpu,
    )?;
    let probe = || -> Result<Tensor> {
        let logits = model.forward(&x, Some(&mask), false)?;
        Ok((logits.broadcast_mul(&w)?.sum_all()?
            + model.next_token_loss(&x, Some(&mask), false)?)?)
    };
    let grads = probe()?.backward()?;
    let mut checked = 0;
    for (name, ad) in lora.adapters() {
        for (which, var) in [("A", &ad.a), ("B", &ad.b)] {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| Error::invalid("grad", format!("{name} {which}: no gradient")))?;
            common::check_directional_derivative(&format!("{name} {which}"), var, g, || {
                Ok(probe()?.to_scalar::<f64>()?)
            })?;
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 4 * 2);
    Ok(())
}

#[test]
fn bad_input_is_a_one_line_error_naming_what_is_wrong() -> Result<()> {
    // A config of another family names the families this crate trains.
    let bdir = tempdir()?;
    tiny::write_random_model(Arch::Bert, bdir.path(), 1)?;
    let bbase = BaseModel::load(bdir.path(), &Device::Cpu)?;
    let e = message(LlamaModel::frozen(&bbase, &LlamaOptions::default()));
    assert!(
        e.contains("config.json")
            && e.contains("model_type")
            && e.contains("\"bert\"")
            && e.contains("llama, mistral, qwen2"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    let dir = tiny_llama(9)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let model = LlamaModel::frozen(&base, &LlamaOptions::default())?;
    let x = ids(2, 8, 0)?;
    // A mask of the wrong shape.
    let bad_mask = Tensor::ones((2, 7), DType::U32, &Device::Cpu)?;
    let e = message(
        model
            .forward(&x, Some(&bad_mask), false)
            .map_err(Error::from),
    );
    assert!(
        e.contains("attention mask") && e.contains("[2, 7]") && e.contains("[2, 8]"),
        "{e}"
    );
    let e = message(
        model
            .forward_t(&Tensor::ones((2, 4, 8), DType::U32, &Device::Cpu)?, false)
            .map_err(Error::from),
    );
    assert!(e.contains("[2, 4, 8]"), "{e}");
    // A sequence longer than the positions (64 in the tiny config): both lengths named.
    let e = message(
        model
            .forward(&ids(1, 65, 0)?, None, false)
            .map_err(Error::from),
    );
    assert!(
        e.contains("65") && e.contains("max_position_embeddings") && e.contains("(64)"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    assert!(model.forward(&ids(1, 64, 0)?, None, false).is_ok());
    // An adapter on the (tied) embedding table.
    let lora = lora_on(&base, &["*.q_proj.weight", "model.embed_tokens.weight"], 2)?;
    let e = message(LlamaModel::new(&lora, &LlamaOptions::default()));
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("linear"),
        "{e}"
    );
    // Config fields the family cannot compute.
    for (field, value, expect) in [
        ("hidden_act", serde_json::json!("gelu"), "silu"),
        (
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0}),
            "llama3",
        ),
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "num_attention_heads",
        ),
        ("rms_norm_eps", serde_json::json!("small"), "a number"),
    ] {
        let mut cfg = tiny::tiny_config(Arch::Llama);
        if let Some(c) = cfg.as_object_mut() {
            c.insert(field.into(), value);
        }
        let mdir = tempdir()?;
        write_model(mdir.path(), &cfg, base.tensors())?;
        let e = message(LlamaModel::frozen(
            &BaseModel::load(mdir.path(), &Device::Cpu)?,
            &LlamaOptions::default(),
        ));
        assert!(
            e.contains("config.json")
                && e.contains(field)
                && e.contains(expect)
                && !e.contains('\n'),
            "{field}: {e}"
        );
    }
    // Untied embeddings without `lm_head.weight`.
    let mut cfg = tiny::tiny_config(Arch::Llama);
    if let Some(c) = cfg.as_object_mut() {
        c.insert("tie_word_embeddings".into(), false.into());
    }
    let mdir = tempdir()?;
    write_model(mdir.path(), &cfg, base.tensors())?;
    let e = message(LlamaModel::frozen(
        &BaseModel::load(mdir.path(), &Device::Cpu)?,
        &LlamaOptions::default(),
    ));
    assert!(e.contains("lm_head.weight") && e.contains("missing"), "{e}");
    Ok(())
}

/// LoRA-SWAG with per-token BMA: AdamW steps on the next-token loss (every adapter moves),
/// snapshots collected, `Predictive::classify` over `[n·L, vocab]` outputs (one pass per
/// sequence) at scale 0 equals the SWA-mean model, and the trained weights are left in place.
#[test]
fn swag_per_token_bma_through_predictive() -> Result<()> {
    use candle_swag::predictive::{batches, BmaParams, Predictive};
    use candle_swag::{SampleParams, SwagParams, SwagPosterior};
    let dir = tiny_llama(10)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(&base, &["*.q_proj.weight", "*.v_proj.weight"], 2)?;
    let model = LlamaModel::new(&lora, &LlamaOptions::default())?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    let x = ids(8, 6, 11)?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 3,
            ..Default::default()
        }
        .check()?,
    )?;
    let start = params.flatten()?;
    for step in 0..6 {
        opt.backward_step(&model.next_token_loss(&x, None, true)?)?;
        if step >= 2 {
            posterior.collect(&params)?;
        }
    }
    for (e, v) in params.layout().entries().iter().zip(params.vars()) {
        let now = v.as_tensor().flatten_all()?;
        let then = start.narrow(0, e.offset, e.numel())?;
        let d = (now - then)?.abs()?.max(0)?.to_scalar::<f32>()?;
        assert!(d > 0.0, "{} did not move", e.name);
    }
    let trained = params.flatten()?;
    let bma = Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.0,
                ..Default::default()
            },
            samples: 2,
            seed: 3,
        }
        .check()?,
    )?
    .classify(&model, batches(&x, 3)?)?;
    assert_eq!(bma.probs.dims(), &[8 * 6, 260]);
    assert_eq!(
        params.flatten()?.to_vec1::<f32>()?,
        trained.to_vec1::<f32>()?
    );
    posterior.write_mean_into(&params)?;
    let probs = candle_nn::ops::softmax(&model.forward_t(&x, false)?, 1)?;
    let diff = rel_err(&bma.probs, &probs)?;
    assert!(
        diff < 1e-6,
        "BMA at scale 0 against the SWA-mean model: {diff}"
    );
    Ok(())
}
