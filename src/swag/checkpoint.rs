//! Weight checkpoints (safetensors of named tensors) read and written in bounded memory.
//!
//! `swag collect` and `swag sample` work on models larger than RAM allows to copy twice:
//! a checkpoint is read straight into one flat f32 vector in the layout's order, 1 MiB at a
//! time (no second copy of any tensor), and a sample is written tensor by tensor from the flat
//! vector. F32, F16, BF16 and F64 tensors are read (converted to f32); the error names the file
//! and the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorInfo};

use crate::error::{Error, Result};
use crate::layout::ParamLayout;
use crate::swag::format::read_safetensors_header;

/// Bytes read at a time.
const PIECE: usize = 1 << 20;

/// The header of a checkpoint: its tensors and where their data starts.
pub struct CheckpointHeader {
    tensors: HashMap<String, TensorInfo>,
    data_start: u64,
}

impl CheckpointHeader {
    /// Reads the header of the safetensors file at `path` (not its data).
    pub fn read(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::bad_file(path, "file not found"));
        }
        let what = "not a readable safetensors checkpoint";
        let h = read_safetensors_header(path, what)?;
        if h.data_start + h.data_len > h.file_len {
            return Err(Error::bad_file(
                path,
                format!(
                    "{what}: truncated: the header describes {} bytes, the file has {}",
                    h.data_start + h.data_len,
                    h.file_len
                ),
            ));
        }
        Ok(Self {
            tensors: h.tensors,
            data_start: h.data_start,
        })
    }

    /// Names and shapes of the tensors, sorted by name.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<(String, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        v.sort();
        v
    }
}

/// Reads the tensors of `layout` from the checkpoint at `path` into one flat f32 vector.
pub fn read_flat(path: &Path, layout: &ParamLayout) -> Result<Vec<f32>> {
    let header = CheckpointHeader::read(path)?;
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut flat = vec![0f32; layout.numel()];
    let mut buf = vec![0u8; PIECE];
    for e in layout.entries() {
        let info = header
            .tensors
            .get(&e.name)
            .ok_or_else(|| Error::bad_file(path, format!("tensor `{}` is missing", e.name)))?;
        if info.shape != e.shape {
            return Err(Error::bad_file(
                path,
                format!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    e.name, info.shape, e.shape
                ),
            ));
        }
        let es = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
            other => {
                return Err(Error::bad_file(
                    path,
                    format!("tensor `{}` is {other:?}; expected a float tensor", e.name),
                ))
            }
        };
        f.seek(SeekFrom::Start(
            header.data_start + info.data_offsets.0 as u64,
        ))
        .map_err(|err| Error::io(path, err))?;
        let out = &mut flat[e.offset..e.offset + e.numel()];
        let per_piece = PIECE / es;
        for part in out.chunks_mut(per_piece) {
            let bytes = &mut buf[..part.len() * es];
            f.read_exact(bytes).map_err(|err| Error::io(path, err))?;
            for (o, b) in part.iter_mut().zip(bytes.chunks_exact(es)) {
                *o = match info.dtype {
                    Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    Dtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    _ => {
                        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    }
                };
            }
        }
    }
    Ok(flat)
}

/// Writes `flat` (layout order) as a safetensors checkpoint of f32 tensors under the layout's
/// names and shapes, atomically and without a second copy of the data.
pub fn write_flat(path: &Path, layout: &ParamLayout, flat: &[f32]) -> Result<()> {
    if flat.len() != layout.numel() {
        return Err(Error::invalid(
            "flat",
            format!("{} values for a layout of {}", flat.len(), layout.numel()),
        ));
    }
    let mut header = serde_json::Map::new();
    for e in layout.entries() {
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": e.shape,
                "data_offsets": [4 * e.offset, 4 * (e.offset + e.numel())]}),
        );
    }
    let mut json = serde_json::to_string(&header)?;
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    crate::crash_safe::write_file_with(path, |file| {
        let mut w = BufWriter::with_capacity(PIECE, file);
        let io = |e| Error::io(path, e);
        w.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(json.as_bytes()).map_err(io)?;
        if cfg!(target_endian = "little") {
            // The host's f32 bytes are the file's: written as they are, a piece at a time.
            for piece in bytemuck::cast_slice::<f32, u8>(flat).chunks(PIECE) {
                w.write_all(piece).map_err(io)?;
            }
        } else {
            for x in flat {
                w.write_all(&x.to_le_bytes()).map_err(io)?;
            }
        }
        w.flush().map_err(io)
    })
}
