//! Where the `[K, d]` deviation columns live, and how each column is encoded.
//!
//! # Stores ([`DeviationStore`])
//! - `Device` (default): one `[K, d]` tensor on the posterior's device, beside the moments.
//! - `Host`: the same tensor in host memory (the CPU), for a model on a GPU whose memory cannot
//!   hold `K·d` more numbers. Each collected column is copied to the host once; sampling reads
//!   the columns in chunks of at most `CHUNK` coordinates and uploads their low-rank sum.
//! - `Disk(path)`: the columns are written, as they are collected, straight into the posterior
//!   file at `path` (see [`super::file`]): that file *is* the posterior, and
//!   [`SwagPosterior::save`](super::SwagPosterior::save) to the same path only writes the moments
//!   and the header, never the columns again. Sampling and `log_prob` stream the columns in
//!   chunks of `CHUNK` coordinates (`K · CHUNK` numbers in memory), so memory does not grow
//!   with `K·d`.
//!
//! The moments (`3·d` f32) always stay on the posterior's device. All stores give the same
//! numbers: a column is encoded the same way wherever it lives, and the sampler accumulates the
//! same rows in the same order, so a sample is bit-for-bit the same given the seed.
//!
//! # Encodings (the `deviation_dtype`)
//! - **F32**: as computed.
//! - **BF16**: rounded to nearest even; f32's exponent range, 8 significant bits (relative error
//!   at most 2⁻⁹ per entry). No overflow is possible.
//! - **F16**: each column `x` is stored as `q = f16(x / s)` with a per-column f32 scale `s`, a
//!   power of two chosen so that the column's largest `|x|` maps into `[2¹⁴, 2¹⁵)`, below f16's
//!   maximum 65504: no entry can overflow to ±Inf, and dividing by `s` is exact. The error of an
//!   entry is at most 2⁻¹¹ relative to itself while `|x/s| ≥ 2⁻¹⁴` (f16's normal range), i.e.
//!   for entries down to `2⁻²⁹ ≈ 1.9e-9` times the column's largest; smaller ones are subnormal
//!   (absolute error `2⁻²⁵·s`) and those below `2⁻²⁵·s` are flushed to 0. Flushed entries are
//!   counted ([`SwagPosterior::flushed_to_zero`](super::SwagPosterior::flushed_to_zero)). The
//!   deviation is `q · s`; the sampler folds `s` into the column's weight `z2ₖ`.

use std::fs::File;
#[cfg(not(unix))]
use std::io::Read;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::format::{
    chunk_digest, combine, read_exact_at, write_header, BufferDigest, FileLayout, HeaderFields,
};
use crate::error::{Error, Result};

/// Largest number of coordinates of one column read at a time when the columns are streamed
/// (a multiple of [`super::normals::NOISE_BLOCK`], the CPU kernels' unit of work).
pub(crate) const CHUNK: usize = super::normals::NOISE_BLOCK * 16;

/// Where a posterior keeps its `[K, d]` deviation columns (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviationStore {
    /// On the posterior's device (default).
    #[default]
    Device,
    /// In host memory, whatever the posterior's device.
    Host,
    /// In the posterior file at this path, written as collected.
    Disk(PathBuf),
}

/// The scale `s` of an f16 column whose largest magnitude is `max_abs` (module docs): a power
/// of two with `max_abs / s` in `[2¹⁴, 2¹⁵)`, kept within f32's normal range; 1 for a zero
/// column.
pub(crate) fn f16_column_scale(max_abs: f32) -> f32 {
    if !(max_abs.is_finite() && max_abs > 0.0) {
        return 1.0;
    }
    // floor(log2(max_abs)), exact from the bits (subnormals counted as 2⁻¹²⁶).
    let exp = ((max_abs.to_bits() >> 23) & 0xff) as i32 - 127;
    2f32.powi((exp - 14).max(-126))
}

/// One column encoded for storage: its little-endian bytes, its scale and how many nonzero
/// entries became 0.
pub(crate) struct EncodedColumn {
    pub bytes: Vec<u8>,
    pub scale: f32,
    pub flushed: u64,
}

/// Encodes an f32 column in `dtype` (module docs), handing the bytes to `sink` in pieces of
/// at most `piece` entries, in order. Returns the column's scale and how many nonzero entries
/// became 0. Each piece is encoded in parallel blocks.
pub(crate) fn encode_pieces(
    col: &[f32],
    dtype: DType,
    piece: usize,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(f32, u64)> {
    const BLOCK: usize = 1 << 14;
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::invalid(
            "deviation_dtype",
            format!("{dtype:?} is not supported; use F32, BF16 or F16"),
        ));
    }
    let scale = if dtype == DType::F16 {
        let max_abs = col
            .par_chunks(BLOCK)
            .map(|c| c.iter().fold(0f32, |m, x| m.max(x.abs())))
            .reduce(|| 0.0, f32::max);
        f16_column_scale(max_abs)
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    let es = dtype.size_in_bytes();
    let mut bytes = vec![0u8; piece.min(col.len()) * es];
    let mut flushed = 0u64;
    for part in col.chunks(piece.max(1)) {
        let out = &mut bytes[..part.len() * es];
        flushed += out
            .par_chunks_mut(es * BLOCK)
            .zip(part.par_chunks(BLOCK))
            .map(|(out, c)| {
                let mut flushed = 0u64;
                for (o, &x) in out.chunks_exact_mut(es).zip(c) {
                    let zero = match dtype {
                        DType::F32 => {
                            o.copy_from_slice(&x.to_le_bytes());
                            false
                        }
                        DType::BF16 => {
                            let q = bf16::from_f32(x);
                            o.copy_from_slice(&q.to_le_bytes());
                            q.to_f32() == 0.0
                        }
                        _ => {
                            let q = f16::from_f32(x * inv);
                            o.copy_from_slice(&q.to_le_bytes());
                            q.to_f32() == 0.0
                        }
                    };
                    flushed += u64::from(zero && x != 0.0);
                }
                flushed
            })
            .sum::<u64>();
        sink(out)?;
    }
    Ok((scale, flushed))
}

/// Encodes a whole column in memory ([`encode_pieces`] in one piece).
pub(crate) fn encode_column(col: &[f32], dtype: DType) -> Result<EncodedColumn> {
    let mut bytes = Vec::new();
    let (scale, flushed) = encode_pieces(col, dtype, col.len(), |b| {
        bytes = b.to_vec();
        Ok(())
    })?;
    Ok(EncodedColumn {
        bytes,
        scale,
        flushed,
    })
}

/// Widens stored little-endian values of `dtype` to f32 (exact), appending to `out`.
pub(crate) fn decode_into(bytes: &[u8], dtype: DType, out: &mut Vec<f32>) {
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        DType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

/// The columns of a posterior, wherever they live.
#[derive(Debug)]
pub(crate) enum Columns {
    /// A `[K, d]` tensor in the storage dtype (on the device, or on the CPU for `Host`).
    Memory(Tensor),
    /// Rows of the posterior file.
    Disk(DiskColumns),
}

impl Columns {
    /// Writes one row's stored bytes (already encoded, as read from a file) into physical row
    /// `slot` of in-memory columns. A disk posterior's rows are only written by collection
    /// ([`Columns::store`]), so this refuses one.
    pub(crate) fn write_row(&mut self, slot: usize, bytes: &[u8], dtype: DType) -> Result<()> {
        match self {
            Columns::Memory(t) => {
                let d = t.dim(1)?;
                let row = Tensor::from_raw_buffer(bytes, dtype, &[1, d], t.device())?;
                t.slice_set(&row, 0, slot)?;
                Ok(())
            }
            Columns::Disk(disk) => Err(Error::bad_file(
                disk.path(),
                "a disk posterior's rows are written by collecting, not copied in",
            )),
        }
    }

    /// Encodes an f32 column and writes it into physical row `slot`; returns its scale and
    /// flushed count. On disk the column is encoded and written 1 MiB at a time.
    pub(crate) fn store(&mut self, slot: usize, col: &[f32], dtype: DType) -> Result<(f32, u64)> {
        match self {
            Columns::Memory(_) => {
                let encoded = encode_column(col, dtype)?;
                self.write_row(slot, &encoded.bytes, dtype)?;
                Ok((encoded.scale, encoded.flushed))
            }
            Columns::Disk(disk) => disk.write_column(slot, col, dtype),
        }
    }

    /// Coordinates `lo..lo + len` of the physical rows `rows`, widened to f32, as a
    /// `[rows.len(), len]` tensor on the columns' device (Memory) or the CPU (Disk).
    pub(crate) fn chunk(
        &self,
        rows: &[usize],
        lo: usize,
        len: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        match self {
            Columns::Memory(t) => {
                let picked: Vec<Tensor> = rows
                    .iter()
                    .map(|&r| t.get(r)?.narrow(0, lo, len)?.to_dtype(DType::F32))
                    .collect::<candle_core::Result<_>>()?;
                if picked.is_empty() {
                    return Ok(Tensor::zeros((0, len), DType::F32, t.device())?);
                }
                Ok(Tensor::stack(&picked, 0)?)
            }
            Columns::Disk(disk) => {
                let v = disk.read_chunk(rows, lo, len, dtype)?;
                Ok(Tensor::from_vec(v, (rows.len(), len), &Device::Cpu)?)
            }
        }
    }
}

/// Deviation columns kept as rows of the posterior file (the `Disk` store).
///
/// A file opened on disk has its rows' checksum verified lazily ([`PendingChecksum`]): by the
/// first full sample, which digests each row as it streams it (one read of the file), or by
/// [`DiskColumns::verify`] before anything else reads or writes a row.
#[derive(Debug)]
pub(crate) struct DiskColumns {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) layout: FileLayout,
    /// Digest of each physical row's bytes, as written (for the file's checksum).
    pub(crate) row_digests: Mutex<Vec<Option<BufferDigest>>>,
    /// What remains to check of the file this was opened from; `None` once checked.
    pub(crate) unverified: Mutex<Option<PendingChecksum>>,
    /// True once a row was written since the header was last made consistent.
    pub(crate) dirty: bool,
    /// The write lock of a file this posterior created (see [`crate::crash_safe::WriteLock`]):
    /// a second process creating a disk posterior at the same path is refused, not let to
    /// truncate this one. `None` for a file opened from disk.
    pub(crate) _lock: Option<crate::crash_safe::WriteLock>,
}

/// The part of an opened file's checksum still to verify: the header's value, the digests of
/// the moments (read at opening) and how many rows follow them.
#[derive(Debug)]
pub(crate) struct PendingChecksum {
    pub(crate) expected: u64,
    pub(crate) moments: Vec<BufferDigest>,
    pub(crate) rows: usize,
}

/// Locks a mutex whose data stays valid if a holder panicked (digests are replaced whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DiskColumns {
    /// Creates the file of a new disk posterior at `path`, described by `fields` (empty, header
    /// `saved`, no rows), for `d` coordinates stored as `dtype`. The moments' space is left
    /// sparse until the first save: an empty posterior's moments are zeros, which a sparse file
    /// already reads as.
    pub(crate) fn create(
        path: &Path,
        mut fields: HeaderFields,
        d: usize,
        dtype: DType,
    ) -> Result<Self> {
        let fl = FileLayout {
            data_start: 8 + fields.reserved(d)?,
            d,
            dtype,
        };
        let lock =
            crate::crash_safe::WriteLock::acquire(path, crate::crash_safe::LockWait::Refuse)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(fl.row_offset(0))
            .map_err(|e| Error::io(path, e))?;
        let zeros = BufferDigest::zeros(4 * d);
        fields.checksum = combine(&[&zeros, &zeros, &zeros, &zeros]);
        write_header(&mut file, path, &fields, &fl)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            layout: fl,
            row_digests: Mutex::new(Vec::new()),
            unverified: Mutex::new(None),
            dirty: false,
            _lock: Some(lock),
        })
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, e)
    }

    /// Before the first write after a save: marks the file as being collected (see
    /// [`super::file`]); then positions the file at row `slot`.
    fn begin_row(&mut self, slot: usize) -> Result<()> {
        if !self.dirty {
            super::format::mark_collecting(&mut self.file, &self.path, &self.layout)?;
            self.dirty = true;
        }
        let offset = self.layout.row_offset(slot);
        self.file
            .seek(SeekFrom::Start(offset))
            .map(|_| ())
            .map_err(|e| self.io(e))
    }

    fn finish_row(&mut self, slot: usize, digest: BufferDigest) {
        let digests = self
            .row_digests
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if digests.len() <= slot {
            digests.resize(slot + 1, None);
        }
        digests[slot] = Some(digest);
    }

    /// Whether the opened file's rows still await their checksum check.
    pub(crate) fn is_unverified(&self) -> bool {
        lock(&self.unverified).is_some()
    }

    /// Verifies the opened file's checksum if that is still pending, reading every row once
    /// (one row in memory at a time). A mismatch is an error now and at every later call.
    pub(crate) fn verify(&self) -> Result<()> {
        let mut pending = lock(&self.unverified);
        let Some(rows) = pending.as_ref().map(|p| p.rows) else {
            return Ok(());
        };
        let digests = (0..rows)
            .map(|r| Ok(BufferDigest::of(&self.read_row_unverified(r)?)))
            .collect::<Result<Vec<_>>>()?;
        self.settle(&mut pending, digests)
    }

    /// Completes a pending check with the digests of every row, computed by a caller that
    /// streamed the rows anyway (the sampler): compares the file's checksum and, when it
    /// matches, records the digests for later in-place saves.
    pub(crate) fn verify_with(&self, row_digests: Vec<BufferDigest>) -> Result<()> {
        let mut pending = lock(&self.unverified);
        if pending.is_none() {
            return Ok(());
        }
        self.settle(&mut pending, row_digests)
    }

    fn settle(
        &self,
        pending: &mut Option<PendingChecksum>,
        row_digests: Vec<BufferDigest>,
    ) -> Result<()> {
        let Some(p) = pending.as_ref() else {
            return Ok(());
        };
        if row_digests.len() != p.rows {
            return Err(Error::bad_file(
                &self.path,
                format!("{} row digests for {} rows", row_digests.len(), p.rows),
            ));
        }
        let all: Vec<&BufferDigest> = p.moments.iter().chain(&row_digests).collect();
        let actual = combine(&all);
        if actual != p.expected {
            return Err(Error::bad_file(
                &self.path,
                format!(
                    "checksum mismatch (file says {:016x}, data gives {actual:016x}): the version-3 file is corrupted",
                    p.expected
                ),
            ));
        }
        *lock(&self.row_digests) = row_digests.into_iter().map(Some).collect();
        *pending = None;
        Ok(())
    }

    /// The digests of rows `0..rows`, for an in-place save; `None` for a row never written.
    pub(crate) fn row_digests(&self, rows: usize) -> Result<Vec<Option<BufferDigest>>> {
        self.verify()?;
        let digests = lock(&self.row_digests);
        Ok((0..rows)
            .map(|r| digests.get(r).cloned().flatten())
            .collect())
    }

    /// Reads coordinates `lo..lo + bytes.len() / element size` of physical row `r` into
    /// `bytes` and returns their digest as one checksum chunk (the caller aligns `lo` to
    /// [`super::format::CHECKSUM_CHUNK`] bytes of the row). Unverified: for the sampler's
    /// verifying pass.
    pub(crate) fn read_window(&self, r: usize, lo: usize, bytes: &mut [u8]) -> Result<u64> {
        self.read_at(r, lo, bytes)?;
        Ok(chunk_digest(bytes))
    }

    /// Reads coordinates from `lo` of physical row `r` into `bytes`, as stored.
    pub(crate) fn read_at(&self, r: usize, lo: usize, bytes: &mut [u8]) -> Result<()> {
        let es = self.layout.dtype.size_in_bytes();
        let offset = self.layout.row_offset(r) + (lo * es) as u64;
        read_exact_at(&self.file, bytes, offset).map_err(|e| {
            Error::bad_file(
                &self.path,
                format!("cannot read deviation row {r} (truncated file?): {e}"),
            )
        })
    }

    /// Encodes an f32 column and writes it at row `slot`, one checksum chunk (1 MiB) at a
    /// time, digesting as it goes: no second copy of the column is made.
    pub(crate) fn write_column(
        &mut self,
        slot: usize,
        col: &[f32],
        dtype: DType,
    ) -> Result<(f32, u64)> {
        if col.len() != self.layout.d {
            return Err(Error::invalid(
                "deviations",
                format!(
                    "a column of {} entries, expected {}",
                    col.len(),
                    self.layout.d
                ),
            ));
        }
        self.verify()?;
        self.begin_row(slot)?;
        let mut digest = BufferDigest::empty();
        let piece = super::format::CHECKSUM_CHUNK / dtype.size_in_bytes();
        let (path, file) = (&self.path, &mut self.file);
        let result = encode_pieces(col, dtype, piece, |bytes| {
            digest.push(bytes);
            file.write_all(bytes).map_err(|e| Error::io(path, e))
        })?;
        self.finish_row(slot, digest);
        Ok(result)
    }

    /// Reads coordinates `lo..lo + len` of each physical row in `rows`, widened to f32,
    /// row-major `[rows.len(), len]`.
    pub(crate) fn read_chunk(
        &self,
        rows: &[usize],
        lo: usize,
        len: usize,
        dtype: DType,
    ) -> Result<Vec<f32>> {
        self.verify()?;
        let (mut bytes, mut out) = (Vec::new(), Vec::new());
        self.read_chunk_into(rows, lo, len, dtype, &mut bytes, &mut out)?;
        Ok(out)
    }

    /// [`Self::read_chunk`] into reusable buffers, with positioned reads (`&self`: callable
    /// from several threads at once). The caller has called [`Self::verify`] once before.
    pub(crate) fn read_chunk_into(
        &self,
        rows: &[usize],
        lo: usize,
        len: usize,
        dtype: DType,
        bytes: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let es = dtype.size_in_bytes();
        bytes.resize(len * es, 0);
        out.clear();
        for &r in rows {
            self.read_at(r, lo, bytes)?;
            decode_into(bytes, dtype, out);
        }
        Ok(())
    }

    /// The stored bytes of physical row `r`, once the file's checksum is verified.
    pub(crate) fn read_row(&self, r: usize) -> Result<Vec<u8>> {
        self.verify()?;
        self.read_row_unverified(r)
    }

    fn read_row_unverified(&self, r: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.layout.row_bytes() as usize];
        self.read_at(r, 0, &mut buf)?;
        Ok(buf)
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_scale_maps_the_largest_entry_below_f16_max() -> anyhow::Result<()> {
        for &m in &[1e-30f32, 3e-8, 1.0, 1.5, 65504.0, 7e5, 3e38] {
            let s = f16_column_scale(m);
            let r = m / s;
            assert!((16384.0..32768.0).contains(&r), "{m}: {r}");
            assert_eq!(s.log2().fract(), 0.0, "{s} is not a power of two");
        }
        assert_eq!(f16_column_scale(0.0), 1.0);
        Ok(())
    }

    #[test]
    fn encoding_round_trips_within_its_documented_error() -> anyhow::Result<()> {
        let col: Vec<f32> = (0..5000)
            .map(|i| ((i as f32) * 0.37).sin() * 1e6 + if i == 7 { 1e-20 } else { 0.0 })
            .collect();
        let enc = encode_column(&col, DType::F16)?;
        let mut back = Vec::new();
        decode_into(&enc.bytes, DType::F16, &mut back);
        let max = col.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (x, q) in col.iter().zip(&back) {
            let y = q * enc.scale;
            assert!(y.is_finite());
            // Normal range: 2⁻¹¹ relative; below it, 2⁻²⁵·s absolute.
            let bound = (x.abs() * 2f32.powi(-11)).max(enc.scale * 2f32.powi(-25));
            assert!((y - x).abs() <= bound, "{x} -> {y}");
            assert!(x.abs() <= max);
        }
        // Entry 0 is exactly 0 (sin 0); no nonzero entry of this column is below 2⁻²⁵·s except
        // none: the 1e-20 was added to a ~1e5 entry and vanished in f32 already.
        assert_eq!(enc.flushed, 0);
        let tiny = vec![1.0f32, 1e-12];
        assert_eq!(encode_column(&tiny, DType::F16)?.flushed, 1);
        Ok(())
    }
}
