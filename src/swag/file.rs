//! The posterior file: one self-describing safetensors file.
//!
//! # Format (version 2)
//! Tensors:
//! - `mean` — `[d]` F32, the running mean of θ;
//! - `sq_mean` — `[d]` F32, the mean of θ², derived as `variance + mean²` for other tools
//!   (read the variance from `m2`: `sq_mean − mean²` cancels in f32);
//! - `deviations` — `[rows, d]` (F32, BF16 or F16), the held deviation columns, **oldest first**;
//! - `mean_compensation` — `[d]` F32, the rounding error of `mean` (the mean is the sum);
//! - `m2` — `[d]` F32, the centred second moment `Σ (θ − mean)²`: the variance is
//!   `m2 / n_collected`. With `mean_compensation` it lets collection go on exactly
//!   (see [`super::posterior`]).
//!
//! Header metadata (`__metadata__`, all values strings):
//! - `format` = `candle-swag-posterior`, `format_version` = `2`;
//! - `layout` — JSON list of `{"name", "shape", "offset"}` in flat order;
//! - `n_collected`, `rank` (K), `rows`, `deviation_dtype` (`f32`, `bf16` or `f16`);
//! - `variance` — `exact` (Welford), or `legacy-v1` for a posterior converted from version 1;
//! - `checksum` — 16 hex digits, a 64-bit non-cryptographic digest of the tensor bytes (in the
//!   order mean, sq_mean, deviations, mean_compensation, m2), to detect corruption.
//!
//! # Version 1
//! Version 1 stored only `mean`, `sq_mean` and `deviations` (checksum over those three). It
//! still loads: `M2` becomes `n · max(sq_mean − mean², 0)` (computed in f64 from the f32
//! values), the compensation 0, and [`SwagPosterior::variance_is_legacy`] is true, because that
//! variance carries the f32 cancellation of the old formula. Saving such a posterior writes
//! version 2 with `variance` = `legacy-v1`.
//!
//! A Python user reads it with `safetensors.numpy.load_file` and
//! `safetensors.safe_open(...).metadata()`.
//!
//! Saving is atomic (temporary file, fsync, rename): an interrupted save never leaves a broken
//! posterior in place. Loading checks everything and says what is wrong.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use super::posterior::{SwagConfig, SwagPosterior};
use crate::error::{Error, Result};
use crate::layout::{ParamEntry, ParamLayout, ParamSet};

/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "candle-swag-posterior";
/// The format version this build writes (it also reads version 1).
pub const FORMAT_VERSION: u32 = 2;
/// Value of the `variance` metadata key for exact (Welford) moments.
const VARIANCE_EXACT: &str = "exact";
/// Value of the `variance` metadata key for moments converted from version 1.
const VARIANCE_LEGACY: &str = "legacy-v1";

fn dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

fn dtype_from_name(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        "f16" => Some(DType::F16),
        _ => None,
    }
}

fn st_dtype(dt: DType) -> StDtype {
    match dt {
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        _ => StDtype::F32,
    }
}

/// 64-bit digest of byte buffers: FNV-style mixing over 64-bit words of 1 MiB chunks (hashed
/// in parallel), then over the chunk digests. Deterministic, independent of the thread count.
pub fn checksum(buffers: &[&[u8]]) -> u64 {
    const CHUNK: usize = 1 << 20;
    fn mix(h: u64, w: u64) -> u64 {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(29)
    }
    fn chunk_digest(c: &[u8]) -> u64 {
        let mut h = 0xCBF2_9CE4_8422_2325u64 ^ c.len() as u64;
        let mut words = c.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = mix(h, u64::from_le_bytes(b));
        }
        for &b in words.remainder() {
            h = mix(h, b as u64);
        }
        h
    }
    let mut h = 0x8422_2325_CBF2_9CE4u64;
    for buf in buffers {
        let digests: Vec<u64> = buf.par_chunks(CHUNK).map(chunk_digest).collect();
        h = mix(h, buf.len() as u64);
        for d in digests {
            h = mix(h, d);
        }
    }
    h
}

/// Host bytes (little-endian) of a tensor, as safetensors stores them.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    use safetensors::View;
    Ok(t.data().into_owned())
}

impl SwagPosterior {
    /// Saves the posterior to `path` atomically (see the [module docs](self) for the format).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mean = tensor_bytes(&self.mean()?)?;
        let sq = tensor_bytes(&self.sq_mean()?)?;
        let dev = tensor_bytes(&self.deviations()?)?;
        let comp = tensor_bytes(&self.mean_compensation()?)?;
        let m2 = tensor_bytes(&self.m2()?)?;
        let d = self.numel();
        let dt = self.config.deviation_dtype();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT_NAME.to_string());
        meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        meta.insert(
            "layout".to_string(),
            serde_json::to_string(self.layout.entries())
                .map_err(|e| Error::invalid("layout", e.to_string()))?,
        );
        meta.insert("n_collected".to_string(), self.n_collected.to_string());
        meta.insert("rank".to_string(), self.config.rank().to_string());
        meta.insert("rows".to_string(), self.rows.to_string());
        meta.insert("deviation_dtype".to_string(), dtype_name(dt).to_string());
        let variance = if self.legacy_variance {
            VARIANCE_LEGACY
        } else {
            VARIANCE_EXACT
        };
        meta.insert("variance".to_string(), variance.to_string());
        meta.insert(
            "checksum".to_string(),
            format!("{:016x}", checksum(&[&mean, &sq, &dev, &comp, &m2])),
        );
        let st_err = |e: safetensors::SafeTensorError| Error::bad_file(path, e.to_string());
        let views = vec![
            (
                "mean",
                TensorView::new(StDtype::F32, vec![d], &mean).map_err(st_err)?,
            ),
            (
                "sq_mean",
                TensorView::new(StDtype::F32, vec![d], &sq).map_err(st_err)?,
            ),
            (
                "deviations",
                TensorView::new(st_dtype(dt), vec![self.rows, d], &dev).map_err(st_err)?,
            ),
            (
                "mean_compensation",
                TensorView::new(StDtype::F32, vec![d], &comp).map_err(st_err)?,
            ),
            (
                "m2",
                TensorView::new(StDtype::F32, vec![d], &m2).map_err(st_err)?,
            ),
        ];
        let bytes = safetensors::serialize(views, Some(meta)).map_err(st_err)?;
        crate::atomic::write_file_atomic(path, &bytes)
    }

    /// Loads a posterior saved by [`SwagPosterior::save`] onto `device`, checking the format,
    /// version, shapes, counts and checksum. Version-1 files are converted (see the
    /// [module docs](self)).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::bad_file(path, reason);
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            bad(format!(
                "not a readable safetensors file (truncated or corrupted?): {e}"
            ))
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| bad("no metadata: not a candle-swag posterior".into()))?;
        let get = |key: &str| -> Result<&String> {
            meta.get(key)
                .ok_or_else(|| bad(format!("metadata key `{key}` is missing")))
        };
        if get("format")? != FORMAT_NAME {
            return Err(bad(format!(
                "metadata `format` is `{}`, expected `{FORMAT_NAME}`",
                get("format")?
            )));
        }
        let version = get("format_version")?;
        let v1 = match version.as_str() {
            "1" => true,
            "2" => false,
            _ => {
                return Err(bad(format!(
                    "unknown posterior format version `{version}`; this build reads versions 1 and {FORMAT_VERSION}"
                )))
            }
        };
        let parse_usize = |key: &str| -> Result<usize> {
            get(key)?
                .parse::<usize>()
                .map_err(|_| bad(format!("metadata `{key}` is not a non-negative integer")))
        };
        let n_collected = parse_usize("n_collected")?;
        let rank = parse_usize("rank")?;
        let rows = parse_usize("rows")?;
        let dt_name = get("deviation_dtype")?;
        let dt = dtype_from_name(dt_name)
            .ok_or_else(|| bad(format!("unknown deviation_dtype `{dt_name}`")))?;
        let entries: Vec<ParamEntry> = serde_json::from_str(get("layout")?)
            .map_err(|e| bad(format!("metadata `layout` is not valid: {e}")))?;
        let layout = ParamLayout::new(
            entries
                .iter()
                .map(|e| (e.name.clone(), e.shape.clone()))
                .collect(),
        )
        .map_err(|e| bad(format!("metadata `layout`: {e}")))?;
        if layout.entries() != entries.as_slice() {
            return Err(bad("metadata `layout` has inconsistent offsets".into()));
        }
        if rows > rank || rows > n_collected {
            return Err(bad(format!(
                "inconsistent counts: rows {rows}, rank {rank}, n_collected {n_collected}"
            )));
        }
        let d = layout.numel();
        let tensor = |name: &str, want_dt: StDtype, shape: Vec<usize>| -> Result<TensorView> {
            let v = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if v.dtype() != want_dt || v.shape() != shape.as_slice() {
                return Err(bad(format!(
                    "tensor `{name}` is {:?} {:?}, expected {:?} {:?}",
                    v.dtype(),
                    v.shape(),
                    want_dt,
                    shape
                )));
            }
            Ok(v)
        };
        let mean = tensor("mean", StDtype::F32, vec![d])?;
        let sq = tensor("sq_mean", StDtype::F32, vec![d])?;
        let dev = tensor("deviations", st_dtype(dt), vec![rows, d])?;
        let expected = get("checksum")?;
        let exact = if v1 {
            None
        } else {
            let comp = tensor("mean_compensation", StDtype::F32, vec![d])?;
            let m2 = tensor("m2", StDtype::F32, vec![d])?;
            Some((comp, m2))
        };
        let mut buffers = vec![mean.data(), sq.data(), dev.data()];
        if let Some((comp, m2)) = &exact {
            buffers.extend([comp.data(), m2.data()]);
        }
        let actual = format!("{:016x}", checksum(&buffers));
        if expected != &actual {
            return Err(bad(format!(
                "checksum mismatch (file says {expected}, data gives {actual}): the version-{version} file is corrupted"
            )));
        }
        let legacy = match (&exact, meta.get("variance").map(String::as_str)) {
            (None, _) => true,
            (Some(_), Some(VARIANCE_EXACT)) => false,
            (Some(_), Some(VARIANCE_LEGACY)) => true,
            (Some(_), other) => {
                return Err(bad(format!(
                    "metadata `variance` is {other:?}, expected `{VARIANCE_EXACT}` or `{VARIANCE_LEGACY}`"
                )))
            }
        };
        let mut posterior = SwagPosterior::new(
            layout,
            SwagConfig::with_rank(rank).with_deviation_dtype(dt)?,
            device,
        )?;
        let f32_tensor = |data: &[u8]| Tensor::from_raw_buffer(data, DType::F32, &[d], device);
        let mean_t = f32_tensor(mean.data())?;
        let (comp_t, m2_t) = match &exact {
            Some((comp, m2)) => (f32_tensor(comp.data())?, f32_tensor(m2.data())?),
            None => {
                // Version 1: M2 = n · max(sq_mean − mean², 0), formed in f64 on the host.
                let cpu = |data: &[u8]| -> Result<Vec<f32>> {
                    Ok(
                        Tensor::from_raw_buffer(data, DType::F32, &[d], &Device::Cpu)?
                            .to_vec1::<f32>()?,
                    )
                };
                let (m, s) = (cpu(mean.data())?, cpu(sq.data())?);
                let n = n_collected as f64;
                let m2: Vec<f32> = m
                    .par_iter()
                    .zip(s.par_iter())
                    .map(|(&m, &s)| (n * (s as f64 - (m as f64).powi(2)).max(0.0)) as f32)
                    .collect();
                (
                    Tensor::zeros(d, DType::F32, device)?,
                    Tensor::from_vec(m2, d, device)?,
                )
            }
        };
        posterior
            .moments
            .slice_set(&Tensor::stack(&[&mean_t, &comp_t, &m2_t], 0)?, 0, 0)?;
        posterior.legacy_variance = legacy;
        if rows > 0 {
            let dev = Tensor::from_raw_buffer(dev.data(), dt, &[rows, d], device)?;
            posterior.deviations.slice_set(&dev, 0, 0)?;
        }
        posterior.n_collected = n_collected;
        posterior.rows = rows;
        posterior.oldest = 0;
        Ok(posterior)
    }

    /// Loads a posterior and checks that it was fitted on `params`' layout (names and shapes);
    /// the error names the first parameter that differs.
    pub fn load_for(path: impl AsRef<Path>, params: &ParamSet) -> Result<Self> {
        let path = path.as_ref();
        let posterior = Self::load(path, params.device())?;
        posterior
            .layout()
            .check_same(params.layout())
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        Ok(posterior)
    }
}
