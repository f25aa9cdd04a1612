//! The bytes of the posterior file (format of [`super::file`]): metadata keys and values, the
//! checksum, where each tensor sits ([`FileLayout`]), the header's fields and its writing, and
//! the reading of a safetensors container. It knows nothing of posteriors or stores, so both
//! the file module and the disk store build on it without depending on each other.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use crate::error::{Error, Result};

/// Value of the `format` metadata key.
pub(crate) const FORMAT_NAME: &str = "candle-swag-posterior";
/// The format version this build writes (it also reads versions 1 and 2).
pub(crate) const FORMAT_VERSION: u32 = 3;
/// Value of the `variance` metadata key for exact (Welford) moments.
pub(crate) const VARIANCE_EXACT: &str = "exact";
/// Value of the `variance` metadata key for moments converted from version 1.
pub(crate) const VARIANCE_LEGACY: &str = "legacy-v1";
/// Value of the `state` key of a consistent file.
pub(crate) const STATE_SAVED: &str = "saved";
/// Value of the `state` key while a disk posterior collects.
pub(crate) const STATE_COLLECTING: &str = "collecting";
/// Largest header accepted (safetensors' own limit).
pub(crate) const MAX_HEADER: u64 = 100_000_000;

pub(crate) fn dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

pub(crate) fn dtype_from_name(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        "f16" => Some(DType::F16),
        _ => None,
    }
}

pub(crate) fn st_dtype(dt: DType) -> StDtype {
    match dt {
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        _ => StDtype::F32,
    }
}

pub(crate) fn st_dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        _ => "F32",
    }
}

/// Bytes per checksum chunk.
pub(crate) const CHECKSUM_CHUNK: usize = 1 << 20;

/// Bytes read at a time when a tensor is only digested (a whole number of checksum chunks).
const DIGEST_PIECE: usize = 16 * CHECKSUM_CHUNK;

pub(crate) fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(29)
}

/// The digest of one buffer for [`checksum`]: its length and the digests of its 1 MiB chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BufferDigest {
    pub(crate) len: usize,
    pub(crate) chunks: Vec<u64>,
}

/// Digest of one checksum chunk.
pub(crate) fn chunk_digest(c: &[u8]) -> u64 {
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

/// The [`chunk_digest`]s of `chunks`, four at a time where four have the same length: the
/// mixing is a serial chain per chunk, so interleaving four independent chains keeps the
/// multiplier busy (about three times the bytes per second of one chain; same digests).
pub(crate) fn chunk_digests(chunks: &[&[u8]]) -> Vec<u64> {
    let mut out = Vec::with_capacity(chunks.len());
    for group in chunks.chunks(4) {
        match group {
            [a, b, c, d] if [b.len(), c.len(), d.len()].iter().all(|&l| l == a.len()) => {
                out.extend(chunk_digest4([a, b, c, d]));
            }
            _ => out.extend(group.iter().map(|c| chunk_digest(c))),
        }
    }
    out
}

/// Four [`chunk_digest`]s of equal-length chunks, their chains interleaved.
fn chunk_digest4(c: [&[u8]; 4]) -> [u64; 4] {
    let len = c[0].len();
    let mut h = [0xCBF2_9CE4_8422_2325u64 ^ len as u64; 4];
    let word = |w: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        u64::from_le_bytes(b)
    };
    let lanes = c[0]
        .chunks_exact(8)
        .zip(c[1].chunks_exact(8))
        .zip(c[2].chunks_exact(8))
        .zip(c[3].chunks_exact(8));
    for (((w0, w1), w2), w3) in lanes {
        h[0] = mix(h[0], word(w0));
        h[1] = mix(h[1], word(w1));
        h[2] = mix(h[2], word(w2));
        h[3] = mix(h[3], word(w3));
    }
    let tail = len - len % 8;
    for (h, c) in h.iter_mut().zip(c) {
        for &b in &c[tail..] {
            *h = mix(*h, b as u64);
        }
    }
    h
}

/// The chunk digests of `buf` (split at [`CHECKSUM_CHUNK`]), four chunks per parallel task.
fn par_chunk_digests(buf: &[u8]) -> Vec<u64> {
    buf.par_chunks(4 * CHECKSUM_CHUNK)
        .flat_map_iter(|group| {
            let chunks: Vec<&[u8]> = group.chunks(CHECKSUM_CHUNK).collect();
            chunk_digests(&chunks)
        })
        .collect()
}

impl BufferDigest {
    /// The digest of `len` zero bytes, without allocating them.
    pub(crate) fn zeros(len: usize) -> Self {
        let full = chunk_digest(&vec![0u8; CHECKSUM_CHUNK.min(len)]);
        let mut chunks = vec![full; len / CHECKSUM_CHUNK];
        if !len.is_multiple_of(CHECKSUM_CHUNK) {
            chunks.push(chunk_digest(&vec![0u8; len % CHECKSUM_CHUNK]));
        }
        Self { len, chunks }
    }

    /// An empty digest, to which a buffer's bytes are appended in whole chunks.
    pub(crate) fn empty() -> Self {
        Self {
            len: 0,
            chunks: Vec::new(),
        }
    }

    /// Appends the next bytes of the buffer: every piece but the last must be a whole number of
    /// [`CHECKSUM_CHUNK`]s, so the digest is the one of the whole buffer.
    pub(crate) fn push(&mut self, piece: &[u8]) {
        debug_assert_eq!(self.len % CHECKSUM_CHUNK, 0);
        self.len += piece.len();
        self.chunks.extend(par_chunk_digests(piece));
    }

    /// Digests `buf` (chunks hashed in parallel).
    pub(crate) fn of(buf: &[u8]) -> Self {
        Self {
            len: buf.len(),
            chunks: par_chunk_digests(buf),
        }
    }
}

/// Reads `buf.len()` bytes at `offset` without moving a shared cursor.
#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Reads `buf.len()` bytes at `offset` (elsewhere than Unix: through a cloned handle).
#[cfg(not(unix))]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Combines buffer digests, in order, into the file's checksum.
pub(crate) fn combine(digests: &[&BufferDigest]) -> u64 {
    let mut h = 0x8422_2325_CBF2_9CE4u64;
    for d in digests {
        h = mix(h, d.len as u64);
        for &c in &d.chunks {
            h = mix(h, c);
        }
    }
    h
}

/// 64-bit digest of byte buffers: FNV-style mixing over 64-bit words of 1 MiB chunks (hashed
/// in parallel), then over the chunk digests. Deterministic, independent of the thread count.
pub fn checksum(buffers: &[&[u8]]) -> u64 {
    let digests: Vec<BufferDigest> = buffers.iter().map(|b| BufferDigest::of(b)).collect();
    combine(&digests.iter().collect::<Vec<_>>())
}

/// Host bytes (little-endian) of a tensor, as safetensors stores them.
pub(crate) fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    use safetensors::View;
    Ok(t.data().into_owned())
}

/// Where everything sits in a version-3 file: header, then `mean`, `sq_mean`,
/// `mean_compensation`, `m2` (`4·d` bytes each), then the rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileLayout {
    /// Bytes before the data section: the 8-byte length and the (padded) header.
    pub(crate) data_start: u64,
    pub(crate) d: usize,
    pub(crate) dtype: DType,
}

/// Index of each moment tensor in the data section.
pub(crate) const MOMENT_TENSORS: [&str; 4] = ["mean", "sq_mean", "mean_compensation", "m2"];

impl FileLayout {
    pub(crate) fn moment_offset(&self, i: usize) -> u64 {
        self.data_start + (i * 4 * self.d) as u64
    }

    /// Bytes of one stored row.
    pub(crate) fn row_bytes(&self) -> u64 {
        (self.d * self.dtype.size_in_bytes()) as u64
    }

    /// File offset of stored row `r`.
    pub(crate) fn row_offset(&self, r: usize) -> u64 {
        self.moment_offset(4) + r as u64 * self.row_bytes()
    }
}

/// Everything of the header but the tensors' offsets.
#[derive(Debug, Clone)]
pub(crate) struct HeaderFields {
    pub(crate) layout: String,
    pub(crate) n_collected: u64,
    pub(crate) rank: usize,
    pub(crate) rows: usize,
    pub(crate) dtype: DType,
    pub(crate) scales: Vec<f32>,
    pub(crate) oldest: usize,
    pub(crate) legacy: bool,
    pub(crate) collecting: bool,
    pub(crate) param_base: usize,
    pub(crate) checksum: u64,
}

impl HeaderFields {
    /// The header JSON (unpadded).
    pub(crate) fn json(&self, d: usize) -> Result<String> {
        let mut meta = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            meta.insert(k.to_string(), v);
        };
        put("format", FORMAT_NAME.into());
        put("format_version", FORMAT_VERSION.to_string());
        put("layout", self.layout.clone());
        put("n_collected", self.n_collected.to_string());
        put("rank", self.rank.to_string());
        put("rows", self.rows.to_string());
        put("deviation_dtype", dtype_name(self.dtype).into());
        put("deviation_scales", serde_json::to_string(&self.scales)?);
        put("deviations_oldest", self.oldest.to_string());
        put(
            "variance",
            if self.legacy {
                VARIANCE_LEGACY
            } else {
                VARIANCE_EXACT
            }
            .into(),
        );
        put(
            "state",
            if self.collecting {
                STATE_COLLECTING
            } else {
                STATE_SAVED
            }
            .into(),
        );
        put("param_base", self.param_base.to_string());
        put("checksum", format!("{:016x}", self.checksum));
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::to_value(meta)?);
        let mut start = 0usize;
        for name in MOMENT_TENSORS {
            header.insert(
                name.into(),
                serde_json::json!({"dtype": "F32", "shape": [d], "data_offsets": [start, start + 4 * d]}),
            );
            start += 4 * d;
        }
        let dev_len = self.rows * d * self.dtype.size_in_bytes();
        header.insert(
            "deviations".into(),
            serde_json::json!({"dtype": st_dtype_name(self.dtype), "shape": [self.rows, d],
                "data_offsets": [start, start + dev_len]}),
        );
        Ok(serde_json::to_string(&header)?)
    }

    /// Header bytes to reserve: room for the largest values these fields can take (K rows of
    /// scales, any count), plus slack, a multiple of 8.
    pub(crate) fn reserved(&self, d: usize) -> Result<u64> {
        let widest = HeaderFields {
            n_collected: u64::MAX,
            rows: self.rank,
            scales: vec![-1.234_567_9e-38; self.rank],
            oldest: self.rank,
            collecting: true,
            checksum: u64::MAX,
            ..self.clone()
        };
        let len = widest.json(d)?.len() as u64 + 1024;
        Ok(len.div_ceil(8) * 8)
    }
}

/// Writes the header, padded with spaces to the layout's reserved size, at the file start.
pub(crate) fn write_header(
    file: &mut File,
    path: &Path,
    fields: &HeaderFields,
    fl: &FileLayout,
) -> Result<()> {
    let json = fields.json(fl.d)?;
    let room = fl.data_start - 8;
    if json.len() as u64 > room {
        return Err(Error::bad_file(
            path,
            format!(
                "the posterior header needs {} bytes but the file reserved {room}",
                json.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(fl.data_start as usize);
    bytes.extend_from_slice(&room.to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(fl.data_start as usize, b' ');
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&bytes))
        .map_err(|e| Error::io(path, e))
}

/// The header of a disk posterior, as last written, kept to mark it `collecting`.
pub(crate) fn mark_collecting(file: &mut File, path: &Path, fl: &FileLayout) -> Result<()> {
    let mut c = read_container(path)?;
    let fields = c.header_fields()?;
    drop(c.file.take());
    write_header(
        file,
        path,
        &HeaderFields {
            collecting: true,
            ..fields
        },
        fl,
    )?;
    file.sync_data().map_err(|e| Error::io(path, e))
}

/// A parsed safetensors container: its metadata and tensor table, and the open file.
pub(crate) struct Container {
    pub(crate) path: PathBuf,
    pub(crate) file: Option<File>,
    pub(crate) meta: HashMap<String, String>,
    pub(crate) tensors: HashMap<String, TensorInfo>,
    pub(crate) data_start: u64,
}

/// A safetensors file's header: its metadata, its tensor table (offsets checked to be
/// contiguous and to match each tensor's size) and where the data starts, with the open file.
/// Shared by the posterior loader and the checkpoint reader (`io::checkpoint`); `what` starts
/// each error ("not a readable safetensors file", "… checkpoint").
pub(crate) struct SafetensorsHeader {
    pub(crate) file: File,
    pub(crate) file_len: u64,
    pub(crate) meta: Option<HashMap<String, String>>,
    pub(crate) tensors: HashMap<String, TensorInfo>,
    pub(crate) data_start: u64,
    /// End of the last tensor, in bytes from `data_start`.
    pub(crate) data_len: u64,
}

pub(crate) fn read_safetensors_header(path: &Path, what: &str) -> Result<SafetensorsHeader> {
    let bad = |reason: String| Error::bad_file(path, format!("{what}: {reason}"));
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad("shorter than 8 bytes".into()))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER || n + 8 > file_len {
        return Err(bad(format!("header of {n} bytes in a file of {file_len}")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&header).map_err(|_| bad("the header is not UTF-8".into()))?;
    let parsed: safetensors::tensor::Metadata = serde_json::from_str(text.trim_end())
        .map_err(|e| bad(format!("unreadable header: {e}")))?;
    let mut tensors: Vec<(String, TensorInfo)> = parsed
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let mut end = 0usize;
    for (name, info) in &tensors {
        let (s, e) = info.data_offsets;
        let size = info.shape.iter().product::<usize>() * info.dtype.bitsize() / 8;
        if s != end || e < s || e - s != size {
            return Err(bad(format!("tensor `{name}` has inconsistent offsets")));
        }
        end = e;
    }
    Ok(SafetensorsHeader {
        file,
        file_len,
        meta: parsed.metadata().clone(),
        tensors: tensors.into_iter().collect(),
        data_start: 8 + n,
        data_len: end as u64,
    })
}

pub(crate) fn read_container(path: &Path) -> Result<Container> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let what = "not a readable safetensors file (truncated or corrupted?)";
    let h = read_safetensors_header(path, what)?;
    let meta = h
        .meta
        .ok_or_else(|| bad("no metadata: not a candle-swag posterior".into()))?;
    // Before the length check: a disk posterior's file grows while it collects.
    if meta.get("state").map(String::as_str) == Some(STATE_COLLECTING) {
        return Err(bad(
            "this disk posterior was being collected when it was last written (state `collecting`): \
             its columns and header disagree; collect again, or restore it from a saved copy"
                .into(),
        ));
    }
    if h.data_start + h.data_len != h.file_len {
        return Err(bad(format!(
            "{what}: the header describes {} bytes, the file has {}",
            h.data_start + h.data_len,
            h.file_len
        )));
    }
    Ok(Container {
        path: path.to_path_buf(),
        file: Some(h.file),
        meta,
        tensors: h.tensors,
        data_start: h.data_start,
    })
}

impl Container {
    pub(crate) fn bad(&self, reason: impl Into<String>) -> Error {
        Error::bad_file(&self.path, reason)
    }

    pub(crate) fn get(&self, key: &str) -> Result<&String> {
        self.meta
            .get(key)
            .ok_or_else(|| self.bad(format!("metadata key `{key}` is missing")))
    }

    pub(crate) fn parse_usize(&self, key: &str) -> Result<usize> {
        self.get(key)?
            .parse::<usize>()
            .map_err(|_| self.bad(format!("metadata `{key}` is not a non-negative integer")))
    }

    /// The metadata `deviation_dtype`, a dtype name the store knows.
    pub(crate) fn deviation_dtype(&self) -> Result<DType> {
        let name = self.get("deviation_dtype")?;
        dtype_from_name(name).ok_or_else(|| self.bad(format!("unknown deviation_dtype `{name}`")))
    }

    /// A metadata value that must be one of two words: `false` for `no`, `true` for `yes`.
    pub(crate) fn parse_either(&self, key: &str, no: &str, yes: &str) -> Result<bool> {
        match self.get(key)?.as_str() {
            v if v == no => Ok(false),
            v if v == yes => Ok(true),
            other => Err(self.bad(format!(
                "metadata `{key}` is `{other}`, expected `{no}` or `{yes}`"
            ))),
        }
    }

    /// The tensor `name`, checked to have the dtype and shape expected.
    pub(crate) fn info(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<&TensorInfo> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))?;
        if info.dtype != st_dtype(dtype) || info.shape != shape {
            return Err(self.bad(format!(
                "tensor `{name}` is {:?} {:?}, expected {:?} {:?}",
                info.dtype,
                info.shape,
                st_dtype(dtype),
                shape
            )));
        }
        Ok(info)
    }

    /// Reads `len` bytes at `offset` of the data section.
    pub(crate) fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let path = self.path.clone();
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::bad_file(&path, "file already closed"))?;
        file.seek(SeekFrom::Start(self.data_start + offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(&path, e))?;
        Ok(buf)
    }

    /// Reads tensor `name`'s stored bytes straight into `dst` (which must be its size), one
    /// checksum chunk per task in parallel, each digested while it is in cache; or, with no
    /// `dst`, digests them through a small buffer. Either way the digest is
    /// [`BufferDigest::of`] the bytes, and nothing of the tensor's size is allocated.
    pub(crate) fn read_tensor_digested(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        dst: Option<&mut [u8]>,
    ) -> Result<BufferDigest> {
        let (s, e) = self.info(name, dtype, shape)?.data_offsets;
        let len = e - s;
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Error::bad_file(&self.path, "file already closed"))?;
        let start = self.data_start + s as u64;
        // Four checksum chunks per task, digested together while in cache.
        let read_chunks = |at: usize, buf: &mut [u8]| -> Result<Vec<u64>> {
            let groups = buf
                .par_chunks_mut(4 * CHECKSUM_CHUNK)
                .enumerate()
                .map(|(i, group)| {
                    let offset = start + (at + i * 4 * CHECKSUM_CHUNK) as u64;
                    read_exact_at(file, group, offset).map_err(|e| {
                        Error::bad_file(
                            &self.path,
                            format!("cannot read tensor `{name}` (truncated file?): {e}"),
                        )
                    })?;
                    let chunks: Vec<&[u8]> = group.chunks(CHECKSUM_CHUNK).collect();
                    Ok(chunk_digests(&chunks))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(groups.concat())
        };
        let chunks = match dst {
            Some(dst) => {
                if dst.len() != len {
                    return Err(Error::invalid(
                        "dst",
                        format!("{} bytes for tensor `{name}` of {len}", dst.len()),
                    ));
                }
                read_chunks(0, dst)?
            }
            None => {
                let mut buf = vec![0u8; len.min(DIGEST_PIECE)];
                let mut chunks = Vec::with_capacity(len.div_ceil(CHECKSUM_CHUNK));
                let mut at = 0;
                while at < len {
                    let n = (len - at).min(DIGEST_PIECE);
                    chunks.extend(read_chunks(at, &mut buf[..n])?);
                    at += n;
                }
                chunks
            }
        };
        Ok(BufferDigest { len, chunks })
    }

    pub(crate) fn read_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Vec<u8>> {
        let (s, e) = self.info(name, dtype, shape)?.data_offsets;
        self.read(s as u64, e - s)
    }

    /// The header fields of a version-3 file (offsets aside).
    pub(crate) fn header_fields(&mut self) -> Result<HeaderFields> {
        let dtype = self.deviation_dtype()?;
        let scales: Vec<f32> = serde_json::from_str(self.get("deviation_scales")?)
            .map_err(|e| self.bad(format!("metadata `deviation_scales` is not valid: {e}")))?;
        let checksum = u64::from_str_radix(self.get("checksum")?, 16)
            .map_err(|_| self.bad("metadata `checksum` is not 16 hex digits"))?;
        let legacy = self.parse_either("variance", VARIANCE_EXACT, VARIANCE_LEGACY)?;
        let collecting = self.parse_either("state", STATE_SAVED, STATE_COLLECTING)?;
        Ok(HeaderFields {
            layout: self.get("layout")?.clone(),
            n_collected: self.parse_usize("n_collected")? as u64,
            rank: self.parse_usize("rank")?,
            rows: self.parse_usize("rows")?,
            dtype,
            scales,
            oldest: self.parse_usize("deviations_oldest")?,
            legacy,
            collecting,
            param_base: self.parse_usize("param_base")?,
            checksum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interleaved digests are the one-chain digests: groups of four equal lengths (with a
    /// tail of bytes that is not a whole word), a short last group, and unequal lengths.
    #[test]
    fn interleaved_chunk_digests_match_one_chain() {
        let bytes: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for lens in [
            vec![1003; 4],
            vec![1003; 9],
            vec![64, 64, 65, 64, 8, 0],
            vec![0; 4],
        ] {
            let mut at = 0;
            let chunks: Vec<&[u8]> = lens
                .iter()
                .map(|&l| {
                    at += l;
                    &bytes[at - l..at]
                })
                .collect();
            let want: Vec<u64> = chunks.iter().map(|c| chunk_digest(c)).collect();
            assert_eq!(chunk_digests(&chunks), want, "lengths {lens:?}");
        }
        // The parallel buffer digest: 4 MiB groups, the last partial.
        let big: Vec<u8> = bytes
            .iter()
            .cycle()
            .take(9 * CHECKSUM_CHUNK + 12_345)
            .copied()
            .collect();
        let want: Vec<u64> = big.chunks(CHECKSUM_CHUNK).map(chunk_digest).collect();
        assert_eq!(BufferDigest::of(&big).chunks, want);
    }
}
