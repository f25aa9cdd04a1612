//! The posterior file: one self-describing safetensors file.
//!
//! # Format (version 3)
//! Tensors, in this order in the data section:
//! - `mean` — `[d]` F32, the running mean of θ;
//! - `sq_mean` — `[d]` F32, the mean of θ², derived as `variance + mean²` for other tools
//!   (read the variance from `m2`: `sq_mean − mean²` cancels in f32);
//! - `mean_compensation` — `[d]` F32, the rounding error of `mean` (the mean is the sum);
//! - `m2` — `[d]` F32, the centred second moment `Σ (θ − mean)²`: the variance is
//!   `m2 / n_collected`. With `mean_compensation` it lets collection go on exactly
//!   (see [`super::posterior`]);
//! - `deviations` — `[rows, d]` (F32, BF16 or F16), the held deviation columns, last in the
//!   file so that a disk posterior can grow it in place. Row `i` holds the deviation
//!   `deviations[i] · deviation_scales[i]` (see [`super::store`] for the encodings).
//!
//! Header metadata (`__metadata__`, all values strings):
//! - `format` = `candle-swag-posterior`, `format_version` = `3`;
//! - `layout` — JSON list of `{"name", "shape", "offset"}` in flat order;
//! - `n_collected`, `rank` (K), `rows`, `deviation_dtype` (`f32`, `bf16` or `f16`);
//! - `deviation_scales` — JSON list of `rows` f32 scales, one per stored row (1 unless f16);
//! - `deviations_oldest` — the stored row holding the oldest column; the rows are in collection
//!   order from there, wrapping around. 0 in files written from memory (oldest first); a disk
//!   posterior writes its ring buffer in place, so a full ring may start anywhere;
//! - `variance` — `exact` (Welford), or `legacy-v1` for a posterior converted from version 1;
//! - `state` — `saved`, or `collecting` while a disk posterior has written columns since its
//!   last save (such a file is refused: its columns and header disagree);
//! - `param_base` — index of the first parameter in the whole model's layout (0 unless the
//!   file is a shard, see [`super::shard`]); the sampler's noise is keyed by it;
//! - `checksum` — 16 hex digits, a 64-bit non-cryptographic digest of the tensor bytes, taken
//!   over `mean`, `sq_mean`, `mean_compensation`, `m2` and then each stored row of
//!   `deviations` as a buffer of its own, to detect corruption.
//!
//! The header is padded with spaces (as safetensors allows) to leave room for the metadata to
//! grow while a disk posterior collects.
//!
//! # Versions 1 and 2
//! Version 2 stored `mean`, `sq_mean`, `deviations` (oldest first), `mean_compensation`, `m2`,
//! with a checksum over those five buffers in that order; it loads unchanged. Version 1 stored
//! only `mean`, `sq_mean` and `deviations` (checksum over those three). It still loads: `M2`
//! becomes `n · max(sq_mean − mean², 0)` (computed in f64 from the f32 values), the
//! compensation 0, and [`SwagPosterior::variance_is_legacy`] is true, because that variance
//! carries the f32 cancellation of the old formula. Saving such a posterior writes version 3
//! with `variance` = `legacy-v1`.
//!
//! A Python user reads it with `safetensors.numpy.load_file` and
//! `safetensors.safe_open(...).metadata()`.
//!
//! Saving from memory is atomic (temporary file, fsync, rename), and streams: no copy of the
//! whole file is made in memory. Loading checks everything and says what is wrong.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use super::posterior::{SwagConfig, SwagPosterior, ROW_COMP, ROW_M2, ROW_MEAN};
use super::store::{Columns, DeviationStore, DiskColumns};
use crate::error::{Error, Result};
use crate::layout::{ParamEntry, ParamLayout, ParamSet};

/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "candle-swag-posterior";
/// The format version this build writes (it also reads versions 1 and 2).
pub const FORMAT_VERSION: u32 = 3;
/// Value of the `variance` metadata key for exact (Welford) moments.
const VARIANCE_EXACT: &str = "exact";
/// Value of the `variance` metadata key for moments converted from version 1.
const VARIANCE_LEGACY: &str = "legacy-v1";
/// Value of the `state` key of a consistent file.
const STATE_SAVED: &str = "saved";
/// Value of the `state` key while a disk posterior collects.
const STATE_COLLECTING: &str = "collecting";
/// Largest header accepted (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

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

fn st_dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        _ => "F32",
    }
}

/// Bytes per checksum chunk.
pub(crate) const CHECKSUM_CHUNK: usize = 1 << 20;

fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(29)
}

/// The digest of one buffer for [`checksum`]: its length and the digests of its 1 MiB chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BufferDigest {
    len: usize,
    chunks: Vec<u64>,
}

/// Digest of one checksum chunk.
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

impl BufferDigest {
    /// The digest of `len` zero bytes, without allocating them.
    fn zeros(len: usize) -> Self {
        let full = chunk_digest(&vec![0u8; CHECKSUM_CHUNK.min(len)]);
        let mut chunks = vec![full; len / CHECKSUM_CHUNK];
        if len % CHECKSUM_CHUNK != 0 {
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
        self.chunks.extend(
            piece
                .par_chunks(CHECKSUM_CHUNK)
                .map(chunk_digest)
                .collect::<Vec<_>>(),
        );
    }

    /// Digests `buf` (chunks hashed in parallel).
    pub(crate) fn of(buf: &[u8]) -> Self {
        Self {
            len: buf.len(),
            chunks: buf.par_chunks(CHECKSUM_CHUNK).map(chunk_digest).collect(),
        }
    }
}

/// Combines buffer digests, in order, into the file's checksum.
fn combine(digests: &[&BufferDigest]) -> u64 {
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
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
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
const MOMENT_TENSORS: [&str; 4] = ["mean", "sq_mean", "mean_compensation", "m2"];

impl FileLayout {
    fn moment_offset(&self, i: usize) -> u64 {
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
struct HeaderFields {
    layout: String,
    n_collected: u64,
    rank: usize,
    rows: usize,
    dtype: DType,
    scales: Vec<f32>,
    oldest: usize,
    legacy: bool,
    collecting: bool,
    param_base: usize,
    checksum: u64,
}

impl HeaderFields {
    /// The header JSON (unpadded).
    fn json(&self, d: usize) -> Result<String> {
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
    fn reserved(&self, d: usize) -> Result<u64> {
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
fn write_header(
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
struct Container {
    path: PathBuf,
    file: Option<File>,
    meta: HashMap<String, String>,
    tensors: HashMap<String, TensorInfo>,
    data_start: u64,
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

fn read_container(path: &Path) -> Result<Container> {
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
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::bad_file(&self.path, reason)
    }

    fn get(&self, key: &str) -> Result<&String> {
        self.meta
            .get(key)
            .ok_or_else(|| self.bad(format!("metadata key `{key}` is missing")))
    }

    fn parse_usize(&self, key: &str) -> Result<usize> {
        self.get(key)?
            .parse::<usize>()
            .map_err(|_| self.bad(format!("metadata `{key}` is not a non-negative integer")))
    }

    /// The metadata `deviation_dtype`, a dtype name the store knows.
    fn deviation_dtype(&self) -> Result<DType> {
        let name = self.get("deviation_dtype")?;
        dtype_from_name(name).ok_or_else(|| self.bad(format!("unknown deviation_dtype `{name}`")))
    }

    /// A metadata value that must be one of two words: `false` for `no`, `true` for `yes`.
    fn parse_either(&self, key: &str, no: &str, yes: &str) -> Result<bool> {
        match self.get(key)?.as_str() {
            v if v == no => Ok(false),
            v if v == yes => Ok(true),
            other => Err(self.bad(format!(
                "metadata `{key}` is `{other}`, expected `{no}` or `{yes}`"
            ))),
        }
    }

    /// The tensor `name`, checked to have the dtype and shape expected.
    fn info(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<&TensorInfo> {
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
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
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

    fn read_tensor(&mut self, name: &str, dtype: DType, shape: &[usize]) -> Result<Vec<u8>> {
        let (s, e) = self.info(name, dtype, shape)?.data_offsets;
        self.read(s as u64, e - s)
    }

    /// The header fields of a version-3 file (offsets aside).
    fn header_fields(&mut self) -> Result<HeaderFields> {
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

impl SwagPosterior {
    /// The header fields describing this posterior, with a given checksum.
    fn header_fields(&self, oldest: usize, checksum: u64) -> Result<HeaderFields> {
        Ok(HeaderFields {
            layout: serde_json::to_string(self.layout.entries())?,
            n_collected: self.n_collected as u64,
            rank: self.config.rank(),
            rows: self.rows,
            dtype: self.config.deviation_dtype(),
            scales: Vec::new(),
            oldest,
            legacy: self.legacy_variance,
            collecting: false,
            param_base: self.param_base,
            checksum,
        })
    }

    /// Hands the bytes of moment tensor `i` (file order: mean, sq_mean, mean_compensation,
    /// m2) to `sink`, [`CHUNK`](super::store::CHUNK) coordinates at a time (a whole number of
    /// checksum chunks), and returns their digest: saving never holds a `[d]` copy. `sq_mean`
    /// is formed with the same f32 operations as [`SwagPosterior::sq_mean`].
    fn write_moment(
        &self,
        i: usize,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<BufferDigest> {
        let d = self.numel();
        let inv_n = super::kernels::inv_count(self.n_collected) as f64;
        let mut digest = BufferDigest::empty();
        for lo in (0..d).step_by(super::store::CHUNK) {
            let len = super::store::CHUNK.min(d - lo);
            let row = |r: usize| self.moments.get(r)?.narrow(0, lo, len);
            let t = match i {
                0 => row(ROW_MEAN)?,
                1 => row(ROW_M2)?
                    .affine(inv_n, 0.0)?
                    .maximum(0f64)?
                    .add(&row(ROW_MEAN)?.sqr()?)?,
                2 => row(ROW_COMP)?,
                _ => row(ROW_M2)?,
            };
            let bytes = tensor_bytes(&t)?;
            digest.push(&bytes);
            sink(&bytes)?;
        }
        Ok(digest)
    }

    /// Saves the posterior to `path` (see the [module docs](self) for the format).
    ///
    /// From memory, or from a disk posterior to another path, the file is written to a
    /// temporary sibling and renamed into place (atomic), one row at a time. A disk posterior
    /// saved to its own path writes only the moments and the header in place, then syncs.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Columns::Disk(disk) = &self.columns {
            if same_file(disk.path(), path) {
                return self.save_in_place(disk);
            }
        }
        let mut digests: Vec<BufferDigest> = Vec::with_capacity(4 + self.rows);
        let mut fields = self.header_fields(0, 0)?;
        fields.scales = self.deviation_scales();
        let d = self.numel();
        let fl = FileLayout {
            data_start: 8 + fields.reserved(d)?,
            d,
            dtype: self.config.deviation_dtype(),
        };
        crate::atomic::write_file_with(path, |file| {
            file.seek(SeekFrom::Start(fl.data_start))
                .map_err(|e| Error::io(path, e))?;
            for i in 0..MOMENT_TENSORS.len() {
                let digest =
                    self.write_moment(i, |b| file.write_all(b).map_err(|e| Error::io(path, e)))?;
                digests.push(digest);
            }
            for (k, r) in self.physical_rows().into_iter().enumerate() {
                let row = self.stored_row_bytes(r)?;
                debug_assert_eq!(
                    fl.row_offset(k),
                    fl.row_offset(0) + k as u64 * fl.row_bytes()
                );
                file.write_all(&row).map_err(|e| Error::io(path, e))?;
                digests.push(BufferDigest::of(&row));
            }
            fields.checksum = combine(&digests.iter().collect::<Vec<_>>());
            write_header(file, path, &fields, &fl)
        })
    }

    /// Bytes of physical row `r` as stored.
    pub(crate) fn stored_row_bytes(&self, r: usize) -> Result<Vec<u8>> {
        match &self.columns {
            Columns::Memory(t) => tensor_bytes(&t.get(r)?),
            Columns::Disk(disk) => disk.read_row(r),
        }
    }

    /// Makes a disk posterior's own file consistent: moments, length, header, sync.
    fn save_in_place(&self, disk: &DiskColumns) -> Result<()> {
        let path = disk.path();
        let fl = &disk.layout;
        let mut file = &disk.file;
        let mut moment_digests = Vec::with_capacity(MOMENT_TENSORS.len());
        for i in 0..MOMENT_TENSORS.len() {
            file.seek(SeekFrom::Start(fl.moment_offset(i)))
                .map_err(|e| Error::io(path, e))?;
            moment_digests
                .push(self.write_moment(i, |b| file.write_all(b).map_err(|e| Error::io(path, e)))?);
        }
        let mut digests: Vec<&BufferDigest> = moment_digests.iter().collect();
        for r in 0..self.rows {
            let dg = disk
                .row_digests
                .get(r)
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    Error::bad_file(path, format!("deviation row {r} was never written"))
                })?;
            digests.push(dg);
        }
        let mut fields = self.header_fields(self.oldest, combine(&digests))?;
        fields.scales = self.scales[..self.rows].to_vec();
        disk.file
            .set_len(fl.row_offset(self.rows))
            .map_err(|e| Error::io(path, e))?;
        let mut f = disk.file.try_clone().map_err(|e| Error::io(path, e))?;
        write_header(&mut f, path, &fields, fl)?;
        f.sync_all().map_err(|e| Error::io(path, e))
    }

    /// Loads a posterior saved by [`SwagPosterior::save`] onto `device`, checking the format,
    /// version, shapes, counts and checksum. Version-1 and -2 files are converted (see the
    /// [module docs](self)). The columns are read into `device` memory; see
    /// [`SwagPosterior::load_with_store`] to keep them on the host or on disk.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with_store(path, device, DeviationStore::Device)
    }

    /// Loads a posterior with its columns in `store`: `Device` or `Host` read them into
    /// memory; `Disk(p)` opens the file in place, without reading the columns into memory
    /// (`p` must be `path` itself: a disk posterior goes on collecting into its own file, and
    /// [`save`](Self::save) to that path rewrites only the moments and the header).
    pub fn load_with_store(
        path: impl AsRef<Path>,
        device: &Device,
        store: DeviationStore,
    ) -> Result<Self> {
        let path = path.as_ref();
        if let DeviationStore::Disk(p) = &store {
            if !same_file(p, path) {
                return Err(Error::invalid(
                    "store",
                    format!(
                        "a disk posterior is opened in place: pass DeviationStore::Disk({}) to open {}",
                        path.display(),
                        path.display()
                    ),
                ));
            }
        }
        let mut c = read_container(path)?;
        if c.get("format")? != FORMAT_NAME {
            return Err(c.bad(format!(
                "metadata `format` is `{}`, expected `{FORMAT_NAME}`",
                c.get("format")?
            )));
        }
        let version = c.get("format_version")?.clone();
        match version.as_str() {
            "1" | "2" => {
                if matches!(store, DeviationStore::Disk(_)) {
                    return Err(c.bad(format!(
                        "a version-{version} file cannot be opened on disk; load it and save it again (version {FORMAT_VERSION}) first"
                    )));
                }
                load_legacy(&mut c, &version, device, store)
            }
            "3" => load_v3(c, device, store),
            _ => Err(c.bad(format!(
                "unknown posterior format version `{version}`; this build reads versions 1 to {FORMAT_VERSION}"
            ))),
        }
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

/// True when two paths name the same file (or the same path, for one not yet created).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The layout from the `layout` metadata, checked.
fn parse_layout(c: &Container, json: &str) -> Result<ParamLayout> {
    let entries: Vec<ParamEntry> = serde_json::from_str(json)
        .map_err(|e| c.bad(format!("metadata `layout` is not valid: {e}")))?;
    let layout = ParamLayout::new(
        entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect(),
    )
    .map_err(|e| c.bad(format!("metadata `layout`: {e}")))?;
    if layout.entries() != entries.as_slice() {
        return Err(c.bad("metadata `layout` has inconsistent offsets"));
    }
    Ok(layout)
}

fn check_counts(c: &Container, rows: usize, rank: usize, n: u64) -> Result<()> {
    if rows > rank || rows as u64 > n {
        return Err(c.bad(format!(
            "inconsistent counts: rows {rows}, rank {rank}, n_collected {n}"
        )));
    }
    Ok(())
}

fn checksum_error(c: &Container, expected: u64, actual: u64, version: &str) -> Error {
    c.bad(format!(
        "checksum mismatch (file says {expected:016x}, data gives {actual:016x}): the version-{version} file is corrupted"
    ))
}

/// Sets a fresh posterior's moments from host f32 bytes.
fn set_moments(p: &mut SwagPosterior, mean: &[u8], comp: &Tensor, m2: &Tensor) -> Result<()> {
    let d = p.numel();
    let mean = Tensor::from_raw_buffer(mean, DType::F32, &[d], p.device())?;
    let stacked = Tensor::stack(&[&mean, comp, m2], 0)?;
    debug_assert_eq!((ROW_MEAN, ROW_COMP, ROW_M2), (0, 1, 2));
    p.moments.slice_set(&stacked, 0, 0)?;
    Ok(())
}

/// Versions 1 and 2: whole tensors, one checksum over whole buffers, rows oldest first.
fn load_legacy(
    c: &mut Container,
    version: &str,
    device: &Device,
    store: DeviationStore,
) -> Result<SwagPosterior> {
    let v1 = version == "1";
    let n_collected = c.parse_usize("n_collected")?;
    let rank = c.parse_usize("rank")?;
    let rows = c.parse_usize("rows")?;
    let dt = c.deviation_dtype()?;
    let layout = parse_layout(c, &c.get("layout")?.clone())?;
    check_counts(c, rows, rank, n_collected as u64)?;
    let d = layout.numel();
    let expected = c.get("checksum")?.clone();
    // Version 1 predates the key: its variance is always the legacy one.
    let legacy = v1 || c.parse_either("variance", VARIANCE_EXACT, VARIANCE_LEGACY)?;
    let mean = c.read_tensor("mean", DType::F32, &[d])?;
    let sq = c.read_tensor("sq_mean", DType::F32, &[d])?;
    let dev = c.read_tensor("deviations", dt, &[rows, d])?;
    let exact = if v1 {
        None
    } else {
        Some((
            c.read_tensor("mean_compensation", DType::F32, &[d])?,
            c.read_tensor("m2", DType::F32, &[d])?,
        ))
    };
    let mut buffers: Vec<&[u8]> = vec![&mean, &sq, &dev];
    if let Some((comp, m2)) = &exact {
        buffers.extend([comp.as_slice(), m2.as_slice()]);
    }
    let actual = format!("{:016x}", checksum(&buffers));
    if expected != actual {
        return Err(c.bad(format!(
            "checksum mismatch (file says {expected}, data gives {actual}): the version-{version} file is corrupted"
        )));
    }
    let config = SwagConfig::with_rank(rank)
        .with_deviation_dtype(dt)?
        .with_store(store);
    let mut p = SwagPosterior::new(layout, config, device)?;
    let (comp_t, m2_t) = match &exact {
        Some((comp, m2)) => (
            Tensor::from_raw_buffer(comp, DType::F32, &[d], device)?,
            Tensor::from_raw_buffer(m2, DType::F32, &[d], device)?,
        ),
        None => {
            // Version 1: M2 = n · max(sq_mean − mean², 0), formed in f64 on the host.
            let f = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                    .collect()
            };
            let (m, s) = (f(&mean), f(&sq));
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
    set_moments(&mut p, &mean, &comp_t, &m2_t)?;
    p.legacy_variance = legacy;
    let row_bytes = d * dt.size_in_bytes();
    for r in 0..rows {
        p.columns
            .write_row(r, &dev[r * row_bytes..(r + 1) * row_bytes], dt)?;
    }
    p.n_collected = n_collected;
    p.rows = rows;
    p.oldest = 0;
    Ok(p)
}

/// Version 3: moments read whole, rows streamed one at a time (into memory, or only digested
/// for a disk posterior opened in place).
fn load_v3(mut c: Container, device: &Device, store: DeviationStore) -> Result<SwagPosterior> {
    let fields = c.header_fields()?;
    let layout = parse_layout(&c, &fields.layout)?;
    check_counts(&c, fields.rows, fields.rank, fields.n_collected)?;
    if fields.scales.len() != fields.rows
        || fields.scales.iter().any(|s| !(s.is_finite() && *s > 0.0))
    {
        return Err(c.bad(format!(
            "metadata `deviation_scales` must hold {} finite positive scales",
            fields.rows
        )));
    }
    if (fields.rows > 0 && fields.oldest >= fields.rows)
        || (fields.oldest != 0 && fields.rows != fields.rank)
    {
        return Err(c.bad(format!(
            "metadata `deviations_oldest` {} does not fit {} rows of K = {}",
            fields.oldest, fields.rows, fields.rank
        )));
    }
    let d = layout.numel();
    let dt = fields.dtype;
    let (dev_start, _) = c.info("deviations", dt, &[fields.rows, d])?.data_offsets;
    let fl = FileLayout {
        data_start: c.data_start,
        d,
        dtype: dt,
    };
    let in_place = matches!(store, DeviationStore::Disk(_));
    if in_place && fl.row_offset(0) != c.data_start + dev_start as u64 {
        return Err(c.bad(
            "the file's tensors are not in the order this build writes; load it and save it again before opening it on disk",
        ));
    }
    let config = SwagConfig::with_rank(fields.rank)
        .with_deviation_dtype(dt)?
        .with_store(store.clone());
    let mut p = if in_place {
        let path = c.path.clone();
        // Read-only files can still be sampled from; writing to them fails by name.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .map_err(|e| Error::io(&path, e))?;
        let disk = DiskColumns {
            path,
            file,
            layout: fl.clone(),
            row_digests: Vec::new(),
            dirty: false,
        };
        SwagPosterior::assemble(layout, config, device, Columns::Disk(disk))?
    } else {
        SwagPosterior::new(layout, config, device)?
    };
    // One moment at a time (digested, then copied into its row), so loading holds at most one
    // `[d]` byte buffer beside the posterior's own state.
    let mut digests: Vec<BufferDigest> = Vec::with_capacity(4 + fields.rows);
    for name in MOMENT_TENSORS {
        let bytes = c.read_tensor(name, DType::F32, &[d])?;
        digests.push(BufferDigest::of(&bytes));
        let row = match name {
            "mean" => ROW_MEAN,
            "mean_compensation" => ROW_COMP,
            "m2" => ROW_M2,
            _ => continue,
        };
        let t = Tensor::from_raw_buffer(&bytes, DType::F32, &[1, d], device)?;
        p.moments.slice_set(&t, 0, row)?;
    }
    let row_bytes = fl.row_bytes() as usize;
    let mut row_digests = Vec::with_capacity(fields.rows);
    for r in 0..fields.rows {
        let bytes = c.read((dev_start + r * row_bytes) as u64, row_bytes)?;
        let dg = BufferDigest::of(&bytes);
        digests.push(dg.clone());
        row_digests.push(Some(dg));
        if !in_place {
            p.columns.write_row(r, &bytes, dt)?;
        }
    }
    let actual = combine(&digests.iter().collect::<Vec<_>>());
    if actual != fields.checksum {
        return Err(checksum_error(&c, fields.checksum, actual, "3"));
    }
    p.legacy_variance = fields.legacy;
    p.n_collected = fields.n_collected as usize;
    p.rows = fields.rows;
    p.oldest = fields.oldest;
    p.param_base = fields.param_base;
    p.scales = fields.scales.clone();
    p.scales.resize(fields.rank, 1.0);
    if let Columns::Disk(disk) = &mut p.columns {
        disk.row_digests = row_digests;
    }
    Ok(p)
}

/// Creates the file of a new disk posterior at `path` (empty, header `saved`, no rows) and
/// returns its columns. The moments' space is left sparse until the first save.
pub(crate) fn create_disk(p: &SwagPosterior, path: &Path) -> Result<DiskColumns> {
    let d = p.numel();
    let mut fields = p.header_fields(0, 0)?;
    let fl = FileLayout {
        data_start: 8 + fields.reserved(d)?,
        d,
        dtype: p.config.deviation_dtype(),
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.set_len(fl.row_offset(0))
        .map_err(|e| Error::io(path, e))?;
    // An empty posterior's moments are zeros: the sparse file already reads as zeros.
    let zeros = BufferDigest::zeros(4 * d);
    fields.checksum = combine(&[&zeros, &zeros, &zeros, &zeros]);
    write_header(&mut file, path, &fields, &fl)?;
    Ok(DiskColumns {
        path: path.to_path_buf(),
        file,
        layout: fl,
        row_digests: Vec::new(),
        dirty: false,
    })
}
