//! A trainable Llama-family decoder (Llama, Mistral, Qwen2): the checkpoints candle-transformers
//! loads, computed with the crate's differentiable [`crate::ops`], LoRA adapters read at forward
//! time, logits for every position.
//!
//! # Conventions
//! - **Checkpoints.** A Hugging Face directory (`config.json` + `model.safetensors`, loaded as a
//!   [`BaseModel`]) of a `LlamaForCausalLM`, `MistralForCausalLM` or `Qwen2ForCausalLM`:
//!   `model.embed_tokens.weight`, `model.layers.N.self_attn.{q,k,v,o}_proj.weight`,
//!   `model.layers.N.mlp.{gate,up,down}_proj.weight`, `model.layers.N.input_layernorm.weight`,
//!   `model.layers.N.post_attention_layernorm.weight`, `model.norm.weight` and, unless
//!   `tie_word_embeddings` is true, `lm_head.weight` (with tied embeddings the output projection
//!   is the embedding table and `lm_head.weight` is not read).
//! - **Config** ([`LlamaConfig`]): `model_type` `llama`, `mistral` or `qwen2` (absent: read as
//!   `llama`); any other is refused, naming the families the crate trains. Grouped-query
//!   attention from `num_key_value_heads` (query head `i` reads key/value head
//!   `i / (heads / kv_heads)`, as Hugging Face's `repeat_kv`), `head_dim` when the config has it
//!   (else `hidden_size / num_attention_heads`), RoPE with `rope_theta` (10000 when absent) in
//!   the non-interleaved convention ([`crate::ops::rope`]), Llama 3 `rope_scaling`
//!   (`rope_type: llama3`, as candle-transformers computes it; other scalings are refused), RMS
//!   norm with `rms_norm_eps`, a SiLU-gated MLP (`hidden_act` must be `silu` when present).
//! - **Biases.** Every linear layer reads `{name}.bias` when the checkpoint has it. Qwen2 must
//!   have q/k/v biases, a Llama config with `attention_bias: true` q/k/v/o biases (a missing one
//!   is an error naming the weight); Mistral has none.
//! - **Sliding window.** Mistral's `sliding_window` (and Qwen2's, only when
//!   `use_sliding_window` is true) limits each query to the `sliding_window` most recent keys,
//!   itself included (Hugging Face's convention: key `j` is visible from query `i` when
//!   `0 ≤ i − j < sliding_window`). It only matters for sequences longer than the window.
//! - **Adapters.** Every linear layer (q/k/v/o projections, gate/up/down projections, and an
//!   untied `lm_head`) is a [`LoraLinear`]; an adapter of the [`Lora`] attaches where its weight
//!   name matches (`model.layers.N.self_attn.q_proj.weight`, ...). An adapter on a weight that
//!   is not used as a linear layer (the embedding table, tied or not) is refused when the model
//!   is built. Nothing is merged: a write into the factors is seen by the next forward.
//! - **Inputs.** `input_ids [n, L]` (u8, u32 or i64) and an optional `attention_mask [n, L]`
//!   (1 for a real token, 0 for padding). Attention is causal; a padded key gets
//!   `f32::MIN` added to its scores (so it receives no weight from a query that sees any real
//!   key). Positions are `0..L` whatever the mask: pad on the **right**, and the logits at real
//!   tokens equal those of the unpadded sequence. `L` may not exceed `max_position_embeddings`.
//! - **Outputs.** [`LlamaModel::forward`] gives the logits of **every** position,
//!   `[n, L, vocab]`: position `t` predicts token `t + 1`, so one pass per sequence serves
//!   next-token training and per-token BMA. Logits are f32 (f64 when the model computes in f64);
//!   attention is computed in f32 for f16/bf16 models, as candle-transformers does.
//! - **No dropout** (Llama, Mistral and Qwen2 train without it); the LoRA dropout of
//!   [`LlamaOptions`] acts on the adapters' input in training only.
//! - **As a `ModuleT`** (what `candle_swag::Predictive` and a training loop call), the input is
//!   the ids `[n, L]`, or ids and mask stacked as `[n, 2, L]`, or the tokenizer's packed ids,
//!   token types (ignored) and mask `[n, 3, L]` ([`crate::tokenize::Encoded::packed`]); the
//!   output is the logits flattened to `[n·L, vocab]` (row `i·L + t` is sequence `i`, position
//!   `t`), so `Predictive::classify` gives a per-token BMA and `candle_nn::loss::cross_entropy`
//!   takes the shifted targets directly (see [`LlamaModel::next_token_loss`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, ModuleT, Tensor};
use candle_swag::{Error, Result};
use serde_json::Value;

use super::lora_linear::LoraLinear;
use crate::base::{BaseModel, CONFIG_FILE, WEIGHTS_FILE};
use crate::lora::Lora;
use crate::ops::{self, DropoutStream};

/// The `model_type`s this family reads.
pub const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

/// Which member of the family a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `model_type: llama` (or no `model_type`).
    Llama,
    /// `model_type: mistral`.
    Mistral,
    /// `model_type: qwen2` (q/k/v biases).
    Qwen2,
}

/// Llama 3 rotary scaling (`rope_scaling` with `rope_type: llama3`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

/// A Llama-family `config.json`, every field checked (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Which family member.
    pub family: Family,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (`num_attention_heads` when absent).
    pub num_key_value_heads: usize,
    /// `head_dim` (`hidden_size / num_attention_heads` when absent).
    pub head_dim: usize,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `rope_theta` (10000 when absent).
    pub rope_theta: f64,
    /// Llama 3 `rope_scaling`, if any.
    pub rope_scaling: Option<Llama3Scaling>,
    /// `max_position_embeddings`: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// `tie_word_embeddings` (false when absent, as Hugging Face's default).
    pub tie_word_embeddings: bool,
    /// `attention_bias` (Llama; false when absent).
    pub attention_bias: bool,
    /// The sliding window in effect (Mistral's `sliding_window`; Qwen2's when
    /// `use_sliding_window`), if any.
    pub sliding_window: Option<usize>,
}

/// Reads optional, typed fields of a config, naming the file and the field in errors.
struct Fields<'a> {
    config: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        match self.config.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn missing(&self, name: &str, what: &str) -> Error {
        Error::bad_file(
            self.path,
            format!("field `{name}` is missing (expected {what})"),
        )
    }

    fn usize_opt(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::bad_file(
                        self.path,
                        format!("field `{name}` must be a non-negative integer, got {v}"),
                    )
                }),
        }
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.usize_opt(name)?
            .ok_or_else(|| self.missing(name, "a non-negative integer"))
    }

    fn positive(&self, name: &str) -> Result<usize> {
        let v = self.usize(name)?;
        if v == 0 {
            return Err(Error::bad_file(
                self.path,
                format!("field `{name}` must be at least 1, got 0"),
            ));
        }
        Ok(v)
    }

    fn f64_opt(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::bad_file(
                    self.path,
                    format!("field `{name}` must be a number, got {v}"),
                )
            }),
        }
    }

    fn bool_opt(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                Error::bad_file(
                    self.path,
                    format!("field `{name}` must be true or false, got {v}"),
                )
            }),
        }
    }

    fn str_opt(&self, name: &str) -> Result<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                Error::bad_file(
                    self.path,
                    format!("field `{name}` must be a string, got {v}"),
                )
            }),
        }
    }
}

impl LlamaConfig {
    /// Reads a Llama, Mistral or Qwen2 config (`path` names the file in errors).
    ///
    /// Errors (one line, naming the file and field): a `model_type` of another family (naming
    /// the families the crate trains), a missing or ill-typed field, head counts that do not
    /// divide, an odd head dimension, a `hidden_act` other than `silu`, a `rope_scaling` other
    /// than Llama 3's, a non-positive `rms_norm_eps` or `rope_theta`.
    pub fn from_json(config: &Value, path: &Path) -> Result<Self> {
        super::check_family(config, path, MODEL_TYPES)?;
        let f = Fields { config, path };
        let family = match f.str_opt("model_type")? {
            Some("mistral") => Family::Mistral,
            Some("qwen2") => Family::Qwen2,
            _ => Family::Llama,
        };
        let vocab_size = f.positive("vocab_size")?;
        let hidden_size = f.positive("hidden_size")?;
        let intermediate_size = f.positive("intermediate_size")?;
        let num_hidden_layers = f.usize("num_hidden_layers")?;
        let num_attention_heads = f.positive("num_attention_heads")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(Error::bad_file(
                path,
                format!(
                    "field `num_key_value_heads` ({num_key_value_heads}) must divide `num_attention_heads` ({num_attention_heads})"
                ),
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "field `num_attention_heads` ({num_attention_heads}) must divide `hidden_size` ({hidden_size}) when there is no `head_dim`"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::bad_file(
                path,
                format!("the head dimension ({head_dim}) must be even and positive (rotary embeddings rotate pairs)"),
            ));
        }
        let rms_norm_eps = f
            .f64_opt("rms_norm_eps")?
            .ok_or_else(|| f.missing("rms_norm_eps", "a number"))?;
        let rope_theta = f.f64_opt("rope_theta")?.unwrap_or(10_000.0);
        for (name, v) in [("rms_norm_eps", rms_norm_eps), ("rope_theta", rope_theta)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::bad_file(
                    path,
                    format!("field `{name}` must be a positive number, got {v}"),
                ));
            }
        }
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(Error::bad_file(
                    path,
                    format!("field `hidden_act` is `{act}`; the Llama family's MLP is SiLU-gated (`silu`)"),
                ));
            }
        }
        let rope_scaling = Self::rope_scaling(&f)?;
        let max_position_embeddings = f.positive("max_position_embeddings")?;
        let tie_word_embeddings = f.bool_opt("tie_word_embeddings")?.unwrap_or(false);
        let attention_bias = f.bool_opt("attention_bias")?.unwrap_or(false);
        let sliding_window = match family {
            Family::Llama => None,
            Family::Mistral => f.usize_opt("sliding_window")?,
            Family::Qwen2 => {
                if f.bool_opt("use_sliding_window")?.unwrap_or(false) {
                    return Err(Error::bad_file(
                        path,
                        "field `use_sliding_window` is true: Qwen2's per-layer sliding window (`max_window_layers`) is not supported; set it to false",
                    ));
                }
                None
            }
        };
        if sliding_window == Some(0) {
            return Err(Error::bad_file(
                path,
                "field `sliding_window` must be at least 1, got 0",
            ));
        }
        Ok(Self {
            family,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
            attention_bias,
            sliding_window,
        })
    }

    fn rope_scaling(f: &Fields<'_>) -> Result<Option<Llama3Scaling>> {
        let Some(v) = f.get("rope_scaling") else {
            return Ok(None);
        };
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(Value::as_str);
        match kind {
            Some("default") => Ok(None),
            Some("llama3") => {
                let num = |name: &str| -> Result<f64> {
                    v.get(name).and_then(Value::as_f64).ok_or_else(|| {
                        Error::bad_file(
                            f.path,
                            format!("field `rope_scaling.{name}` is missing or not a number"),
                        )
                    })
                };
                let original = v
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_u64)
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| {
                        Error::bad_file(
                            f.path,
                            "field `rope_scaling.original_max_position_embeddings` is missing or not a non-negative integer",
                        )
                    })?;
                let s = Llama3Scaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: original,
                };
                if s.high_freq_factor == s.low_freq_factor || s.factor == 0.0 {
                    return Err(Error::bad_file(
                        f.path,
                        "field `rope_scaling`: `factor` must be non-zero and `high_freq_factor` differ from `low_freq_factor`",
                    ));
                }
                Ok(Some(s))
            }
            _ => Err(Error::bad_file(
                f.path,
                format!("field `rope_scaling` is {v}; only Llama 3's (`rope_type: llama3`) is supported"),
            )),
        }
    }

    /// The rotary inverse frequencies (`head_dim / 2` of them), in f32 as candle-transformers'
    /// Llama computes them (Llama 3 scaling included).
    fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let theta = self.rope_theta as f32;
        let base = (0..d)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / d as f32));
        match &self.rope_scaling {
            None => base.collect(),
            Some(s) => {
                let original = s.original_max_position_embeddings as f32;
                let (factor, low, high) = (
                    s.factor as f32,
                    s.low_freq_factor as f32,
                    s.high_freq_factor as f32,
                );
                let low_wavelen = original / low;
                let high_wavelen = original / high;
                base.map(|freq| {
                    let wavelen = 2. * std::f32::consts::PI / freq;
                    if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (original / wavelen - low) / (high - low);
                        (1. - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect()
            }
        }
    }
}

/// How to build a [`LlamaModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaOptions {
    /// The dtype the model computes in (f32 by default; adapters stay f32 `Var`s).
    pub dtype: DType,
    /// LoRA dropout on the adapters' input in training (PEFT's `lora_dropout`), in `[0, 1)`.
    pub lora_dropout: f32,
    /// The seed of the model's dropout masks (a [`DropoutStream`]; 0 by default): two models
    /// built with one seed draw the same masks through the same training forwards. Give
    /// independently trained runs (an ensemble, MultiSWAG) different seeds.
    pub dropout_seed: u64,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            lora_dropout: 0.0,
            dropout_seed: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    input_norm: Tensor,
    post_attention_norm: Tensor,
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut LoraLinear; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }

    fn linears(&self) -> [&LoraLinear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

/// Reads the checkpoint's tensors by name, checking shapes, in the model's dtype.
struct Loader<'a> {
    base: &'a BaseModel,
    dtype: DType,
    weights_path: PathBuf,
}

impl Loader<'_> {
    fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let t = self.base.tensors().get(name).ok_or_else(|| {
            Error::bad_file(
                &self.weights_path,
                format!("weight `{name}` is missing (the Llama-family decoder reads it)"),
            )
        })?;
        if t.dims() != dims {
            return Err(Error::bad_file(
                &self.weights_path,
                format!(
                    "weight `{name}` has shape {:?}, config.json implies {dims:?}",
                    t.dims()
                ),
            ));
        }
        Ok(t.to_dtype(self.dtype)?.detach())
    }

    /// A linear layer `{stem}.weight [out, inp]`, with `{stem}.bias` when the checkpoint has
    /// it (required when `bias_required`).
    fn linear(
        &self,
        stem: &str,
        out: usize,
        inp: usize,
        bias_required: bool,
    ) -> Result<LoraLinear> {
        let w_name = format!("{stem}.weight");
        let b_name = format!("{stem}.bias");
        let w = self.get(&w_name, &[out, inp])?;
        let b = if bias_required || self.base.tensors().contains_key(&b_name) {
            Some(self.get(&b_name, &[out])?)
        } else {
            None
        };
        Ok(LoraLinear::new(w_name, w, b))
    }
}

/// The trainable Llama-family decoder (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    config: LlamaConfig,
    config_path: PathBuf,
    dtype: DType,
    device: Device,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: LoraLinear,
    /// `[1, head_dim / 2]`, f32.
    inv_freq: Tensor,
}

impl LlamaModel {
    /// The decoder over `lora`'s base model with its adapters attached.
    ///
    /// Errors (naming the file and field or weight): a config of another family or with a bad
    /// field, a missing weight or one whose shape disagrees with the config, a missing bias the
    /// config implies, an adapter on a weight the decoder does not use as a linear layer.
    pub fn new(lora: &Lora, options: &LlamaOptions) -> Result<Self> {
        Self::build(lora.base(), Some(lora), options)
    }

    /// The decoder over `base` without adapters (inference, or a reference).
    pub fn frozen(base: &BaseModel, options: &LlamaOptions) -> Result<Self> {
        Self::build(base, None, options)
    }

    fn build(base: &BaseModel, lora: Option<&Lora>, options: &LlamaOptions) -> Result<Self> {
        let config_path = base.dir().join(CONFIG_FILE);
        let weights_path = base.dir().join(WEIGHTS_FILE);
        let c = LlamaConfig::from_json(base.config(), &config_path)?;
        if !(0.0..1.0).contains(&options.lora_dropout) {
            return Err(Error::invalid(
                "lora_dropout",
                format!("must be in [0, 1), got {}", options.lora_dropout),
            ));
        }
        if !options.dtype.is_float() {
            return Err(Error::invalid(
                "dtype",
                format!("a model computes in a float dtype, got {:?}", options.dtype),
            ));
        }
        let embed_name = "model.embed_tokens.weight";
        let device = base
            .tensors()
            .get(embed_name)
            .map(|t| t.device().clone())
            .ok_or_else(|| {
                Error::bad_file(
                    &weights_path,
                    format!("no weight `{embed_name}`: not a Llama-family checkpoint"),
                )
            })?;
        let ld = Loader {
            base,
            dtype: options.dtype,
            weights_path,
        };
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let qkv_bias = c.family == Family::Qwen2 || c.attention_bias;
        let o_bias = c.attention_bias;
        let embed_tokens = ld.get(embed_name, &[v, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let p = format!("model.layers.{n}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(Layer {
                q_proj: ld.linear(&format!("{a}.q_proj"), q_dim, h, qkv_bias)?,
                k_proj: ld.linear(&format!("{a}.k_proj"), kv_dim, h, qkv_bias)?,
                v_proj: ld.linear(&format!("{a}.v_proj"), kv_dim, h, qkv_bias)?,
                o_proj: ld.linear(&format!("{a}.o_proj"), h, q_dim, o_bias)?,
                input_norm: ld.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attention_norm: ld
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_proj: ld.linear(&format!("{m}.gate_proj"), i, h, false)?,
                up_proj: ld.linear(&format!("{m}.up_proj"), i, h, false)?,
                down_proj: ld.linear(&format!("{m}.down_proj"), h, i, false)?,
            });
        }
        let norm = ld.get("model.norm.weight", &[h])?;
        let mut lm_head = if c.tie_word_embeddings {
            LoraLinear::new(embed_name, embed_tokens.clone(), None)
        } else {
            ld.linear("lm_head", v, h, false)?
        };
        let masks = std::sync::Arc::new(DropoutStream::new(options.dropout_seed));
        if let Some(lora) = lora {
            if !lora.device().same_device(&device) {
                return Err(Error::invalid(
                    "device",
                    format!(
                        "the adapters are on {:?}, the base weights on {device:?}",
                        lora.device()
                    ),
                ));
            }
            let scale = lora.config().scale();
            let mut used = std::collections::BTreeSet::new();
            let mut attach = |lin: &mut LoraLinear| {
                if let Some(ad) = lora.adapters().get(lin.name()) {
                    used.insert(lin.name().to_string());
                    *lin = lin
                        .clone()
                        .with_adapter(ad, scale, options.lora_dropout, masks.clone());
                }
            };
            for layer in &mut layers {
                for lin in layer.linears_mut() {
                    attach(lin);
                }
            }
            if !c.tie_word_embeddings {
                attach(&mut lm_head);
            }
            let unused: Vec<&String> = lora
                .adapters()
                .keys()
                .filter(|n| !used.contains(*n))
                .collect();
            if let Some(first) = unused.first() {
                return Err(Error::invalid(
                    "targets",
                    format!(
                        "adapter on `{first}`{}, which the trainable Llama-family decoder does not use as a linear layer; target the q/k/v/o projections, the gate/up/down projections or an untied lm_head",
                        if unused.len() > 1 {
                            format!(" (and {} more)", unused.len() - 1)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
        }
        let inv_freq = c.inv_freq();
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), &device)?;
        Ok(Self {
            config: c,
            config_path,
            dtype: options.dtype,
            device,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// The config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The longest sequence the model takes (`max_position_embeddings`).
    pub fn max_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The adapted linear layers' weight names, in layer order (an adapted `lm_head` last).
    pub fn adapted(&self) -> Vec<&str> {
        self.layers
            .iter()
            .flat_map(|l| l.linears())
            .chain(std::iter::once(&self.lm_head))
            .filter(|l| l.is_adapted())
            .map(|l| l.name())
            .collect()
    }

    /// Checks the inputs' shapes and the sequence length; returns `(n, L)`.
    fn check_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<(usize, usize)> {
        let (n, len) = match input_ids.dims() {
            [n, l] => (*n, *l),
            other => candle_core::bail!("input ids must be [n, L], got shape {other:?}"),
        };
        if !matches!(input_ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
            candle_core::bail!(
                "input ids must be integers (u8, u32 or i64), got {:?}",
                input_ids.dtype()
            );
        }
        if len == 0 {
            candle_core::bail!("input ids [{n}, 0]: a sequence needs at least one token");
        }
        if len > self.max_len() {
            candle_core::bail!(
                "a sequence of {len} tokens is longer than the model's `max_position_embeddings` ({}) in {}; truncate it (crate::tokenize truncates unless told not to)",
                self.max_len(),
                self.config_path.display()
            );
        }
        if let Some(m) = attention_mask {
            if m.dims() != [n, len] {
                candle_core::bail!(
                    "attention mask of shape {:?} does not match the input ids' shape [{n}, {len}]",
                    m.dims()
                );
            }
        }
        Ok((n, len))
    }

    /// The dtype attention is computed in: f64 for f64 models, f32 otherwise.
    fn attention_dtype(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// The additive attention bias, `[1 or n, 1, L, L]`: `−∞` where a key is in the future (or
    /// outside the sliding window), `f32::MIN` where it is padding, 0 elsewhere.
    fn attention_bias(&self, len: usize, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let window = self.config.sliding_window;
        let hidden = |i: usize, j: usize| j > i || window.is_some_and(|w| i - j >= w);
        let keys: Option<Vec<Vec<f32>>> = match mask {
            Some(m) => Some(m.to_dtype(DType::F32)?.to_vec2::<f32>()?),
            None => None,
        };
        let rows = keys.as_ref().map_or(1, |k| k.len());
        let mut bias = Vec::with_capacity(rows * len * len);
        for r in 0..rows {
            for i in 0..len {
                for j in 0..len {
                    let padded = keys.as_ref().is_some_and(|k| k[r][j] == 0.0);
                    bias.push(if hidden(i, j) {
                        f32::NEG_INFINITY
                    } else if padded {
                        f32::MIN
                    } else {
                        0.0
                    });
                }
            }
        }
        Tensor::from_vec(bias, (rows, 1, len, len), &self.device)?.to_dtype(self.attention_dtype())
    }

    /// `cos`, `sin` `[L, head_dim / 2]` in the model's dtype (computed in f32 as
    /// candle-transformers does).
    fn rotary(&self, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let pos = Tensor::arange(0u32, len as u32, &self.device)?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let angles = pos.broadcast_mul(&self.inv_freq)?;
        Ok((
            angles.cos()?.to_dtype(self.dtype)?,
            angles.sin()?.to_dtype(self.dtype)?,
        ))
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = heads / kv_heads;
        let (n, len, _) = x.dims3()?;
        let q = layer
            .q_proj
            .forward_t(x, train)?
            .reshape((n, len, heads, d))?
            .transpose(1, 2)?;
        let k = layer
            .k_proj
            .forward_t(x, train)?
            .reshape((n, len, kv_heads, d))?
            .transpose(1, 2)?;
        let v = layer
            .v_proj
            .forward_t(x, train)?
            .reshape((n, len, kv_heads, d))?
            .transpose(1, 2)?;
        let q = ops::rope(&q, cos, sin)?;
        let k = ops::rope(&k, cos, sin)?;
        let att = self.attention_dtype();
        let (q, k, v) = (q.to_dtype(att)?, k.to_dtype(att)?, v.to_dtype(att)?);
        // Grouped-query attention without repeating k and v: the `rep` query heads of a group
        // are consecutive, so [n, heads, L, d] is [n, kv_heads, rep·L, d].
        let q = q.reshape((n, kv_heads, rep * len, d))?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?
            .reshape((n, heads, len, len))?
            .broadcast_add(bias)?;
        let probs = ops::softmax_last_dim(&scores)?.reshape((n, kv_heads, rep * len, len))?;
        let ctx = probs
            .matmul(&v.contiguous()?)?
            .reshape((n, heads, len, d))?
            .transpose(1, 2)?
            .reshape((n, len, heads * d))?
            .to_dtype(self.dtype)?;
        layer.o_proj.forward_t(&ctx, train)
    }

    /// The final hidden states `[n, L, hidden]`, after the last RMS norm (what the output
    /// projection reads).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (n, len) = self.check_inputs(input_ids, attention_mask)?;
        let c = &self.config;
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((n, len, c.hidden_size))?;
        let (cos, sin) = self.rotary(len)?;
        let bias = self.attention_bias(len, attention_mask)?;
        let eps = c.rms_norm_eps;
        for layer in &self.layers {
            let a = ops::rms_norm(&x, &layer.input_norm, eps)?;
            x = (self.attention(layer, &a, &cos, &sin, &bias, train)? + &x)?;
            let m = ops::rms_norm(&x, &layer.post_attention_norm, eps)?;
            let gate = layer.gate_proj.forward_t(&m, train)?.silu()?;
            let up = layer.up_proj.forward_t(&m, train)?;
            x = (layer.down_proj.forward_t(&(gate * up)?, train)? + &x)?;
        }
        ops::rms_norm(&x, &self.norm, eps)
    }

    /// The logits of every position, `[n, L, vocab]` (f32; f64 for an f64 model): position `t`
    /// scores the token at `t + 1` (see the [module docs](self) for the inputs).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let h = self.hidden_states(input_ids, attention_mask, train)?;
        let logits = self.lm_head.forward_t(&h, train)?;
        logits.to_dtype(self.attention_dtype())
    }

    /// The mean next-token cross-entropy of a batch: the logits at position `t` against the
    /// token at `t + 1`, over the pairs whose target is a real token (mask 1; all when there
    /// is no mask). Sequences need at least 2 tokens. Errors when no pair is left.
    pub fn next_token_loss(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (n, len) = self.check_inputs(input_ids, attention_mask)?;
        if len < 2 {
            candle_core::bail!("next-token loss: sequences of {len} token(s) have no next token");
        }
        let logits = self.forward(input_ids, attention_mask, train)?;
        let vocab = self.config.vocab_size;
        let log_probs = candle_nn::ops::log_softmax(
            &logits
                .narrow(1, 0, len - 1)?
                .reshape((n * (len - 1), vocab))?,
            candle_core::D::Minus1,
        )?;
        let targets = input_ids
            .narrow(1, 1, len - 1)?
            .to_dtype(DType::U32)?
            .reshape((n * (len - 1), 1))?;
        let picked = log_probs.gather(&targets, 1)?.squeeze(1)?;
        let weights = match attention_mask {
            Some(m) => m
                .narrow(1, 1, len - 1)?
                .ne(0u32)?
                .to_dtype(picked.dtype())?
                .reshape(n * (len - 1))?,
            None => picked.ones_like()?,
        };
        let count = weights
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if count == 0.0 {
            candle_core::bail!("next-token loss: the mask leaves no real target token");
        }
        (picked * weights)?.sum_all()?.neg()? / count
    }
}

/// Splits a `ModuleT` input into ids and mask (see the [module docs](self)).
pub fn unpack(xs: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    match xs.dims() {
        [_, _] => Ok((xs.clone(), None)),
        [_, 2, _] => Ok((xs.i((.., 0))?.contiguous()?, Some(xs.i((.., 1))?.contiguous()?))),
        [_, 3, _] => Ok((xs.i((.., 0))?.contiguous()?, Some(xs.i((.., 2))?.contiguous()?))),
        other => candle_core::bail!(
            "a Llama-family model takes ids [n, L], ids and mask [n, 2, L] or packed ids, token types and mask [n, 3, L], got shape {other:?}"
        ),
    }
}

impl ModuleT for LlamaModel {
    /// Logits `[n·L, vocab]` (see the [module docs](self)).
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (ids, mask) = unpack(xs)?;
        let logits = self.forward(&ids, mask.as_ref(), train)?;
        let (n, len, vocab) = logits.dims3()?;
        logits.reshape((n * len, vocab))
    }
}
