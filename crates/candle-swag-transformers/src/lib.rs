//! # candle-swag-transformers
//!
//! LoRA fine-tuning of pretrained transformers (BERT, Llama/Mistral/Qwen2, ViT) with SWAG
//! posteriors over the adapters, and frozen-trunk head posteriors with a feature cache. Two
//! paths: the crate's own families ([`models`]) **train** (candle-nn 0.11.1's fused norms and
//! softmax have no backward pass, so no gradient reaches an adapter inside a
//! candle-transformers model); unmodified candle-transformers models ([`arch`], [`LoraModel`])
//! **serve** trained adapters.
//!
//! - [`base`]: a model directory in Hugging Face layout and the digest of its weights.
//! - [`config`]: `config.json` per architecture, every field checked by name.
//! - [`lora`]: the adapters, served through a `VarBuilder` backend as `W0 + (alpha/r)·B·A`;
//!   adapter files tied to their base model; the merged model as a plain safetensors file.
//! - [`model`]: [`LoraModel`], a model rebuilt when its adapters change (after an optimizer
//!   step, or a SWAG sample written by `candle_swag::Predictive`).
//! - [`arch`]: build closures for BERT and ViT sequence classifiers and Llama next-token
//!   prediction.
//! - [`features`]: trunk features computed once, reused by every head sample.
//! - [`ops`]: differentiable fused layer norm, RMS norm, softmax and rotary embeddings.
//! - [`models`]: trainable families (BERT, Llama/Mistral/Qwen2, ViT) on those ops, adapters
//!   read at forward time ([`LoraLinear`]): gradients reach every adapter, no rebuilds.
//! - [`text`]: labelled text tables and unlabelled text files.
//! - [`tokenize`]: the checkpoint's `tokenizer.json`, truncation, padding and mask.
//! - [`tiny`]: tiny random-weight models for tests and the smoke example.
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_swag_transformers::{arch, config, tiny, BaseModel, Lora, LoraModel, LoraParams};
//!
//! # fn main() -> candle_swag::Result<()> {
//! let dir = std::env::temp_dir().join(format!("lora-doc-{}", std::process::id()));
//! tiny::write_random_model(config::Arch::Bert, &dir, 0)?;
//! let base = BaseModel::load(&dir, &Device::Cpu)?;
//! let cfg = config::bert(base.config(), &dir.join("config.json"))?;
//! let targets = ["*.attention.self.query.weight", "*.attention.self.value.weight"];
//! let lora_config = LoraParams {
//!     new_weights: vec![arch::HEAD.into()],
//!     ..LoraParams::new(&targets, 4)
//! }
//! .check()?;
//! let lora = Lora::new(&base, &lora_config, &Device::Cpu)?;
//! let model = LoraModel::new(&lora, DType::F32, arch::bert_classifier(cfg, 2))?;
//! let params = model.params()?; // A, B of 4 weights and the head: the posterior's parameters
//! assert_eq!(params.vars().len(), 2 * 4 + 2);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

pub mod arch;
pub mod base;
pub mod config;
pub mod features;
pub mod lora;
pub mod model;
pub mod models;
pub mod ops;
pub mod text;
pub mod tiny;
pub mod tokenize;

pub use base::BaseModel;
pub use config::Arch;
pub use lora::{Lora, LoraConfig, LoraParams};
pub use model::{params_without_gradient, LoraModel};
pub use models::{BertClassifier, BertModel, BertOptions, LoraLinear, Pooling};
pub use text::{read_text_lines, LabelledText};
pub use tokenize::{Encoded, TextTokenizer};
