//! Tiny random-weight models in Hugging Face layout, for tests and the smoke example: a
//! `config.json` and a `model.safetensors` with exactly the names the candle-transformers model
//! asks for (the model is built once over a `VarMap` and its variables saved). Weights are
//! drawn on the host from a seeded `StdRng` (candle's CPU generator cannot be seeded): norm
//! scales stay 1, biases 0, everything else `N(0, 0.08²)`. The vocabulary is 260 (bytes plus a
//! few specials) so that byte-level input ids work; about 0.1 M parameters each.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_swag::{Error, Result};
use candle_transformers::models::{bert, llama, vit};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::json;

use crate::config::{self, Arch};

/// The config of the tiny model of `arch`.
pub fn tiny_config(arch: Arch) -> serde_json::Value {
    match arch {
        Arch::Bert => json!({
            "model_type": "bert", "vocab_size": 260, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
        }),
        Arch::Llama => json!({
            "model_type": "llama", "vocab_size": 260, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 64, "tie_word_embeddings": true
        }),
        Arch::Vit => json!({
            "model_type": "vit", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "image_size": 16, "patch_size": 4, "num_channels": 1,
            "qkv_bias": true
        }),
    }
}

/// Writes the tiny random model of `arch` into `dir` (created if needed), both files
/// atomically. Returns the number of parameters.
pub fn write_random_model(arch: Arch, dir: impl AsRef<Path>, seed: u64) -> Result<usize> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = tiny_config(arch);
    let name = Path::new(crate::base::CONFIG_FILE);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    match arch {
        Arch::Bert => {
            bert::BertModel::load(vb, &config::bert(&cfg, name)?)?;
        }
        Arch::Llama => {
            llama::Llama::load(vb, &config::llama(&cfg, name)?)?;
        }
        Arch::Vit => {
            let c = config::vit(&cfg, name)?;
            let v = vb.pp("vit");
            vit::Embeddings::new(&c, false, v.pp("embeddings"))?;
            vit::Encoder::new(&c, v.pp("encoder"))?;
            candle_nn::layer_norm(c.hidden_size, c.layer_norm_eps, v.pp("layernorm"))?;
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.08).map_err(|e| Error::invalid("std", e.to_string()))?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::invalid("varmap", "the VarMap lock is poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    let mut numel = 0;
    for n in names {
        let t = data[n].as_tensor();
        numel += t.elem_count();
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let keep = values.iter().all(|&v| v == 1.0) || n.ends_with("bias");
        let values: Vec<f32> = if keep {
            values
        } else {
            (0..values.len()).map(|_| normal.sample(&mut rng)).collect()
        };
        tensors.insert(n.clone(), Tensor::from_vec(values, t.dims(), &Device::Cpu)?);
    }
    let text = serde_json::to_string_pretty(&cfg)?;
    candle_swag::crash_safe::write_file_atomic(
        dir.join(crate::base::CONFIG_FILE),
        text.as_bytes(),
    )?;
    crate::lora::write_safetensors(
        dir.join(crate::base::WEIGHTS_FILE),
        &tensors,
        HashMap::new(),
    )?;
    Ok(numel)
}
