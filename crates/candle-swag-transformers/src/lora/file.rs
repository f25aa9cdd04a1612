//! Adapter files (tied to the base model by its digest) and the merged model as plain safetensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use candle_swag::{Error, Result};

use super::*;
use crate::base::tensor_bytes;

impl Lora {
    /// Writes the merged model ([`Lora::merged_tensors`]) as one plain safetensors file,
    /// atomically: it loads in any safetensors reader, candle-transformers included, without
    /// this crate. The metadata records the base digest, rank and alpha for provenance.
    pub fn write_merged(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors = self.merged_tensors()?;
        let mut meta = self.metadata();
        meta.insert("format".into(), "candle-swag-lora-merged/1".into());
        write_safetensors(path, &tensors, meta)
    }

    fn metadata(&self) -> HashMap<String, String> {
        let c = &self.inner.config;
        HashMap::from([
            ("format".to_string(), ADAPTER_FORMAT.to_string()),
            (
                "base_digest".to_string(),
                self.inner.base.digest().to_string(),
            ),
            ("rank".to_string(), c.rank.to_string()),
            ("alpha".to_string(), c.alpha.to_string()),
            (
                "targets".to_string(),
                serde_json::to_string(&c.targets).unwrap_or_default(),
            ),
        ])
    }

    /// Saves every trainable weight (adapters and new weights) with the base digest, atomically
    /// (see the [module docs](crate::lora) for the format).
    pub fn save_adapters(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .lock_varmap()?
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        write_safetensors(path, &tensors, self.metadata())
    }

    /// Loads adapters saved by [`Lora::save_adapters`] into these `Var`s.
    ///
    /// Errors (no `Var` is changed): a file for another base model (digest mismatch), another
    /// rank or alpha, missing or extra names, other shapes. New weights (a head) must have been
    /// created first, by building the model once ([`crate::LoraModel::new`] does).
    pub fn load_adapters(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::bad_file(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| meta.get(key).map(String::as_str).unwrap_or("(none)");
        if get("format") != ADAPTER_FORMAT {
            return Err(Error::bad_file(
                path,
                format!(
                    "not a LoRA adapter file (format `{}`, expected `{ADAPTER_FORMAT}`)",
                    get("format")
                ),
            ));
        }
        let ours = self.inner.base.digest();
        if get("base_digest") != ours {
            return Err(Error::bad_file(
                path,
                format!(
                    "adapters were trained on base model {}, not on this one ({ours}); refusing to load them",
                    get("base_digest")
                ),
            ));
        }
        let c = &self.inner.config;
        if get("rank") != c.rank.to_string() || get("alpha") != c.alpha.to_string() {
            return Err(Error::bad_file(
                path,
                format!(
                    "adapters have rank {} and alpha {}, this model rank {} and alpha {}",
                    get("rank"),
                    get("alpha"),
                    c.rank,
                    c.alpha
                ),
            ));
        }
        let loaded = candle_core::safetensors::load_buffer(&bytes, &self.inner.device)
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        let data = self.lock_varmap()?;
        for (name, var) in data.iter() {
            let t = loaded
                .get(name)
                .ok_or_else(|| Error::bad_file(path, format!("weight `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "weight `{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
        }
        if let Some(extra) = loaded.keys().find(|n| !data.contains_key(*n)) {
            return Err(Error::bad_file(
                path,
                format!("weight `{extra}` is not a trainable weight of this model"),
            ));
        }
        for (name, var) in data.iter() {
            var.set(&loaded[name].to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// Writes named tensors and string metadata as a safetensors file, atomically
/// (`candle_swag::crash_safe`): a reader never sees half a file.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut raw = Vec::with_capacity(names.len());
    for name in &names {
        let t = &tensors[name.as_str()];
        raw.push((name.as_str(), tensor_bytes(t)?, t.dims().to_vec()));
    }
    let views = raw
        .iter()
        .map(|(name, (dtype, bytes), shape)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| Error::invalid(name.to_string(), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    candle_swag::crash_safe::write_file_atomic(path, &bytes)
}
