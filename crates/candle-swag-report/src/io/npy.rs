//! `.npy` and `.npz` readers that check every size a header claims against the bytes there
//! are before allocating anything.
//!
//! candle's `Tensor::read_npy`/`read_npz` allocate the array a header describes (and the
//! header itself, up to 4 GiB in a version-2 file) before reading it, so a 100-byte file
//! claiming a shape of `(1000000000000,)` makes them allocate terabytes. These readers read
//! the file (or the zip entry) first, bounded by its real length, and refuse a header that
//! claims more than that. They accept what candle's do: little-endian (or byte-order-free)
//! `f2 f4 f8 i2 i4 i8 u1 u4 b1` in C order, `npy` versions 1 to 3; `.npz` archives of stored
//! (uncompressed) `.npy` entries.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use candle_swag::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads the `.npy` file at `path`.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes)
        .map_err(|reason| Error::bad_file(path, format!("not a readable .npy file: {reason}")))
}

/// Reads every array of the `.npz` file at `path`, with its name (the entry's, less `.npy`).
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::bad_file(path, format!("not a readable .npz file: {reason}"));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(zip.len().min(1024));
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().map_err(|e| bad(e.to_string()))?.into_owned();
        // Stored entries only (candle's zip has no decompressor): an entry holds at most the
        // file's bytes. `take` bounds the read; the buffer grows only with bytes really read.
        let mut bytes = Vec::new();
        entry
            .take(file_len)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("entry `{name}`: {e}")))?;
        let t = parse_npy(&bytes).map_err(|reason| bad(format!("entry `{name}`: {reason}")))?;
        let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((name, t));
    }
    Ok(out)
}

/// Parses the bytes of one `.npy` array; the error says what is wrong.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err("no NUMPY magic string".into());
    }
    let (len_bytes, start) = match bytes[6] {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(format!("unsupported npy version {v}")),
    };
    if bytes.len() < start {
        return Err("truncated header".into());
    }
    let header_len = bytes[8..8 + len_bytes]
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let data_start = start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "the header claims {header_len} bytes, the file holds {}",
                bytes.len() - start
            )
        })?;
    let header = String::from_utf8_lossy(&bytes[start..data_start]);
    let (dtype, shape) = parse_header(&header)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let data = &bytes[data_start..];
    if data.len() < count {
        return Err(format!(
            "shape {shape:?} of {dtype:?} needs {count} bytes, the file holds {}",
            data.len()
        ));
    }
    Tensor::from_raw_buffer(&data[..count], dtype, &shape, &Device::Cpu).map_err(|e| e.to_string())
}

/// The dtype and shape of a header such as `{'descr': '<f8', 'fortran_order': False,
/// 'shape': (128, 3), }`.
fn parse_header(header: &str) -> std::result::Result<(DType, Vec<usize>), String> {
    let body = header.trim_matches(|c: char| c == '{' || c == '}' || c == ',' || c.is_whitespace());
    let mut parts = Vec::new();
    let (mut start, mut depth) = (0usize, 0i64);
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("unreadable header entry `{part}`"))?;
        let key = key.trim_matches(|c: char| c == '\'' || c == '"' || c.is_whitespace());
        let value = value.trim_matches(|c: char| c == '\'' || c == '"' || c.is_whitespace());
        match key {
            "descr" => descr = Some(value),
            "fortran_order" => fortran = Some(value),
            "shape" => shape = Some(value),
            _ => {}
        }
    }
    match fortran {
        None | Some("False") => {}
        Some("True") => return Err("fortran order is not supported".into()),
        Some(other) => return Err(format!("unknown fortran_order `{other}`")),
    }
    let descr = descr.ok_or("no descr in the header")?;
    if descr.starts_with('>') {
        return Err(format!("big-endian descr `{descr}` is not supported"));
    }
    let dtype = match descr.trim_start_matches(['<', '=', '|']) {
        "e" | "f2" => DType::F16,
        "f" | "f4" => DType::F32,
        "d" | "f8" => DType::F64,
        "h" | "i2" => DType::I16,
        "i" | "i4" => DType::I32,
        "q" | "i8" => DType::I64,
        "B" | "u1" | "?" | "b1" => DType::U8,
        "I" | "u4" => DType::U32,
        other => return Err(format!("unsupported descr `{other}`")),
    };
    let shape = shape.ok_or("no shape in the header")?;
    let dims = shape.trim_matches(|c: char| c == '(' || c == ')' || c == ',' || c.is_whitespace());
    let shape = if dims.is_empty() {
        Vec::new()
    } else {
        dims.split(',')
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("shape entry `{}` is not a size", v.trim()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    Ok((dtype, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_what_candle_writes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("a.npy");
        let t = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (3, 2), &Device::Cpu)?;
        t.write_npy(&p)?;
        let back = read_npy(&p)?;
        assert_eq!(back.dims(), &[3, 2]);
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        let z = dir.path().join("a.npz");
        let l = Tensor::from_vec(vec![1i64, 0], 2, &Device::Cpu)?;
        Tensor::write_npz(&[("probs", &t), ("labels", &l)], &z)?;
        let named = read_npz(&z)?;
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["probs", "labels"]);
        assert_eq!(named[1].1.to_vec1::<i64>()?, [1, 0]);
        Ok(())
    }

    #[test]
    fn huge_claims_are_refused_before_allocating() -> anyhow::Result<()> {
        let e = parse_npy(&npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }",
            &[0; 8],
        ))
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert!(
            e.contains("needs 8000000000000 bytes, the file holds 8"),
            "{e}"
        );
        let mut v2 = MAGIC.to_vec();
        v2.extend([2, 0]);
        v2.extend(u32::MAX.to_le_bytes());
        let e = parse_npy(&v2)
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert!(e.contains("the header claims 4294967295 bytes"), "{e}");
        let e = parse_npy(&npy(
            "{'descr': '<f8', 'shape': (4294967296, 4294967296, 16), }",
            &[],
        ))
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        assert!(e.contains("overflows"), "{e}");
        Ok(())
    }
}
