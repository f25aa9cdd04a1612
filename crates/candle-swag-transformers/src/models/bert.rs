//! A trainable BERT encoder: the checkpoints candle-transformers' `BertModel` loads, computed
//! with the crate's differentiable [`crate::ops`], LoRA adapters read at forward time.
//!
//! # Conventions
//! - **Checkpoints.** A Hugging Face directory (`config.json` + `model.safetensors`, loaded as
//!   a [`BaseModel`]) with weights named `embeddings.word_embeddings.weight`,
//!   `encoder.layer.N.attention.self.query.weight`, ... either bare (sentence-transformers
//!   checkpoints such as all-MiniLM-L6-v2) or under a `bert.` (or `{model_type}.`) prefix
//!   (`BertForSequenceClassification` and friends). Adapter target patterns match the names as
//!   the checkpoint spells them, so `*.attention.self.query.weight` works for both. The
//!   pretrained pooler and MLM heads, when present, are not read.
//! - **Adapters.** Every linear layer of the encoder (query, key, value, attention output,
//!   intermediate, output) is a [`LoraLinear`]; an adapter of the [`Lora`] attaches where its
//!   weight name matches. An adapter on a weight the encoder does not use as a linear layer
//!   (an embedding table) is refused when the model is built. Nothing is merged: an optimizer
//!   step or a SWAG sample written into the factors is seen by the next forward.
//! - **Inputs.** `input_ids [n, L]` (u8, u32 or i64), `token_type_ids [n, L]` (zeros when
//!   absent), `attention_mask [n, L]` (1 for a real token, 0 for padding; all ones when absent).
//!   Padding is on keys: a padded position gets `finfo(dtype).min` added to its attention
//!   scores (as Hugging Face and candle-transformers do), so the outputs at real tokens do not
//!   depend on the padding. Positions are `0..L`. `L` may not exceed
//!   `max_position_embeddings` (truncate first: [`crate::tokenize`] does).
//! - **Dropout** (`hidden_dropout_prob` after embeddings and each sub-layer output,
//!   `attention_probs_dropout_prob` on attention probabilities, the classifier dropout before
//!   the head) only when `train` is true, as torch's `model.train()`.
//! - **Activation**: the config's `hidden_act` (`gelu` is the exact, erf GELU BERT uses).
//! - **Pooling** ([`Pooling`]): the `[CLS]` (first) token's final hidden state, or the mean
//!   of the final hidden states over real tokens (the mask's). A sentence-transformers
//!   checkpoint says which in `1_Pooling/config.json`; without it, `[CLS]`.
//! - **Classifier** ([`BertClassifier`]): pooled features → optional dropout → a linear head
//!   named [`crate::arch::HEAD`], a new trainable weight of the [`Lora`] (as
//!   `arch::bert_classifier`'s, so adapter files are interchangeable).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, ModuleT, Tensor, D};
use candle_swag::{Error, Result};
use candle_transformers::models::bert::{self as ct_bert, HiddenAct};
use serde_json::Value;

use super::lora_linear::LoraLinear;
use crate::base::{BaseModel, CONFIG_FILE, WEIGHTS_FILE};
use crate::lora::Lora;
use crate::ops::{self, DropoutStream};

/// The sentence-transformers pooling config, relative to the model directory.
pub const POOLING_CONFIG: &str = "1_Pooling/config.json";

/// The `model_type`s this family reads.
pub const MODEL_TYPES: &[&str] = &["bert"];

/// How token states become one vector per sequence (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first (`[CLS]`) token's final hidden state.
    Cls,
    /// The mean of the final hidden states over the real (mask 1) tokens.
    Mean,
}

impl Pooling {
    /// The pooling `dir/1_Pooling/config.json` names, `None` when there is no such file.
    ///
    /// Errors (naming the file and field): unreadable JSON, a mode field that is not a boolean,
    /// no mode or several modes set, or a mode other than CLS and mean tokens.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Pooling>> {
        let path = dir.join(POOLING_CONFIG);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("not valid JSON: {e}")))?;
        let mut set = Vec::new();
        for field in [
            "pooling_mode_cls_token",
            "pooling_mode_mean_tokens",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ] {
            match v.get(field) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => set.push(field),
                Some(other) => {
                    return Err(Error::bad_file(
                        &path,
                        format!("field `{field}` must be true or false, got {other}"),
                    ))
                }
            }
        }
        match set.as_slice() {
            ["pooling_mode_cls_token"] => Ok(Some(Pooling::Cls)),
            ["pooling_mode_mean_tokens"] => Ok(Some(Pooling::Mean)),
            [] => Err(Error::bad_file(
                &path,
                "no pooling mode is set (expected `pooling_mode_cls_token` or `pooling_mode_mean_tokens` true)",
            )),
            [one] => Err(Error::bad_file(
                &path,
                format!("field `{one}`: only CLS and mean-token pooling are supported"),
            )),
            several => Err(Error::bad_file(
                &path,
                format!(
                    "several pooling modes are set ({}); set exactly one of `pooling_mode_cls_token`, `pooling_mode_mean_tokens`",
                    several.join(", ")
                ),
            )),
        }
    }
}

/// How to build a [`BertModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct BertOptions {
    /// The dtype the model computes in (f32 by default; adapters stay f32 `Var`s).
    pub dtype: DType,
    /// The pooling; `None` reads the checkpoint's `1_Pooling/config.json`, `[CLS]` without one.
    pub pooling: Option<Pooling>,
    /// LoRA dropout on the adapters' input in training (PEFT's `lora_dropout`), in `[0, 1)`.
    pub lora_dropout: f32,
    /// The seed of the model's dropout masks (a [`DropoutStream`]; 0 by default): two models
    /// built with one seed draw the same masks through the same training forwards. Give
    /// independently trained runs (an ensemble, MultiSWAG) different seeds.
    pub dropout_seed: u64,
}

impl Default for BertOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            pooling: None,
            lora_dropout: 0.0,
            dropout_seed: 0,
        }
    }
}

/// A BERT `config.json`: candle-transformers' config plus the dropout probabilities it omits.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// The fields candle-transformers reads (checked by [`crate::config::bert`]).
    pub base: ct_bert::Config,
    /// `attention_probs_dropout_prob` (0.1, Hugging Face's default, when absent).
    pub attention_probs_dropout_prob: f64,
    /// The dropout before a classifier head: `classifier_dropout`, else
    /// `hidden_dropout_prob`.
    pub classifier_dropout: f64,
}

impl BertConfig {
    /// Reads a BERT config (`path` names the file in errors).
    ///
    /// Errors: a `model_type` of another family (naming the families the crate trains), a
    /// missing or ill-typed field, a dropout probability outside `[0, 1)`, a position
    /// embedding type other than absolute.
    pub fn from_json(config: &Value, path: &Path) -> Result<Self> {
        super::check_family(config, path, MODEL_TYPES)?;
        let base = crate::config::bert(config, path)?;
        let attention_probs_dropout_prob = match config.get("attention_probs_dropout_prob") {
            None | Some(Value::Null) => 0.1,
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("field `attention_probs_dropout_prob` must be a number, got {v}"),
                )
            })?,
        };
        let classifier_dropout = base.classifier_dropout.unwrap_or(base.hidden_dropout_prob);
        for (field, p) in [
            ("hidden_dropout_prob", base.hidden_dropout_prob),
            ("attention_probs_dropout_prob", attention_probs_dropout_prob),
            ("classifier_dropout", classifier_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::bad_file(
                    path,
                    format!("field `{field}` must be in [0, 1), got {p}"),
                ));
            }
        }
        Ok(Self {
            base,
            attention_probs_dropout_prob,
            classifier_dropout,
        })
    }
}

/// LayerNorm parameters.
#[derive(Debug, Clone)]
struct Norm {
    gamma: Tensor,
    beta: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    attention_output: LoraLinear,
    attention_norm: Norm,
    intermediate: LoraLinear,
    output: LoraLinear,
    output_norm: Norm,
}

/// Reads the checkpoint's tensors by name, checking shapes, in the model's dtype.
struct Loader<'a> {
    base: &'a BaseModel,
    prefix: String,
    dtype: DType,
    weights_path: PathBuf,
}

impl Loader<'_> {
    fn name(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn get(&self, rel: &str, dims: &[usize]) -> Result<Tensor> {
        let name = self.name(rel);
        let t = self.base.tensors().get(&name).ok_or_else(|| {
            Error::bad_file(
                &self.weights_path,
                format!("weight `{name}` is missing (the BERT encoder reads it)"),
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

    fn norm(&self, rel: &str, width: usize, eps: f64) -> Result<Norm> {
        Ok(Norm {
            gamma: self.get(&format!("{rel}.weight"), &[width])?,
            beta: self.get(&format!("{rel}.bias"), &[width])?,
            eps,
        })
    }

    fn linear(&self, rel: &str, out: usize, inp: usize) -> Result<LoraLinear> {
        let w = self.get(&format!("{rel}.weight"), &[out, inp])?;
        let b = self.get(&format!("{rel}.bias"), &[out])?;
        Ok(LoraLinear::new(
            self.name(&format!("{rel}.weight")),
            w,
            Some(b),
        ))
    }
}

/// The trainable BERT encoder (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct BertModel {
    config: BertConfig,
    config_path: PathBuf,
    pooling: Pooling,
    dtype: DType,
    device: Device,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
    /// The dropout masks' stream (shared with the adapters).
    masks: std::sync::Arc<DropoutStream>,
}

impl BertModel {
    /// The encoder over `lora`'s base model with its adapters attached.
    ///
    /// Errors (naming the file and field or weight): a config of another family or with a bad
    /// field, a missing weight or one whose shape disagrees with the config, an adapter on a
    /// weight the encoder does not use as a linear layer, a bad `1_Pooling/config.json`.
    pub fn new(lora: &Lora, options: &BertOptions) -> Result<Self> {
        Self::build(lora.base(), Some(lora), options)
    }

    /// The encoder over `base` without adapters (inference, or a reference).
    pub fn frozen(base: &BaseModel, options: &BertOptions) -> Result<Self> {
        Self::build(base, None, options)
    }

    fn build(base: &BaseModel, lora: Option<&Lora>, options: &BertOptions) -> Result<Self> {
        let config_path = base.dir().join(CONFIG_FILE);
        let weights_path = base.dir().join(WEIGHTS_FILE);
        let config = BertConfig::from_json(base.config(), &config_path)?;
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
        let pooling = match options.pooling {
            Some(p) => p,
            // A base built in memory has no directory (and no pooling file).
            None if base.dir().as_os_str().is_empty() => Pooling::Cls,
            None => Pooling::from_model_dir(base.dir())?.unwrap_or(Pooling::Cls),
        };
        let c = &config.base;
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        if let Some(mt) = &c.model_type {
            prefixes.push(format!("{mt}."));
        }
        let probe = "embeddings.word_embeddings.weight";
        let prefix = prefixes
            .iter()
            .find(|p| base.tensors().contains_key(&format!("{p}{probe}")))
            .cloned()
            .ok_or_else(|| {
                Error::bad_file(
                    &weights_path,
                    format!("no weight `{probe}` (nor `bert.{probe}`): not a BERT checkpoint"),
                )
            })?;
        let device = base
            .tensors()
            .get(&format!("{prefix}{probe}"))
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        let ld = Loader {
            base,
            prefix,
            dtype: options.dtype,
            weights_path: weights_path.clone(),
        };
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let word_embeddings = ld.get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let position_embeddings = ld.get(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let token_type_embeddings = ld.get(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let embeddings_norm = ld.norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            layers.push(Layer {
                query: ld.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: ld.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: ld.linear(&format!("{p}.attention.self.value"), h, h)?,
                attention_output: ld.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: ld.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: ld.linear(&format!("{p}.intermediate.dense"), i, h)?,
                output: ld.linear(&format!("{p}.output.dense"), h, i)?,
                output_norm: ld.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
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
            for layer in &mut layers {
                for lin in [
                    &mut layer.query,
                    &mut layer.key,
                    &mut layer.value,
                    &mut layer.attention_output,
                    &mut layer.intermediate,
                    &mut layer.output,
                ] {
                    if let Some(ad) = lora.adapters().get(lin.name()) {
                        used.insert(lin.name().to_string());
                        *lin = lin.clone().with_adapter(
                            ad,
                            scale,
                            options.lora_dropout,
                            masks.clone(),
                        );
                    }
                }
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
                        "adapter on `{first}`{}, which the trainable BERT does not use as a linear layer; target the encoder's query, key, value, attention.output.dense, intermediate.dense or output.dense weights",
                        if unused.len() > 1 {
                            format!(" (and {} more)", unused.len() - 1)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
        }
        Ok(Self {
            config,
            config_path,
            pooling,
            dtype: options.dtype,
            device,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
            masks,
        })
    }

    /// The config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
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
        self.config.base.max_position_embeddings
    }

    /// The adapted linear layers' weight names, in layer order.
    pub fn adapted(&self) -> Vec<&str> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    &l.query,
                    &l.key,
                    &l.value,
                    &l.attention_output,
                    &l.intermediate,
                    &l.output,
                ]
            })
            .filter(|l| l.is_adapted())
            .map(|l| l.name())
            .collect()
    }

    /// Checks the inputs' shapes and the sequence length; returns `(n, L)`.
    fn check_inputs(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
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
        if len > self.max_len() {
            candle_core::bail!(
                "a sequence of {len} tokens is longer than the model's `max_position_embeddings` ({}) in {}; truncate it (crate::tokenize truncates unless told not to)",
                self.max_len(),
                self.config_path.display()
            );
        }
        for (what, t) in [
            ("token type ids", token_type_ids),
            ("attention mask", attention_mask),
        ] {
            if let Some(t) = t {
                if t.dims() != [n, len] {
                    candle_core::bail!(
                        "{what} of shape {:?} do not match the input ids' shape [{n}, {len}]",
                        t.dims()
                    );
                }
            }
        }
        Ok((n, len))
    }

    /// The final hidden states `[n, L, hidden]` (see the [module docs](self) for the inputs).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (n, len) = self.check_inputs(input_ids, token_type_ids, attention_mask)?;
        let c = &self.config.base;
        let h = c.hidden_size;
        let ids = input_ids.flatten_all()?;
        let words = self.word_embeddings.index_select(&ids, 0)?;
        let types = match token_type_ids {
            Some(t) => self
                .token_type_embeddings
                .index_select(&t.flatten_all()?, 0)?,
            None => self
                .token_type_embeddings
                .i(0)?
                .unsqueeze(0)?
                .broadcast_as((n * len, h))?,
        };
        let positions = self.position_embeddings.narrow(0, 0, len)?;
        let x = (words + types)?
            .reshape((n, len, h))?
            .broadcast_add(&positions)?;
        let mut x = self.dropout(
            &self.embeddings_norm.forward(&x)?,
            c.hidden_dropout_prob,
            train,
        )?;
        let bias = match attention_mask {
            Some(m) => Some(self.mask_bias(m)?),
            None => None,
        };
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, bias.as_ref(), train)?;
        }
        Ok(x)
    }

    /// `(1 − mask) · finfo(dtype).min` as `[n, 1, 1, L]`, added to attention scores.
    fn mask_bias(&self, mask: &Tensor) -> candle_core::Result<Tensor> {
        let min = match self.dtype {
            DType::F16 => f64::from(half::f16::MIN),
            DType::BF16 => f64::from(half::bf16::MIN),
            _ => f64::from(f32::MIN),
        };
        let (n, len) = mask.dims2()?;
        let m = mask.to_dtype(DType::F32)?;
        ((1.0 - m)? * min)?
            .to_dtype(self.dtype)?
            .reshape((n, 1, 1, len))
    }

    fn dropout(&self, x: &Tensor, p: f64, train: bool) -> candle_core::Result<Tensor> {
        if train && p > 0.0 {
            self.masks.apply(x, p as f32)
        } else {
            Ok(x.clone())
        }
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        bias: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config.base;
        let heads = c.num_attention_heads;
        let d = c.hidden_size / heads;
        let (n, len, h) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((n, len, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(layer.query.forward_t(x, train)?)?;
        let k = split(layer.key.forward_t(x, train)?)?;
        let v = split(layer.value.forward_t(x, train)?)?;
        let mut scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        if let Some(b) = bias {
            scores = scores.broadcast_add(b)?;
        }
        let probs = ops::softmax_last_dim(&scores)?;
        let probs = self.dropout(&probs, self.config.attention_probs_dropout_prob, train)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, len, h))?;
        let a = layer.attention_output.forward_t(&ctx, train)?;
        let a = self.dropout(&a, c.hidden_dropout_prob, train)?;
        let a = layer.attention_norm.forward(&(a + x)?)?;
        let inter = layer.intermediate.forward_t(&a, train)?;
        let inter = match c.hidden_act {
            HiddenAct::Gelu => inter.gelu_erf()?,
            HiddenAct::GeluApproximate => inter.gelu()?,
            HiddenAct::Relu => inter.relu()?,
        };
        let o = layer.output.forward_t(&inter, train)?;
        let o = self.dropout(&o, c.hidden_dropout_prob, train)?;
        layer.output_norm.forward(&(o + a)?)
    }

    /// One vector per sequence `[n, hidden]` from the final hidden states `[n, L, hidden]`,
    /// by the model's [`Pooling`] (mean pooling over the mask's real tokens; all tokens when
    /// there is no mask).
    pub fn pool(
        &self,
        hidden: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match (self.pooling, attention_mask) {
            (Pooling::Cls, _) => hidden.i((.., 0))?.contiguous(),
            (Pooling::Mean, None) => hidden.mean(1),
            (Pooling::Mean, Some(m)) => {
                let m = m.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                // sentence-transformers clamps the count at 1e-9 (an all-padding row gives 0).
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                sum.broadcast_div(&count)
            }
        }
    }

    /// Pooled features `[n, hidden]`: [`BertModel::forward`] then [`BertModel::pool`].
    pub fn embed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let h = self.forward(input_ids, token_type_ids, attention_mask, train)?;
        self.pool(&h, attention_mask)
    }
}

/// Splits a classifier input into ids, token types and mask (see [`BertClassifier`]).
pub fn unpack(xs: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    match xs.dims() {
        [_, _] => Ok((xs.clone(), None, None)),
        [_, 3, _] => Ok((
            xs.i((.., 0))?.contiguous()?,
            Some(xs.i((.., 1))?.contiguous()?),
            Some(xs.i((.., 2))?.contiguous()?),
        )),
        other => candle_core::bail!(
            "a BERT classifier takes ids [n, L] or packed ids, token types and mask [n, 3, L], got shape {other:?}"
        ),
    }
}

/// A BERT sequence classifier: pooled features, dropout in training, and a linear head named
/// [`crate::arch::HEAD`] (see the [module docs](self)).
///
/// As a `ModuleT` (what `candle_swag::Predictive` and a training loop call) its input is
/// either the token ids `[n, L]` (token types 0, every token real) or ids, token types and
/// attention mask stacked as `[n, 3, L]` ([`crate::tokenize::Encoded::packed`]); the output is
/// the logits `[n, num_labels]`.
#[derive(Debug, Clone)]
pub struct BertClassifier {
    bert: BertModel,
    /// `[num_labels, hidden]`, the head `Var`'s own tensor (f32).
    head_weight: Tensor,
    /// `[num_labels]`, the head `Var`'s own tensor (f32).
    head_bias: Tensor,
    dropout: f64,
}

impl BertClassifier {
    /// A classifier with `num_labels` classes over `lora`'s adapted encoder; the head is
    /// created (or reused) as the new weight [`crate::arch::HEAD`] of `lora`.
    ///
    /// Errors: those of [`BertModel::new`]; `num_labels` 0; a `lora` whose
    /// `new_weights` do not include the head.
    pub fn new(lora: &Lora, num_labels: usize, options: &BertOptions) -> Result<Self> {
        let bert = BertModel::new(lora, options)?;
        let head = crate::arch::HEAD;
        if num_labels == 0 {
            return Err(Error::invalid("num_labels", "must be at least 1"));
        }
        if !lora
            .config()
            .new_weights
            .iter()
            .any(|p| format!("{head}.weight").starts_with(p.as_str()))
        {
            return Err(Error::invalid(
                "new_weights",
                format!("the classifier head `{head}` is not a new weight of the adapters; add arch::HEAD to LoraParams::new_weights"),
            ));
        }
        let vb = lora.var_builder(DType::F32).pp(head);
        let h = bert.config.base.hidden_size;
        let lin = candle_nn::linear(h, num_labels, vb)?;
        let head_bias = lin
            .bias()
            .cloned()
            .ok_or_else(|| Error::invalid("head", "the head has no bias"))?;
        let dropout = bert.config.classifier_dropout;
        Ok(Self {
            bert,
            head_weight: lin.weight().clone(),
            head_bias,
            dropout,
        })
    }

    /// The encoder.
    pub fn bert(&self) -> &BertModel {
        &self.bert
    }

    /// The pooled features `[n, hidden]` the head reads (no dropout: evaluation mode).
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.features_t(xs, false)
    }

    /// The pooled features, with dropout in the encoder when `train`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (ids, types, mask) = unpack(xs)?;
        self.bert.embed(&ids, types.as_ref(), mask.as_ref(), train)
    }

    /// The head on features `[n, hidden]` (classifier dropout first when `train`): logits
    /// `[n, num_labels]`.
    pub fn head_forward(&self, features: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let f = self.bert.dropout(features, self.dropout, train)?;
        let w = self.head_weight.to_dtype(f.dtype())?;
        let b = self.head_bias.to_dtype(f.dtype())?;
        f.matmul(&w.t()?)?.broadcast_add(&b)
    }
}

impl ModuleT for BertClassifier {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head_forward(&self.features_t(xs, train)?, train)
    }
}
