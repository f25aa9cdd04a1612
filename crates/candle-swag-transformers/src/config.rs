//! `config.json` per architecture, checked field by field before serde sees it, so that a
//! missing or ill-typed field is named in a one-line error (serde's own message names a missing
//! field but not an ill-typed one).

use std::path::Path;

use candle_swag::{Error, Result};
use candle_transformers::models::{bert, llama, vit};
use serde_json::Value;

/// The architectures this crate attaches adapters to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `candle_transformers::models::bert` (encoder; sequence classification on the first token).
    Bert,
    /// `candle_transformers::models::llama` (decoder; next-token prediction).
    Llama,
    /// `candle_transformers::models::vit` (image classification on the CLS token).
    Vit,
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bert" => Ok(Arch::Bert),
            "llama" => Ok(Arch::Llama),
            "vit" => Ok(Arch::Vit),
            other => Err(Error::invalid(
                "arch",
                format!("`{other}` is not one of bert, llama, vit"),
            )),
        }
    }
}

/// What a field must hold.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-negative integer.
    Usize,
    /// Any number.
    Number,
    /// A string.
    Str,
    /// true or false.
    Bool,
}

impl Kind {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::Usize => v.as_u64().is_some(),
            Kind::Number => v.is_number(),
            Kind::Str => v.is_string(),
            Kind::Bool => v.is_boolean(),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Kind::Usize => "a non-negative integer",
            Kind::Number => "a number",
            Kind::Str => "a string",
            Kind::Bool => "true or false",
        }
    }
}

/// Required fields (`true`) must be present; optional ones are checked only when present and
/// not null.
fn check_fields(config: &Value, path: &Path, fields: &[(&str, Kind, bool)]) -> Result<()> {
    for &(name, kind, required) in fields {
        match config.get(name) {
            None | Some(Value::Null) if required => {
                return Err(Error::bad_file(
                    path,
                    format!("field `{name}` is missing (expected {})", kind.describe()),
                ))
            }
            None | Some(Value::Null) => {}
            Some(v) if !kind.accepts(v) => {
                return Err(Error::bad_file(
                    path,
                    format!("field `{name}` must be {}, got {v}", kind.describe()),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(config: &Value, path: &Path) -> Result<T> {
    serde_json::from_value(config.clone()).map_err(|e| Error::bad_file(path, e.to_string()))
}

/// A BERT config (`path` only names the file in errors).
pub fn bert(config: &Value, path: &Path) -> Result<bert::Config> {
    use Kind::*;
    check_fields(
        config,
        path,
        &[
            ("vocab_size", Usize, true),
            ("hidden_size", Usize, true),
            ("num_hidden_layers", Usize, true),
            ("num_attention_heads", Usize, true),
            ("intermediate_size", Usize, true),
            ("hidden_act", Str, true),
            ("hidden_dropout_prob", Number, true),
            ("max_position_embeddings", Usize, true),
            ("type_vocab_size", Usize, true),
            ("initializer_range", Number, true),
            ("layer_norm_eps", Number, true),
            ("pad_token_id", Usize, true),
            ("classifier_dropout", Number, false),
            ("model_type", Str, false),
        ],
    )?;
    let cfg: bert::Config = parse(config, path)?;
    check_heads(path, cfg.hidden_size, cfg.num_attention_heads, None)?;
    Ok(cfg)
}

/// A Llama config, converted with `into_config(false)` (no flash attention).
pub fn llama(config: &Value, path: &Path) -> Result<llama::Config> {
    use Kind::*;
    check_fields(
        config,
        path,
        &[
            ("hidden_size", Usize, true),
            ("intermediate_size", Usize, true),
            ("vocab_size", Usize, true),
            ("num_hidden_layers", Usize, true),
            ("num_attention_heads", Usize, true),
            ("num_key_value_heads", Usize, false),
            ("rms_norm_eps", Number, true),
            ("rope_theta", Number, false),
            ("max_position_embeddings", Usize, true),
            ("tie_word_embeddings", Bool, false),
        ],
    )?;
    let cfg: llama::LlamaConfig = parse(config, path)?;
    let cfg = cfg.into_config(false);
    check_heads(
        path,
        cfg.hidden_size,
        cfg.num_attention_heads,
        Some(cfg.num_key_value_heads),
    )?;
    Ok(cfg)
}

/// A ViT config.
pub fn vit(config: &Value, path: &Path) -> Result<vit::Config> {
    use Kind::*;
    check_fields(
        config,
        path,
        &[
            ("hidden_size", Usize, true),
            ("num_hidden_layers", Usize, true),
            ("num_attention_heads", Usize, true),
            ("intermediate_size", Usize, true),
            ("hidden_act", Str, true),
            ("layer_norm_eps", Number, true),
            ("image_size", Usize, true),
            ("patch_size", Usize, true),
            ("num_channels", Usize, true),
            ("qkv_bias", Bool, true),
        ],
    )?;
    let cfg: vit::Config = parse(config, path)?;
    check_heads(path, cfg.hidden_size, cfg.num_attention_heads, None)?;
    if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return Err(Error::bad_file(
            path,
            format!(
                "field `patch_size` ({}) must divide `image_size` ({})",
                cfg.patch_size, cfg.image_size
            ),
        ));
    }
    Ok(cfg)
}

/// Head counts that would make the model's reshapes fail (or panic inside candle-transformers,
/// which unwraps some layer builds) are refused here, naming the fields.
fn check_heads(path: &Path, hidden: usize, heads: usize, kv_heads: Option<usize>) -> Result<()> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::bad_file(
            path,
            format!("field `num_attention_heads` ({heads}) must divide `hidden_size` ({hidden})"),
        ));
    }
    if let Some(kv) = kv_heads {
        if kv == 0 || !heads.is_multiple_of(kv) {
            return Err(Error::bad_file(
                path,
                format!(
                    "field `num_key_value_heads` ({kv}) must divide `num_attention_heads` ({heads})"
                ),
            ));
        }
    }
    Ok(())
}
