//! A pretrained model directory in Hugging Face layout (`config.json` + `model.safetensors`),
//! its frozen weights, and the digest that ties adapters to it.
//!
//! # The base digest
//! `sha256:` followed by the hex SHA-256 of the weights' *content*, not of the file's bytes: for
//! every tensor in name order (byte-wise), the name's UTF-8 bytes, a 0 byte, the dtype as
//! safetensors spells it (`F32`, `BF16`, ...), a 0 byte, the rank and each dimension as
//! little-endian `u64`, the data's length as little-endian `u64`, then the raw little-endian
//! data. The same weights written by another tool (another header order, other padding or
//! metadata) keep their digest; any changed value, name, dtype or shape changes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_swag::{Error, Result};
use sha2::{Digest, Sha256};

/// The weights file a model directory must hold.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The configuration file a model directory must hold.
pub const CONFIG_FILE: &str = "config.json";

/// A pretrained model: its configuration (raw JSON, parsed per architecture by
/// [`crate::config`]), its weights as frozen tensors, and their digest.
#[derive(Debug, Clone)]
pub struct BaseModel {
    dir: PathBuf,
    config: serde_json::Value,
    tensors: HashMap<String, Tensor>,
    digest: String,
}

impl BaseModel {
    /// Loads `dir/config.json` and `dir/model.safetensors` onto `device`. The tensors are plain
    /// tensors (never `Var`s): the base weights are frozen by construction, and no gradient
    /// reaches them.
    ///
    /// Errors (nothing is written): a missing directory, config or weights file, a config that
    /// is not a JSON object, an unreadable safetensors file.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::invalid(
                "model-dir",
                format!("{} is not a directory", dir.display()),
            ));
        }
        let config_path = dir.join(CONFIG_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(Error::bad_file(
                &dir,
                format!("the model directory has no weights ({WEIGHTS_FILE} is missing)"),
            ));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&config_path, format!("not valid JSON: {e}")))?;
        if !config.is_object() {
            return Err(Error::bad_file(&config_path, "expected a JSON object"));
        }
        let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
        let digest =
            digest_safetensors(&bytes).map_err(|reason| Error::bad_file(&weights_path, reason))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| Error::bad_file(&weights_path, e.to_string()))?
            .into_iter()
            .map(|(name, t)| (name, t.detach()))
            .collect();
        Ok(Self {
            dir,
            config,
            tensors,
            digest,
        })
    }

    /// Builds a base model from tensors already in memory (tests, models built in code). The
    /// digest is computed over the tensors as [`digest_tensors`] defines it.
    pub fn from_tensors(
        config: serde_json::Value,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let digest = digest_tensors(&tensors)?;
        let tensors = tensors.into_iter().map(|(n, t)| (n, t.detach())).collect();
        Ok(Self {
            dir: PathBuf::new(),
            config,
            tensors,
            digest,
        })
    }

    /// The directory the model was loaded from (empty for [`BaseModel::from_tensors`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The raw `config.json`.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The frozen weights by name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The weights' digest (see the [module docs](self)).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Number of scalars in the base weights.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

/// The digest of a safetensors buffer's content (see the [module docs](self)).
pub fn digest_safetensors(bytes: &[u8]) -> std::result::Result<String, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut h = Sha256::new();
    for name in names {
        let view = st.tensor(&name).map_err(|e| e.to_string())?;
        let dtype = format!("{:?}", view.dtype());
        hash_entry(&mut h, &name, &dtype, view.shape(), view.data());
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// The digest of named tensors, identical to [`digest_safetensors`] of the file
/// [`crate::lora::write_safetensors`] would write from them.
pub fn digest_tensors(tensors: &HashMap<String, Tensor>) -> Result<String> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut h = Sha256::new();
    for name in names {
        let (dtype, data) = tensor_bytes(&tensors[name])?;
        hash_entry(
            &mut h,
            name,
            &format!("{dtype:?}"),
            tensors[name].dims(),
            &data,
        );
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

fn hash_entry(h: &mut Sha256, name: &str, dtype: &str, shape: &[usize], data: &[u8]) {
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(dtype.as_bytes());
    h.update([0u8]);
    h.update((shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update((*d as u64).to_le_bytes());
    }
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

/// A tensor's safetensors dtype and raw little-endian bytes (row-major).
pub fn tensor_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    use safetensors::Dtype as S;
    let flat = t.flatten_all()?;
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        DType::F32 => (S::F32, le(flat.to_vec1::<f32>()?, f32::to_le_bytes)),
        DType::F64 => (S::F64, le(flat.to_vec1::<f64>()?, f64::to_le_bytes)),
        DType::F16 => (
            S::F16,
            le(flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        ),
        DType::BF16 => (
            S::BF16,
            le(flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        ),
        DType::U32 => (S::U32, le(flat.to_vec1::<u32>()?, u32::to_le_bytes)),
        DType::I64 => (S::I64, le(flat.to_vec1::<i64>()?, i64::to_le_bytes)),
        DType::U8 => (S::U8, flat.to_vec1::<u8>()?),
        other => {
            return Err(Error::invalid(
                "dtype",
                format!("writing {other:?} tensors to safetensors is not supported"),
            ))
        }
    })
}
