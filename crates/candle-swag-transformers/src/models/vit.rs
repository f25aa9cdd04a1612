//! A trainable ViT encoder and image classifier: the checkpoints candle-transformers' `vit`
//! loads, computed with the crate's differentiable [`crate::ops`], LoRA adapters read at
//! forward time.
//!
//! # Conventions
//! - **Checkpoints.** A Hugging Face directory (`config.json` + `model.safetensors`, loaded as a
//!   [`BaseModel`]) with weights named `embeddings.cls_token`, `embeddings.position_embeddings`,
//!   `embeddings.patch_embeddings.projection.{weight,bias}`,
//!   `encoder.layer.N.attention.attention.{query,key,value}.{weight,bias}`,
//!   `encoder.layer.N.attention.output.dense`, `encoder.layer.N.intermediate.dense`,
//!   `encoder.layer.N.output.dense`, `encoder.layer.N.layernorm_{before,after}` and `layernorm`,
//!   under a `vit.` prefix (`ViTForImageClassification`, the layout of
//!   [`crate::arch::vit_classifier`] and of [`crate::tiny`]) or bare (`ViTModel`). A
//!   pretrained `classifier` or pooler, when present, is not read. q/k/v biases as the config's
//!   `qkv_bias` says.
//! - **Config** ([`VitConfig`]): `model_type` `vit` (absent passes; another family is refused,
//!   naming the families the crate trains), the fields candle-transformers reads
//!   ([`crate::config::vit`]), `hidden_dropout_prob` and `attention_probs_dropout_prob` (0 when
//!   absent, as Hugging Face's ViT defaults).
//! - **Computation** as candle-transformers' ViT: a patch-embedding convolution (kernel and
//!   stride `patch_size`), the CLS token prepended, position embeddings added, pre-norm layers
//!   (`x + attention(layer_norm(x))`, then `x + mlp(layer_norm(x))`), the config's `hidden_act`
//!   in the MLP (`gelu` is the exact, erf GELU), and the final layer norm on the CLS token.
//!   No position interpolation: images must be `image_size × image_size`.
//! - **Adapters.** Every linear layer of the encoder (query, key, value, attention output,
//!   intermediate, output) is a [`LoraLinear`]; an adapter of the [`Lora`] attaches where its
//!   weight name matches (`*.attention.attention.query.weight`, ...). An adapter on any other
//!   weight is refused when the model is built. Nothing is merged.
//! - **Inputs.** Images `[n, num_channels, image_size, image_size]`, any float dtype (cast to
//!   the model's), normalised as the checkpoint expects (the image processor's job).
//! - **Dropout** (`hidden_dropout_prob` after the embeddings and each sub-layer's output,
//!   `attention_probs_dropout_prob` on attention probabilities) only when `train` is true.
//! - **Classifier** ([`VitClassifier`]): the CLS features → a linear head named
//!   [`crate::arch::HEAD`], a new trainable weight of the [`Lora`] (the same name as
//!   `arch::vit_classifier`'s, so adapter files are interchangeable). As a `ModuleT` its input
//!   is the images and its output the logits `[n, num_labels]`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Module, ModuleT, Tensor};
use candle_swag::{Error, Result};
use candle_transformers::models::vit as ct_vit;
use serde_json::Value;

use super::lora_linear::LoraLinear;
use crate::base::{BaseModel, CONFIG_FILE, WEIGHTS_FILE};
use crate::lora::Lora;
use crate::ops::{self, DropoutStream};

/// The `model_type`s this family reads.
pub const MODEL_TYPES: &[&str] = &["vit"];

/// A ViT `config.json`: candle-transformers' config plus the dropout probabilities.
#[derive(Debug, Clone)]
pub struct VitConfig {
    /// The fields candle-transformers reads (checked by [`crate::config::vit`]).
    pub base: ct_vit::Config,
    /// `hidden_dropout_prob` (0 when absent).
    pub hidden_dropout_prob: f64,
    /// `attention_probs_dropout_prob` (0 when absent).
    pub attention_probs_dropout_prob: f64,
}

impl VitConfig {
    /// Reads a ViT config (`path` names the file in errors).
    ///
    /// Errors: a `model_type` of another family (naming the families the crate trains), a
    /// missing or ill-typed field, a patch size that does not divide the image size, a dropout
    /// probability outside `[0, 1)`.
    pub fn from_json(config: &Value, path: &Path) -> Result<Self> {
        super::check_family(config, path, MODEL_TYPES)?;
        let base = crate::config::vit(config, path)?;
        let prob = |field: &str| -> Result<f64> {
            let p = match config.get(field) {
                None | Some(Value::Null) => 0.0,
                Some(v) => v.as_f64().ok_or_else(|| {
                    Error::bad_file(path, format!("field `{field}` must be a number, got {v}"))
                })?,
            };
            if !(0.0..1.0).contains(&p) {
                return Err(Error::bad_file(
                    path,
                    format!("field `{field}` must be in [0, 1), got {p}"),
                ));
            }
            Ok(p)
        };
        Ok(Self {
            hidden_dropout_prob: prob("hidden_dropout_prob")?,
            attention_probs_dropout_prob: prob("attention_probs_dropout_prob")?,
            base,
        })
    }

    /// The number of patches, `(image_size / patch_size)²`.
    pub fn num_patches(&self) -> usize {
        let side = self.base.image_size / self.base.patch_size.max(1);
        side * side
    }
}

/// How to build a [`VitModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct VitOptions {
    /// The dtype the model computes in (f32 by default; adapters stay f32 `Var`s).
    pub dtype: DType,
    /// LoRA dropout on the adapters' input in training (PEFT's `lora_dropout`), in `[0, 1)`.
    pub lora_dropout: f32,
    /// The seed of the model's dropout masks (a [`DropoutStream`]; 0 by default): two models
    /// built with one seed draw the same masks through the same training forwards. Give
    /// independently trained runs (an ensemble, MultiSWAG) different seeds.
    pub dropout_seed: u64,
}

impl Default for VitOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            lora_dropout: 0.0,
            dropout_seed: 0,
        }
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
    norm_before: Norm,
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    attention_output: LoraLinear,
    norm_after: Norm,
    intermediate: LoraLinear,
    output: LoraLinear,
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut LoraLinear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    fn linears(&self) -> [&LoraLinear; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }
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
                format!("weight `{name}` is missing (the ViT encoder reads it)"),
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

    fn linear(&self, rel: &str, out: usize, inp: usize, bias: bool) -> Result<LoraLinear> {
        let w = self.get(&format!("{rel}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get(&format!("{rel}.bias"), &[out])?)
        } else {
            None
        };
        Ok(LoraLinear::new(self.name(&format!("{rel}.weight")), w, b))
    }
}

/// The trainable ViT encoder (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct VitModel {
    config: VitConfig,
    dtype: DType,
    device: Device,
    /// `[hidden, channels, patch, patch]`.
    patch_weight: Tensor,
    /// `[hidden]`.
    patch_bias: Tensor,
    /// `[1, 1, hidden]`.
    cls_token: Tensor,
    /// `[1, patches + 1, hidden]`.
    position_embeddings: Tensor,
    layers: Vec<Layer>,
    final_norm: Norm,
    /// The dropout masks' stream (shared with the adapters).
    masks: std::sync::Arc<DropoutStream>,
}

impl VitModel {
    /// The encoder over `lora`'s base model with its adapters attached.
    ///
    /// Errors (naming the file and field or weight): a config of another family or with a bad
    /// field, a missing weight or one whose shape disagrees with the config, an adapter on a
    /// weight the encoder does not use as a linear layer.
    pub fn new(lora: &Lora, options: &VitOptions) -> Result<Self> {
        Self::build(lora.base(), Some(lora), options)
    }

    /// The encoder over `base` without adapters (inference, or a reference).
    pub fn frozen(base: &BaseModel, options: &VitOptions) -> Result<Self> {
        Self::build(base, None, options)
    }

    fn build(base: &BaseModel, lora: Option<&Lora>, options: &VitOptions) -> Result<Self> {
        let config_path = base.dir().join(CONFIG_FILE);
        let weights_path = base.dir().join(WEIGHTS_FILE);
        let config = VitConfig::from_json(base.config(), &config_path)?;
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
        let probe = "embeddings.cls_token";
        let prefix = ["vit.", ""]
            .iter()
            .find(|p| base.tensors().contains_key(&format!("{p}{probe}")))
            .map(|p| p.to_string())
            .ok_or_else(|| {
                Error::bad_file(
                    &weights_path,
                    format!("no weight `vit.{probe}` (nor `{probe}`): not a ViT checkpoint"),
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
            weights_path,
        };
        let c = &config.base;
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let p = c.patch_size;
        let patch_weight = ld.get(
            "embeddings.patch_embeddings.projection.weight",
            &[h, c.num_channels, p, p],
        )?;
        let patch_bias = ld.get("embeddings.patch_embeddings.projection.bias", &[h])?;
        let cls_token = ld.get(probe, &[1, 1, h])?;
        let position_embeddings = ld.get(
            "embeddings.position_embeddings",
            &[1, config.num_patches() + 1, h],
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let l = format!("encoder.layer.{n}");
            let a = format!("{l}.attention.attention");
            layers.push(Layer {
                norm_before: ld.norm(&format!("{l}.layernorm_before"), h, eps)?,
                query: ld.linear(&format!("{a}.query"), h, h, c.qkv_bias)?,
                key: ld.linear(&format!("{a}.key"), h, h, c.qkv_bias)?,
                value: ld.linear(&format!("{a}.value"), h, h, c.qkv_bias)?,
                attention_output: ld.linear(&format!("{l}.attention.output.dense"), h, h, true)?,
                norm_after: ld.norm(&format!("{l}.layernorm_after"), h, eps)?,
                intermediate: ld.linear(&format!("{l}.intermediate.dense"), i, h, true)?,
                output: ld.linear(&format!("{l}.output.dense"), h, i, true)?,
            });
        }
        let final_norm = ld.norm("layernorm", h, eps)?;
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
                for lin in layer.linears_mut() {
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
                        "adapter on `{first}`{}, which the trainable ViT does not use as a linear layer; target the encoder's query, key, value, attention.output.dense, intermediate.dense or output.dense weights",
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
            dtype: options.dtype,
            device,
            patch_weight,
            patch_bias,
            cls_token,
            position_embeddings,
            layers,
            final_norm,
            masks,
        })
    }

    /// The config.
    pub fn config(&self) -> &VitConfig {
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

    /// The adapted linear layers' weight names, in layer order.
    pub fn adapted(&self) -> Vec<&str> {
        self.layers
            .iter()
            .flat_map(|l| l.linears())
            .filter(|l| l.is_adapted())
            .map(|l| l.name())
            .collect()
    }

    fn dropout(&self, x: &Tensor, p: f64, train: bool) -> candle_core::Result<Tensor> {
        if train && p > 0.0 {
            self.masks.apply(x, p as f32)
        } else {
            Ok(x.clone())
        }
    }

    /// Checks the images' shape and dtype.
    fn check_images(&self, pixels: &Tensor) -> candle_core::Result<()> {
        let c = &self.config.base;
        let want = [c.num_channels, c.image_size, c.image_size];
        match pixels.dims() {
            [_, ch, hh, ww] if [*ch, *hh, *ww] == want => {}
            other => candle_core::bail!(
                "images must be [n, {}, {}, {}] (num_channels, image_size, image_size of the config), got shape {other:?}",
                want[0],
                want[1],
                want[2]
            ),
        }
        if !pixels.dtype().is_float() {
            candle_core::bail!("images must be a float tensor, got {:?}", pixels.dtype());
        }
        Ok(())
    }

    /// The encoder's last hidden states `[n, patches + 1, hidden]` (CLS first), before the
    /// final layer norm.
    pub fn forward(&self, pixels: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.check_images(pixels)?;
        let c = &self.config.base;
        let h = c.hidden_size;
        let n = pixels.dim(0)?;
        let x = pixels.to_dtype(self.dtype)?;
        let patches = x
            .conv2d(&self.patch_weight, 0, c.patch_size, 1, 1)?
            .broadcast_add(&self.patch_bias.reshape((1, h, 1, 1))?)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((n, 1, h))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embeddings)?;
        let mut x = self.dropout(&x, self.config.hidden_dropout_prob, train)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, train)?;
        }
        Ok(x)
    }

    fn layer_forward(&self, layer: &Layer, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let c = &self.config.base;
        let heads = c.num_attention_heads;
        let d = c.hidden_size / heads;
        let (n, len, h) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((n, len, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let a = layer.norm_before.forward(x)?;
        let q = split(layer.query.forward_t(&a, train)?)?;
        let k = split(layer.key.forward_t(&a, train)?)?;
        let v = split(layer.value.forward_t(&a, train)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let probs = ops::softmax_last_dim(&scores)?;
        let probs = self.dropout(&probs, self.config.attention_probs_dropout_prob, train)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, len, h))?;
        let o = layer.attention_output.forward_t(&ctx, train)?;
        let x = (self.dropout(&o, self.config.hidden_dropout_prob, train)? + x)?;
        let m = layer.norm_after.forward(&x)?;
        let inter = c
            .hidden_act
            .forward(&layer.intermediate.forward_t(&m, train)?)?;
        let o = layer.output.forward_t(&inter, train)?;
        self.dropout(&o, self.config.hidden_dropout_prob, train)? + x
    }

    /// The CLS token's final hidden state after the final layer norm, `[n, hidden]`: the
    /// features an image classifier reads.
    pub fn features(&self, pixels: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.forward(pixels, train)?;
        self.final_norm.forward(&h.i((.., 0))?.contiguous()?)
    }
}

/// A ViT image classifier: CLS features and a linear head named [`crate::arch::HEAD`] (see
/// the [module docs](self)). As a `ModuleT` its input is images `[n, C, H, W]` and its output
/// the logits `[n, num_labels]`.
#[derive(Debug, Clone)]
pub struct VitClassifier {
    vit: VitModel,
    /// `[num_labels, hidden]`, the head `Var`'s own tensor (f32).
    head_weight: Tensor,
    /// `[num_labels]`, the head `Var`'s own tensor (f32).
    head_bias: Tensor,
}

impl VitClassifier {
    /// A classifier with `num_labels` classes over `lora`'s adapted encoder; the head is
    /// created (or reused) as the new weight [`crate::arch::HEAD`] of `lora`.
    ///
    /// Errors: those of [`VitModel::new`]; `num_labels` 0; a `lora` whose `new_weights` do not
    /// include the head.
    pub fn new(lora: &Lora, num_labels: usize, options: &VitOptions) -> Result<Self> {
        let vit = VitModel::new(lora, options)?;
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
        let lin = candle_nn::linear(vit.config.base.hidden_size, num_labels, vb)?;
        let head_bias = lin
            .bias()
            .cloned()
            .ok_or_else(|| Error::invalid("head", "the head has no bias"))?;
        Ok(Self {
            vit,
            head_weight: lin.weight().clone(),
            head_bias,
        })
    }

    /// The encoder.
    pub fn vit(&self) -> &VitModel {
        &self.vit
    }

    /// The features `[n, hidden]` the head reads (evaluation mode).
    pub fn features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.vit.features(pixels, false)
    }

    /// The head on features `[n, hidden]`: logits `[n, num_labels]`.
    pub fn head_forward(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.head_weight.to_dtype(features.dtype())?;
        let b = self.head_bias.to_dtype(features.dtype())?;
        features.matmul(&w.t()?)?.broadcast_add(&b)
    }
}

impl ModuleT for VitClassifier {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head_forward(&self.vit.features(xs, train)?)
    }
}
