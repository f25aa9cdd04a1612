//! Trainable model families: the checkpoints candle-transformers loads, computed with the
//! crate's differentiable [`crate::ops`], so that gradients reach every LoRA adapter.
//!
//! candle-transformers' models (served by [`crate::LoraModel`]) stay the inference path: in
//! candle 0.11.1 their fused norms and softmax have no backward pass. The families here read
//! the same Hugging Face directories and the same [`crate::Lora`], and attach the adapters as
//! [`LoraLinear`] layers that read the factors at forward time (no merge, no rebuild).
//!
//! - [`bert`]: the BERT encoder (sentence-transformers checkpoints included) and a sequence
//!   classifier.
//! - [`llama`]: the Llama-family decoder (Llama, Mistral, Qwen2), logits for every position.
//! - [`vit`]: the ViT encoder and an image classifier.

use std::path::Path;

use candle_swag::{Error, Result};
use serde_json::Value;

pub mod bert;
pub mod llama;
pub mod lora_linear;
pub mod vit;

pub use bert::{BertClassifier, BertConfig, BertModel, BertOptions, Pooling};
pub use llama::{LlamaConfig, LlamaModel, LlamaOptions};
pub use lora_linear::LoraLinear;
pub use vit::{VitClassifier, VitConfig, VitModel, VitOptions};

/// The `model_type`s of `config.json` that the trainable families read, by family.
pub const TRAINABLE_FAMILIES: &[(&str, &[&str])] = &[
    ("bert", bert::MODEL_TYPES),
    ("llama", llama::MODEL_TYPES),
    ("vit", vit::MODEL_TYPES),
];

/// Refuses a `config.json` whose `model_type` is not one of `accepted` (a config without
/// `model_type` passes: its fields are checked by the family). The error names the file, the
/// field and the families the crate trains.
pub(crate) fn check_family(config: &Value, path: &Path, accepted: &[&str]) -> Result<()> {
    match config.get("model_type") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(t)) if accepted.contains(&t.as_str()) => Ok(()),
        Some(other) => {
            let families: Vec<String> = TRAINABLE_FAMILIES
                .iter()
                .map(|(f, types)| format!("{f} (model_type {})", types.join(", ")))
                .collect();
            Err(Error::bad_file(
                path,
                format!(
                    "field `model_type` is {other}, which this family does not read; the trainable families are: {}",
                    families.join("; ")
                ),
            ))
        }
    }
}
