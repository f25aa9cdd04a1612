//! Fused CUDA kernels (feature `cuda`): collection, low-rank and diagonal sampling, and the
//! sampler's normals, each one pass over the memory it must touch.
//!
//! The kernels (`src/swag/kernels.cu`, compiled to PTX by `build.rs` with nvcc) perform the CPU
//! kernels' f32 operations in the same order with round-to-nearest intrinsics and no fused
//! multiply-add, and draw the same Philox noise ([`super::normals`]), so moments, deviation
//! columns, noise and device-store samples equal the CPU's bit for bit.
//!
//! They work on raw device pointers taken from candle's storage. Everything runs on the candle
//! device's one stream, so the kernels are ordered with candle's own ops; the posterior's
//! buffers are written only through `&mut SwagPosterior` (or, for a sample, the parameters the
//! caller hands over to be overwritten).

use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, DType, Device, Layout, Storage, Tensor};

use crate::error::{Error, Result};

/// The PTX built from `src/swag/kernels.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/swag_kernels.ptx"));
/// Module name under which candle caches the loaded PTX.
const MODULE: &str = "candle_swag_kernels";
/// Threads per block.
const BLOCK: u32 = 256;

/// The CUDA device of `device`, or a named error.
pub(crate) fn cuda_device<'a>(device: &'a Device, what: &str) -> Result<&'a CudaDevice> {
    match device {
        Device::Cuda(d) => Ok(d),
        other => Err(Error::invalid(
            what,
            format!(
                "expected a CUDA tensor, found one on {:?}",
                other.location()
            ),
        )),
    }
}

/// A launch configuration covering `n` work items of `per_block` items per block, capped so
/// that the kernels' grid-stride loops take the rest.
fn config(n: u64, per_block: u64) -> LaunchConfig {
    let blocks = n.div_ceil(per_block).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The address of a contiguous CUDA tensor's first element (its storage offset included).
fn address(storage: &Storage, layout: &Layout, what: &str) -> Result<u64> {
    let Storage::Cuda(cs) = storage else {
        return Err(Error::invalid(what, "expected a CUDA tensor"));
    };
    let (lo, _) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::invalid(what, "expected a contiguous tensor"))?;
    let stream = cs.device.cuda_stream();
    let (base, size) = match &cs.slice {
        CudaStorageSlice::F32(s) => (s.device_ptr(&stream).0, 4),
        CudaStorageSlice::BF16(s) => (s.device_ptr(&stream).0, 2),
        CudaStorageSlice::F16(s) => (s.device_ptr(&stream).0, 2),
        CudaStorageSlice::U32(s) => (s.device_ptr(&stream).0, 4),
        CudaStorageSlice::I64(s) => (s.device_ptr(&stream).0, 8),
        _ => {
            return Err(Error::invalid(
                what,
                format!("unsupported dtype {:?}", storage.dtype()),
            ))
        }
    };
    Ok(base + (lo * size) as u64)
}

/// The address of `t`'s first element (see [`address`]).
fn address_of(t: &Tensor, what: &str) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    address(&storage, layout, what)
}

/// The non-finite check of one snapshot's pieces (contiguous f32 CUDA tensors), launched
/// before the collection kernels, which read its verdict on the device and change nothing when
/// a value is bad: so the host learns the result once, after the work is queued.
pub(crate) struct FiniteCheck {
    /// One slot per piece (its first bad index, or i64::MAX), then the verdict (0 if any bad).
    flags: Tensor,
    pieces: usize,
}

impl FiniteCheck {
    /// Queues the check of every piece.
    pub(crate) fn launch(dev: &CudaDevice, pieces: &[&Tensor]) -> Result<Self> {
        let device = Device::Cuda(dev.clone());
        let n_flags = pieces.len() + 1;
        let flags = Tensor::from_vec(vec![i64::MAX; n_flags], n_flags, &device)?;
        let flags_at = address_of(&flags, "non-finite flags")?;
        let verdict = flags_at + 8 * pieces.len() as u64;
        let func = dev.get_or_load_custom_func("swag_first_non_finite", MODULE, PTX)?;
        for (i, t) in pieces.iter().enumerate() {
            let x = address_of(t, "theta")?;
            let n = t.elem_count() as u64;
            let slot = flags_at + 8 * i as u64;
            let mut b = func.builder();
            b.arg(&x).arg(&n).arg(&slot).arg(&verdict);
            // SAFETY: x points at n f32 and slot, verdict at i64s of `flags`, alive until
            // `finish` reads them back after every launch on this stream.
            unsafe { b.launch(config(n, u64::from(BLOCK))) }.w()?;
        }
        Ok(Self {
            flags,
            pieces: pieces.len(),
        })
    }

    /// Device address of the verdict, for the collection kernels.
    pub(crate) fn verdict_address(&self) -> Result<u64> {
        Ok(address_of(&self.flags, "non-finite flags")? + 8 * self.pieces as u64)
    }

    /// Waits for the queued work and returns each piece's first non-finite index.
    pub(crate) fn finish(self) -> Result<Vec<Option<usize>>> {
        let flags = self.flags.to_vec1::<i64>()?;
        Ok(flags[..self.pieces]
            .iter()
            .map(|&f| (f != i64::MAX).then_some(f as usize))
            .collect())
    }
}

/// Where one collection step writes: the three moment rows of one parameter and its slice of
/// the new deviation column (`None` when the column is not kept).
pub(crate) struct CollectTarget {
    pub mean: u64,
    pub comp: u64,
    pub m2: u64,
    pub dev: Option<(u64, DType)>,
}

/// Addresses of the moments' rows (`[3, d]` f32) at coordinate `offset`.
pub(crate) fn moment_rows(moments: &Tensor, d: usize, offset: usize) -> Result<[u64; 3]> {
    let base = address_of(moments, "moments")?;
    let at = |row: usize| base + 4 * (row * d + offset) as u64;
    Ok([at(0), at(1), at(2)])
}

/// Address of element `(row, offset)` of a `[K, d]` deviation buffer, and its dtype.
pub(crate) fn column_at(buffer: &Tensor, row: usize, offset: usize) -> Result<(u64, DType)> {
    let d = buffer.dim(1)?;
    let dt = buffer.dtype();
    let base = address_of(buffer, "deviations")?;
    Ok((base + ((row * d + offset) * dt.size_in_bytes()) as u64, dt))
}

/// One compensated Welford step over `theta` (contiguous f32), `n` snapshots already collected;
/// the kernel does nothing unless the verdict at `verdict` (see [`FiniteCheck`]) is clean. A
/// nonzero `max_bits` receives the column's largest `|entry|` (an atomic maximum of the bits).
pub(crate) fn collect(
    dev: &CudaDevice,
    theta: &Tensor,
    at: &CollectTarget,
    n: usize,
    verdict: u64,
    max_bits: u64,
) -> Result<()> {
    let (name, column) = match at.dev {
        None => ("swag_collect_f32", 0u64),
        Some((p, DType::F32)) => ("swag_collect_f32", p),
        Some((p, DType::BF16)) => ("swag_collect_bf16", p),
        Some((_, dt)) => {
            return Err(Error::invalid(
                "deviation_dtype",
                format!("the CUDA collection kernel writes f32 or bf16 columns, not {dt:?}"),
            ))
        }
    };
    let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let x = address_of(theta, "theta")?;
    let len = theta.elem_count() as u64;
    let inv = super::kernels::inv_count(n + 1);
    let count = (n + 1) as f32;
    let mut b = func.builder();
    b.arg(&at.mean)
        .arg(&at.comp)
        .arg(&at.m2)
        .arg(&x)
        .arg(&column)
        .arg(&len)
        .arg(&inv)
        .arg(&count)
        .arg(&verdict)
        .arg(&max_bits);
    // With a maximum to take, at most 4096 blocks (the loop strides over the rest), so that
    // the atomic maxima (one per warp) do not contend; otherwise one thread per element, which
    // measured faster for the plain pass (0.56 ms against 0.61 ms at d = 50M on an H200).
    let mut cfg = config(len, u64::from(BLOCK));
    if max_bits != 0 {
        cfg.grid_dim.0 = cfg.grid_dim.0.min(4096);
    }
    // SAFETY: every address covers `len` elements of a buffer the caller keeps alive; the kernel
    // runs on the device's stream, before any later candle op on these buffers.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// Queues the f16 encoding of the f32 column `col` (`[d]`) into row `slot` of the `[K, d]` f16
/// buffer: the scale from the column's maximum (`max_bits`, the collection pass's, see
/// [`F16Column`]), then `store::encode_pieces`' arithmetic. Nothing happens if the snapshot was
/// refused (`verdict`).
pub(crate) fn encode_f16(
    dev: &CudaDevice,
    col: &Tensor,
    buffer: &Tensor,
    slot: usize,
    f16: &F16Column,
    verdict: u64,
) -> Result<()> {
    let (out, _) = column_at(buffer, slot, 0)?;
    let src = address_of(col, "column")?;
    let max_at = address_of(&f16.max_bits, "maximum")?;
    let scale_at = address_of(&f16.scale, "scale")?;
    let flushed_at = address_of(&f16.flushed, "counter")?;
    let n = col.elem_count() as u64;
    let func = dev.get_or_load_custom_func("swag_encode_f16", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&src)
        .arg(&out)
        .arg(&n)
        .arg(&max_at)
        .arg(&scale_at)
        .arg(&flushed_at)
        .arg(&verdict);
    // SAFETY: `col` holds n f32, row `slot` of `buffer` n f16; the counters live in `f16`,
    // which the caller reads back after this launch on the same stream.
    unsafe { b.launch(config(n, u64::from(BLOCK))) }.w()?;
    Ok(())
}

/// The device-side numbers of an f16 column: its largest `|entry|` (as bits, filled by the
/// collection pass), its scale and its count of entries flushed to zero (by the encoding).
pub(crate) struct F16Column {
    max_bits: Tensor,
    scale: Tensor,
    flushed: Tensor,
}

impl F16Column {
    pub(crate) fn new(dev: &CudaDevice) -> Result<Self> {
        let device = Device::Cuda(dev.clone());
        Ok(Self {
            max_bits: Tensor::from_vec(vec![0u32], 1, &device)?,
            scale: Tensor::from_vec(vec![1f32], 1, &device)?,
            flushed: Tensor::from_vec(vec![0i64], 1, &device)?,
        })
    }

    /// Where the collection pass writes the maximum.
    pub(crate) fn max_address(&self) -> Result<u64> {
        address_of(&self.max_bits, "maximum")
    }

    /// The column's scale and flushed count, once the queued work is done.
    pub(crate) fn finish(&self) -> Result<(f32, u64)> {
        let scale = self.scale.to_vec1::<f32>()?[0];
        Ok((scale, self.flushed.to_vec1::<i64>()?[0] as u64))
    }
}

/// What a fused sample of one parameter reads besides its moments.
pub(crate) struct SampleArgs<'a> {
    /// The deviation buffer (`[K, d]`, f32/bf16/f16 on the device), the physical rows held,
    /// oldest first (u32 on the device), and their final weights (f32 on the device:
    /// `z2 · column scale · 1/√divisor`, as the CPU kernel forms them). `None` for a diagonal
    /// sample.
    pub columns: Option<(&'a Tensor, &'a Tensor, &'a Tensor)>,
    /// A precomputed low-rank term (`[d]` f32) to start the sum from instead of the columns.
    pub extra: Option<&'a Tensor>,
    pub sqrt_scale: f32,
    pub var_clamp: f32,
    pub inv_n: f32,
    pub seed: u64,
}

/// Writes the sample of the parameter at `offset` (`out`: contiguous f32, its length the
/// parameter's) drawn as parameter `param` of the whole model.
pub(crate) fn sample(
    dev: &CudaDevice,
    out: &Tensor,
    moments: &Tensor,
    d: usize,
    offset: usize,
    param: u32,
    args: &SampleArgs<'_>,
) -> Result<()> {
    let [mean, _, m2] = moment_rows(moments, d, offset)?;
    let out_at = address_of(out, "parameter")?;
    let len = out.elem_count() as u64;
    let (name, dev_at, stride, rows_at, w_at, nrows) = match args.columns {
        Some((buffer, rows, w)) if rows.elem_count() > 0 => {
            let name = match buffer.dtype() {
                DType::F32 => "swag_sample_f32",
                DType::BF16 => "swag_sample_bf16",
                _ => "swag_sample_f16",
            };
            let (at, _) = column_at(buffer, 0, offset)?;
            (
                name,
                at,
                buffer.dim(1)? as u64,
                address_of(rows, "rows")?,
                address_of(w, "weights")?,
                rows.elem_count() as u32,
            )
        }
        _ => ("swag_sample_diag", 0u64, 0u64, 0u64, 0u64, 0u32),
    };
    let extra_at = match args.extra {
        Some(t) => address_of(t, "low-rank term")? + 4 * offset as u64,
        None => 0,
    };
    let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let (seed_lo, seed_hi) = (args.seed as u32, (args.seed >> 32) as u32);
    let mut b = func.builder();
    b.arg(&out_at)
        .arg(&mean)
        .arg(&m2)
        .arg(&dev_at)
        .arg(&stride)
        .arg(&rows_at)
        .arg(&w_at)
        .arg(&nrows)
        .arg(&extra_at)
        .arg(&len)
        .arg(&args.sqrt_scale)
        .arg(&args.var_clamp)
        .arg(&args.inv_n)
        .arg(&seed_lo)
        .arg(&seed_hi)
        .arg(&param);
    // SAFETY: the addresses cover the parameter's `len` coordinates of buffers (and the
    // `nrows` rows and weights) that the caller keeps alive past the launch.
    unsafe { b.launch(config(len, u64::from(BLOCK) * 4)) }.w()?;
    Ok(())
}

/// `n` normals of parameter `param` in `stream`, coordinates `first..first + n`, drawn on the
/// device (the same bits as [`super::normals::fill_normals`]).
pub(crate) fn normals(
    dev: &CudaDevice,
    seed: u64,
    stream: u32,
    param: u32,
    first: u64,
    n: usize,
) -> Result<Tensor> {
    let device = Device::Cuda(dev.clone());
    let out = Tensor::zeros(n, DType::F32, &device)?;
    if n == 0 {
        return Ok(out);
    }
    let at = address_of(&out, "normals")?;
    let func = dev.get_or_load_custom_func("swag_normals", MODULE, PTX)?;
    let (seed_lo, seed_hi, n64) = (seed as u32, (seed >> 32) as u32, n as u64);
    let mut b = func.builder();
    b.arg(&at)
        .arg(&first)
        .arg(&n64)
        .arg(&seed_lo)
        .arg(&seed_hi)
        .arg(&param)
        .arg(&stream);
    // SAFETY: `out` holds n f32 and outlives the launch.
    unsafe { b.launch(config(n64, u64::from(BLOCK))) }.w()?;
    Ok(out)
}
