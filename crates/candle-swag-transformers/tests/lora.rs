//! LoRA mechanics, files and errors, checked against values computed independently.

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use candle_swag::Result;
use candle_swag_transformers::{arch, config, tiny, Arch, BaseModel, Lora, LoraModel, LoraParams};
use candle_transformers::models::{bert, llama};

fn tiny_dir(arch: Arch, seed: u64) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir().map_err(|e| candle_swag::Error::io("tempdir", e))?;
    tiny::write_random_model(arch, dir.path(), seed)?;
    Ok(dir)
}

fn byte_ids(n: usize, len: usize, dev: &Device) -> Result<Tensor> {
    let ids: Vec<u32> = (0..n * len)
        .map(|i| 97 + ((i * 7 + i / len) % 26) as u32)
        .collect();
    Ok(Tensor::from_vec(ids, (n, len), dev)?)
}

/// Writes deterministic non-zero values into every `B` (and so a non-trivial update).
fn perturb_b(lora: &Lora) -> Result<()> {
    for (k, ad) in lora.adapters().values().enumerate() {
        let (out, r) = ad.b.dims2()?;
        let v: Vec<f32> = (0..out * r)
            .map(|i| ((i * 13 + k * 5) % 17) as f32 / 17.0 - 0.5)
            .collect();
        ad.b.set(&Tensor::from_vec(v, (out, r), lora.device())?)?;
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn with_b_zero_the_adapted_bert_equals_the_base_bert_exactly() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Bert, 1)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let cfg = config::bert(base.config(), &dir.path().join("config.json"))?;
    let lora = Lora::new(
        &base,
        &LoraParams {
            new_weights: vec![arch::HEAD.into()],
            ..LoraParams::new(
                &["*.attention.self.query.weight", "*.output.dense.weight"],
                4,
            )
        }
        .check()?,
        &dev,
    )?;
    let model = LoraModel::new(&lora, DType::F32, arch::bert_classifier(cfg.clone(), 2))?;
    let x = byte_ids(3, 10, &dev)?;
    let ours = model.model()?.features(&x)?;
    // The base model built by candle-transformers' own loader over the checkpoint's tensors.
    let plain = bert::BertModel::load(
        VarBuilder::from_tensors(base.tensors().clone(), DType::F32, &dev),
        &cfg,
    )?;
    let reference = plain
        .forward(&x, &x.zeros_like()?, None)?
        .narrow(1, 0, 1)?
        .squeeze(1)?;
    assert_eq!(ours.to_vec2::<f32>()?, reference.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn with_b_zero_the_adapted_llama_equals_the_base_llama_exactly() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Llama, 2)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let cfg = config::llama(base.config(), &dir.path().join("config.json"))?;
    assert!(cfg.tie_word_embeddings && cfg.num_key_value_heads < cfg.num_attention_heads);
    let lora = Lora::new(
        &base,
        &LoraParams::new(&["*.q_proj.weight", "*.v_proj.weight"], 2).check()?,
        &dev,
    )?;
    let model = LoraModel::new(&lora, DType::F32, arch::llama_next_token(cfg.clone()))?;
    let x = byte_ids(2, 9, &dev)?;
    let ours = model.forward_t(&x, false)?;
    let plain = arch::llama_next_token(cfg)(VarBuilder::from_tensors(
        base.tensors().clone(),
        DType::F32,
        &dev,
    ))?;
    assert_eq!(
        ours.to_vec2::<f32>()?,
        plain.forward_t(&x, false)?.to_vec2::<f32>()?
    );
    // A non-zero B changes the output, and the model sees it without an explicit rebuild.
    perturb_b(&lora)?;
    let changed = model.forward_t(&x, false)?;
    assert!(max_abs_diff(&changed, &ours)? > 1e-4);
    assert_eq!(model.rebuild_count(), 1);
    Ok(())
}

#[test]
fn merged_weight_is_w0_plus_scaled_b_times_a_by_hand() -> Result<()> {
    let dev = Device::Cpu;
    let w0: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let tensors = HashMap::from([(
        "lin.weight".to_string(),
        Tensor::from_vec(w0.clone(), (3, 4), &dev)?,
    )]);
    let base = BaseModel::from_tensors(serde_json::json!({}), tensors)?;
    let lora = Lora::new(
        &base,
        &LoraParams {
            alpha: 3.0,
            ..LoraParams::new(&["lin.*"], 2)
        }
        .check()?,
        &dev,
    )?;
    let ad = &lora.adapters()["lin.weight"];
    let a: Vec<f32> = vec![0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, 1.0]; // [2, 4]
    let b: Vec<f32> = vec![1.0, 2.0, -1.0, 0.5, 0.0, 3.0]; // [3, 2]
    ad.a.set(&Tensor::from_vec(a.clone(), (2, 4), &dev)?)?;
    ad.b.set(&Tensor::from_vec(b.clone(), (3, 2), &dev)?)?;
    let merged = lora.merged_weight("lin.weight")?.to_vec2::<f32>()?;
    let scale = 3.0 / 2.0;
    for i in 0..3 {
        for j in 0..4 {
            let ba: f64 = (0..2)
                .map(|k| b[i * 2 + k] as f64 * a[k * 4 + j] as f64)
                .sum();
            let want = w0[i * 4 + j] as f64 + scale * ba;
            assert!(
                (merged[i][j] as f64 - want).abs() < 1e-6,
                "({i},{j}): {} vs {want}",
                merged[i][j]
            );
        }
    }
    Ok(())
}

#[test]
fn a_is_kaiming_uniform_and_b_zero_at_init() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Llama, 3)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let lora = Lora::new(
        &base,
        &LoraParams::new(&["*.o_proj.weight"], 3).check()?,
        &dev,
    )?;
    for ad in lora.adapters().values() {
        let (_, inp) = ad.a.dims2()?;
        let bound = 1.0 / (inp as f32).sqrt();
        let a = ad.a.flatten_all()?.to_vec1::<f32>()?;
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| *v != 0.0));
        assert!(ad
            .b
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| *v == 0.0));
    }
    Ok(())
}

#[test]
fn the_merged_file_reloads_to_the_same_outputs() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Llama, 4)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let cfg = config::llama(base.config(), &dir.path().join("config.json"))?;
    let lora = Lora::new(
        &base,
        &LoraParams::new(&["*.q_proj.weight", "*.down_proj.weight"], 2).check()?,
        &dev,
    )?;
    let model = LoraModel::new(&lora, DType::F32, arch::llama_next_token(cfg.clone()))?;
    perturb_b(&lora)?;
    let x = byte_ids(2, 7, &dev)?;
    let ours = model.forward_t(&x, false)?;
    let out = dir.path().join("merged.safetensors");
    lora.write_merged(&out)?;
    // Reloaded with candle's own safetensors reader and candle-transformers' loader.
    let reloaded = candle_core::safetensors::load(&out, &dev)?;
    assert!(!reloaded.keys().any(|k| k.contains("lora_")));
    let plain = arch::llama_next_token(cfg)(VarBuilder::from_tensors(reloaded, DType::F32, &dev))?;
    assert!(max_abs_diff(&ours, &plain.forward_t(&x, false)?)? < 1e-6);
    Ok(())
}

#[test]
fn adapters_round_trip_and_are_refused_on_another_base() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Bert, 5)?;
    let targets = LoraParams {
        new_weights: vec![arch::HEAD.into()],
        ..LoraParams::new(&["*.attention.self.value.weight"], 2)
    }
    .check()?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let cfg = config::bert(base.config(), &dir.path().join("config.json"))?;
    let lora = Lora::new(&base, &targets, &dev)?;
    let model = LoraModel::new(&lora, DType::F32, arch::bert_classifier(cfg.clone(), 3))?;
    perturb_b(&lora)?;
    let x = byte_ids(2, 6, &dev)?;
    let before = model.forward_t(&x, false)?;
    let file = dir.path().join("adapters.safetensors");
    lora.save_adapters(&file)?;

    // A fresh set of adapters (B = 0, another seed) takes the saved values back.
    let reseeded = LoraParams {
        seed: 9,
        ..(*targets).clone()
    }
    .check()?;
    let lora2 = Lora::new(&base, &reseeded, &dev)?;
    let model2 = LoraModel::new(&lora2, DType::F32, arch::bert_classifier(cfg, 3))?;
    assert!(max_abs_diff(&before, &model2.forward_t(&x, false)?)? > 1e-5);
    lora2.load_adapters(&file)?;
    assert_eq!(
        before.to_vec2::<f32>()?,
        model2.forward_t(&x, false)?.to_vec2::<f32>()?
    );

    // Another base model (other weights): refused, naming both digests, nothing changed.
    let other_dir = tiny_dir(Arch::Bert, 6)?;
    let other = BaseModel::load(other_dir.path(), &dev)?;
    assert_ne!(other.digest(), base.digest());
    let lora3 = Lora::new(&other, &targets, &dev)?;
    let err = lora3.load_adapters(&file).unwrap_err().to_string();
    assert!(
        err.contains("trained on base model") && err.contains(base.digest()),
        "{err}"
    );
    assert!(err.contains(other.digest()), "{err}");
    assert!(lora3.adapters().values().all(|ad| ad
        .b
        .sum_all()
        .and_then(|s| s.to_scalar::<f32>())
        .ok()
        == Some(0.0)));
    Ok(())
}

#[test]
fn the_digest_is_of_the_content_not_the_file_bytes() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Vit, 7)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    // The same tensors written by candle (another header layout, no metadata).
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).map_err(|e| candle_swag::Error::io(&copy, e))?;
    candle_core::safetensors::save(base.tensors(), copy.join("model.safetensors"))?;
    std::fs::copy(dir.path().join("config.json"), copy.join("config.json"))
        .map_err(|e| candle_swag::Error::io(&copy, e))?;
    assert_eq!(BaseModel::load(&copy, &dev)?.digest(), base.digest());
    assert!(base.digest().starts_with("sha256:") && base.digest().len() == 7 + 64);
    Ok(())
}

#[test]
fn bad_targets_name_the_closest_weights_and_bad_ranks_the_weight() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Bert, 8)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let err = Lora::new(
        &base,
        &LoraParams::new(&["*.q_proj.weight"], 2).check()?,
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`*.q_proj.weight` matches no weight"), "{err}");
    assert!(
        err.contains("encoder.layer.*.attention.self.query.weight"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    let err = Lora::new(
        &base,
        &LoraParams::new(&["*.attention.self.key.weight"], 65).check()?,
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rank 65 is larger than weight `encoder.layer.0.attention.self.key.weight`'s dimensions [64, 64]"), "{err}");

    let err = Lora::new(
        &base,
        &LoraParams::new(&["*.LayerNorm.weight"], 1).check()?,
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("2-D weights only"), "{err}");
    Ok(())
}

#[test]
fn bad_model_directories_and_configs_are_named() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Llama, 10)?;
    let path = dir.path().join("config.json");
    let good = tiny::tiny_config(Arch::Llama);

    let mut missing = good.clone();
    missing.as_object_mut().map(|o| o.remove("hidden_size"));
    let err = config::llama(&missing, &path).unwrap_err().to_string();
    assert!(err.contains("field `hidden_size` is missing"), "{err}");

    let mut ill_typed = good.clone();
    ill_typed["num_attention_heads"] = serde_json::json!("four");
    let err = config::llama(&ill_typed, &path).unwrap_err().to_string();
    assert!(
        err.contains("field `num_attention_heads` must be a non-negative integer"),
        "{err}"
    );

    let mut ill_typed = tiny::tiny_config(Arch::Vit);
    ill_typed["qkv_bias"] = serde_json::json!(1);
    let err = config::vit(&ill_typed, &path).unwrap_err().to_string();
    assert!(
        err.contains("field `qkv_bias` must be true or false"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("model.safetensors"))
        .map_err(|e| candle_swag::Error::io("rm", e))?;
    let err = BaseModel::load(dir.path(), &dev).unwrap_err().to_string();
    assert!(err.contains("has no weights"), "{err}");
    assert!(!dir.path().join("model.safetensors").exists());
    Ok(())
}

#[test]
fn a_config_that_disagrees_with_the_weights_is_an_error_not_a_panic() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tiny_dir(Arch::Llama, 11)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let mut cfg = config::llama(base.config(), &dir.path().join("config.json"))?;
    cfg.intermediate_size = 96; // the checkpoint says 128
    let lora = Lora::new(
        &base,
        &LoraParams::new(&["*.q_proj.weight"], 2).check()?,
        &dev,
    )?;
    let err = LoraModel::new(&lora, DType::F32, arch::llama_next_token(cfg))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gate_proj.weight") && err.contains("[128, 64]"),
        "{err}"
    );
    let _: llama::Config;
    Ok(())
}
