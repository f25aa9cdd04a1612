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

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::config::SwagParams;
pub use super::format::checksum;
use super::format::*;
use super::posterior::{SwagPosterior, MOMENT_ROWS, ROW_COMP, ROW_M2, ROW_MEAN};
use super::store::{Columns, DeviationStore, DiskColumns, PendingChecksum};
use crate::error::{Error, Result};
use crate::layout::{ParamEntry, ParamLayout, ParamSet};

impl SwagPosterior {
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
    /// temporary sibling, one row at a time, `fsync`ed, renamed over `path`, and the directory
    /// is synced: a process killed at any moment leaves at `path` the previous file or the
    /// complete new one, never a torn file (`tests/crash_safety.rs` kills `swag collect`, which
    /// saves this way, at 24 random moments). A disk posterior saved to its own path writes
    /// the moments and the header in place, then syncs: that file is the posterior being
    /// collected, so keep it apart from a finished copy as `swag collect --store disk` does
    /// (it collects into `<out>.partial` and renames it over `--out` once saved).
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
        crate::crash_safe::write_file_with(path, |file| {
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
        let rows = disk.row_digests(self.rows)?;
        let mut digests: Vec<&BufferDigest> = moment_digests.iter().collect();
        for (r, dg) in rows.iter().enumerate() {
            let dg = dg.as_ref().ok_or_else(|| {
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

    /// Verifies now the checksum of columns opened on disk and not yet verified (see
    /// [`load_with_store`](Self::load_with_store)): one read of the columns. Nothing to do for
    /// columns in memory, which are verified as they are loaded.
    pub fn verify_columns(&self) -> Result<()> {
        match &self.columns {
            Columns::Disk(disk) => disk.verify(),
            Columns::Memory(_) => Ok(()),
        }
    }

    /// Bytes the deviation columns of the posterior file at `path` take, and whether the file
    /// can be opened in place (`DeviationStore::Disk`: format version 3), from its header alone
    /// (no tensor is read): what a tool needs to decide whether to stream the columns.
    pub fn stored_columns(path: impl AsRef<Path>) -> Result<(u64, bool)> {
        let c = read_container(path.as_ref())?;
        let info = c
            .tensors
            .get("deviations")
            .ok_or_else(|| c.bad("no `deviations` tensor"))?;
        let (lo, hi) = info.data_offsets;
        let in_place = c.get("format_version")? == &FORMAT_VERSION.to_string();
        Ok((hi.saturating_sub(lo) as u64, in_place))
    }

    /// Loads a posterior with its columns in `store`: `Device` or `Host` read them into
    /// memory; `Disk(p)` opens the file in place, without reading the columns into memory
    /// (`p` must be `path` itself: a disk posterior goes on collecting into its own file, and
    /// [`save`](Self::save) to that path rewrites only the moments and the header).
    ///
    /// Opened on disk, the header and the moments are checked at once, and the columns'
    /// share of the checksum when they are first used: the first full sample digests each
    /// column as it streams it (so sampling a large file reads it once, not twice) and fails
    /// if the checksum does not match; anything else that reads or writes a column verifies
    /// them first. [`verify_columns`](Self::verify_columns) checks them now.
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

/// Most deviation columns a file may leave empty (rank K minus its stored rows): loading
/// allocates all K columns, so an unchecked K in a small file could claim any amount of memory.
pub const MAX_EMPTY_COLUMNS: usize = 4096;

fn check_counts(c: &Container, rows: usize, rank: usize, n: u64) -> Result<()> {
    if rows > rank || rows as u64 > n {
        return Err(c.bad(format!(
            "inconsistent counts: rows {rows}, rank {rank}, n_collected {n}"
        )));
    }
    if rank - rows > MAX_EMPTY_COLUMNS {
        return Err(c.bad(format!(
            "rank K = {rank} with only {rows} columns stored: a posterior file may leave at most \
             {MAX_EMPTY_COLUMNS} of its K columns empty (refused before allocating them)"
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
    let config = SwagParams {
        rank,
        deviation_dtype: dt,
        store,
    }
    .check()?;
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
    let config = SwagParams {
        rank: fields.rank,
        deviation_dtype: dt,
        store: store.clone(),
    }
    .check()?;
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
            row_digests: Mutex::new(Vec::new()),
            unverified: Mutex::new(None),
            dirty: false,
            _lock: None,
        };
        SwagPosterior::assemble(layout, config, device, Columns::Disk(disk))?
    } else {
        SwagPosterior::new(layout, config, device)?
    };
    // The stored moments are read straight into the rows of one host buffer (in parallel,
    // digested as they arrive), which becomes the moments tensor without a copy on the CPU;
    // `sq_mean`, which the moments do not keep, is only digested.
    let mut digests: Vec<BufferDigest> = Vec::with_capacity(4 + fields.rows);
    let mut host = vec![0f32; MOMENT_ROWS * d];
    for name in MOMENT_TENSORS {
        let row = match name {
            "mean" => Some(ROW_MEAN),
            "mean_compensation" => Some(ROW_COMP),
            "m2" => Some(ROW_M2),
            _ => None,
        };
        let dst = row.map(|r| bytemuck::cast_slice_mut::<f32, u8>(&mut host[r * d..(r + 1) * d]));
        digests.push(c.read_tensor_digested(name, DType::F32, &[d], dst)?);
    }
    if cfg!(target_endian = "big") {
        for x in &mut host {
            *x = f32::from_le_bytes(x.to_ne_bytes());
        }
    }
    p.moments = Tensor::from_vec(host, (MOMENT_ROWS, d), &Device::Cpu)?.to_device(device)?;
    if let Columns::Disk(disk) = &mut p.columns {
        // The rows stay in the file: their checksum is verified by the first full sample, which
        // streams them anyway, or before anything else reads them (one pass, not two).
        *disk
            .unverified
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(PendingChecksum {
            expected: fields.checksum,
            moments: digests,
            rows: fields.rows,
        });
    } else {
        let row_bytes = fl.row_bytes() as usize;
        for r in 0..fields.rows {
            let bytes = c.read((dev_start + r * row_bytes) as u64, row_bytes)?;
            digests.push(BufferDigest::of(&bytes));
            p.columns.write_row(r, &bytes, dt)?;
        }
        let actual = combine(&digests.iter().collect::<Vec<_>>());
        if actual != fields.checksum {
            return Err(checksum_error(&c, fields.checksum, actual, "3"));
        }
    }
    p.legacy_variance = fields.legacy;
    p.n_collected = fields.n_collected as usize;
    p.rows = fields.rows;
    p.oldest = fields.oldest;
    p.param_base = fields.param_base;
    p.scales = fields.scales.clone();
    p.scales.resize(fields.rank, 1.0);
    Ok(p)
}
