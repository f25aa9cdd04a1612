//! Drawing weights from the SWAG Gaussian.
//!
//! # The formula
//! `θ = mean + sqrt(scale) · ( sqrt(var) ⊙ z1 + Dᵀ z2 / sqrt(divisor) )`
//! with `z1 ~ N(0, I_d)`, `z2 ~ N(0, I_rows)`, `D` the `[rows, d]` deviations (oldest first), so
//! that `θ ~ N(mean, scale · (diag + DᵀD / divisor))`. `var` is
//! [`SwagPosterior::variance`]`(var_clamp)`, `max(M2 / n, var_clamp)` in f32, the same
//! numbers [`SwagPosterior::log_prob`] uses.
//!
//! - **scale multiplies the variance** (not the standard deviation): scale 0.5 is the paper's ½,
//!   scale 0 returns the SWA mean exactly.
//! - **divisor** ([`Divisor`]): by default `max(rows − 1, 1)`, with `rows` the number of columns
//!   actually held. The columns are deviations from the *running* mean (each taken against the
//!   mean at its own step, not the final one), so `DᵀD / (rows − 1)` is the paper's low-rank
//!   term, not an unbiased sample covariance of the snapshots. The reference implementation
//!   divides by `K − 1` even before K columns are held, which shrinks the low-rank term early in
//!   collection; [`Divisor::RankMinusOne`] reproduces it. Both agree once `rows = K`.
//! - **Diagonal only** drops the `Dᵀ z2` term (SWAG-diagonal).
//! - No `d × d` matrix is ever formed: `Dᵀ z2` is a streaming accumulation over the rows.
//!
//! # Noise and reproducibility
//! The noise comes from one counter-based generator (Philox4x32-10) keyed by
//! (seed, stream, parameter index in the whole model, coordinate), with a normal transform
//! built from correctly rounded operations only ([`super::noise`]): it is drawn inside the
//! kernels, on the CPU and on CUDA alike, and the same seed gives the same `z1` and `z2` bits on
//! every device, whatever the threads, chunks or shards.
//!
//! **Guarantee.** For a given seed, layout and crate version:
//! - the noise is bit-identical on every device;
//! - on the CPU, a sample is bit-identical whatever the store and the number of threads;
//! - on CUDA, the fused kernel (`swag::cuda`, feature `cuda`, device store) performs the CPU
//!   kernel's f32 operations in the same order, without fused multiply-adds, so its sample
//!   equals the CPU's bit for bit; the host and disk stores on CUDA form the low-rank sum with
//!   a matrix product (cuBLAS), whose summation order differs: within a few ulp of the CPU's
//!   sample.
//!
//! [`SwagPosterior::noise_for_seed`] returns that noise, and
//! [`SwagPosterior::sample_with_noise`] takes `z1` and `z2` explicitly so the formula can be
//! checked exactly (its tensor-op formula rounds differently from the fused kernels, so expect
//! a few ulp there too).

use candle_core::{CpuStorage, DType, Device, InplaceOp3, Layout, Tensor};
use half::{bf16, f16};
use rand::Rng;
use rayon::prelude::*;

use super::format::{BufferDigest, CHECKSUM_CHUNK};
use super::kernels::{self, DeviationElem, NoiseSource, SampleCoefficients};
use super::noise;
use super::posterior::SwagPosterior;
use super::store::{decode_into, Columns, DiskColumns, CHUNK};
use crate::error::{Error, Result};
use crate::layout::ParamSet;

/// The divisor of the low-rank term (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Divisor {
    /// `max(rows − 1, 1)`, rows = columns held (default).
    #[default]
    RowsMinusOne,
    /// `max(K − 1, 1)`, as the reference implementation.
    RankMinusOne,
}

/// How a SWAG sample is drawn: scale, diagonal or full, divisor and variance clamp.
///
/// Checked when made (linfa's checked-params pattern): every constructor and `with_*` setter
/// that takes a number returns `Result`, so a `SampleConfig` that exists is valid and the
/// sampler, `log_prob` and [`crate::Predictive`] never check it again.
///
/// ```
/// use candle_swag::{Divisor, SampleConfig};
/// let opts = SampleConfig::with_scale(0.5)?.with_divisor(Divisor::RankMinusOne);
/// assert_eq!((opts.scale(), opts.diag_only()), (0.5, false));
/// assert!(SampleConfig::with_scale(-1.0).is_err());
/// # Ok::<(), candle_swag::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleConfig {
    scale: f64,
    diag_only: bool,
    divisor: Divisor,
    var_clamp: f64,
}

impl Default for SampleConfig {
    /// Scale 0.5 (the paper's), full covariance, [`Divisor::RowsMinusOne`], clamp 1e-30.
    fn default() -> Self {
        Self {
            scale: 0.5,
            diag_only: false,
            divisor: Divisor::RowsMinusOne,
            var_clamp: 1e-30,
        }
    }
}

impl SampleConfig {
    /// Default settings with the given scale, which multiplies the covariance: finite and
    /// `>= 0` (0 gives the SWA mean).
    pub fn with_scale(scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(Error::invalid(
                "scale",
                format!("must be finite and >= 0, got {scale}"),
            ));
        }
        Ok(Self {
            scale,
            ..Self::default()
        })
    }

    /// Default settings with the given scale, diagonal only (SWAG-diagonal).
    pub fn diagonal(scale: f64) -> Result<Self> {
        Ok(Self::with_scale(scale)?.with_diag_only(true))
    }

    /// Drops (`true`) or keeps the low-rank term.
    pub fn with_diag_only(mut self, diag_only: bool) -> Self {
        self.diag_only = diag_only;
        self
    }

    /// The divisor of the low-rank term (module docs).
    pub fn with_divisor(mut self, divisor: Divisor) -> Self {
        self.divisor = divisor;
        self
    }

    /// Lower clamp of the diagonal variance `M2 / n`: finite and `>= 0`. It is applied in f32,
    /// so values below f32's range act as 0 and leave the variance as is.
    pub fn with_var_clamp(mut self, var_clamp: f64) -> Result<Self> {
        if !(var_clamp.is_finite() && var_clamp >= 0.0) {
            return Err(Error::invalid(
                "var_clamp",
                format!("must be finite and >= 0, got {var_clamp}"),
            ));
        }
        self.var_clamp = var_clamp;
        Ok(self)
    }

    /// Multiplies the covariance (0.5 by default).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether the low-rank term is dropped (SWAG-diagonal).
    pub fn diag_only(&self) -> bool {
        self.diag_only
    }

    /// The divisor of the low-rank term.
    pub fn divisor(&self) -> Divisor {
        self.divisor
    }

    /// Lower clamp of the diagonal variance (1e-30 by default, as the reference).
    pub fn var_clamp(&self) -> f64 {
        self.var_clamp
    }
}

impl SwagPosterior {
    /// The value of the low-rank divisor under `divisor` for the columns held now.
    pub fn divisor_value(&self, divisor: Divisor) -> f64 {
        let n = match divisor {
            Divisor::RowsMinusOne => self.rows,
            Divisor::RankMinusOne => self.config.rank(),
        };
        n.saturating_sub(1).max(1) as f64
    }

    /// Deterministic sample from given noise: `z1` of shape `[d]`, `z2` of shape `[rows]`
    /// (ignored when `diag_only`). Returns the flat `[d]` f32 vector on the posterior's device.
    pub fn sample_with_noise(
        &self,
        z1: &Tensor,
        z2: &Tensor,
        opts: &SampleConfig,
    ) -> Result<Tensor> {
        self.require_snapshots()?;
        self.layout.check_flat(z1, "z1")?;
        let z1 = z1.to_dtype(DType::F32)?.to_device(&self.device)?;
        let mean = self.moments.get(super::posterior::ROW_MEAN)?;
        let std = self.variance(opts.var_clamp())?.sqrt()?;
        let mut noise = std.mul(&z1)?;
        if !opts.diag_only() && self.rows > 0 {
            if z2.dims() != [self.rows] {
                return Err(Error::invalid(
                    "z2",
                    format!("expected shape [{}], got {:?}", self.rows, z2.dims()),
                ));
            }
            let z2 = z2
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?;
            let low_rank = self
                .low_rank_term(&self.scaled_weights(&z2))?
                .affine(1.0 / self.divisor_value(opts.divisor()).sqrt(), 0.0)?;
            noise = noise.add(&low_rank)?;
        }
        Ok(mean.add(&noise.affine(opts.scale().sqrt(), 0.0)?)?)
    }

    /// `Σₖ wₖ · stored rowₖ` (`[d]` f32, on the posterior's device), rows oldest first, with
    /// the weights already multiplied by the rows' scales. The rows are widened to f32 (so the
    /// weights keep full precision) [`CHUNK`] coordinates at a time, on the columns' own
    /// device, so no `[K, d]` f32 copy is made and a host or disk store uploads only the sum.
    fn low_rank_term(&self, weights: &[f32]) -> Result<Tensor> {
        let (d, dt) = (self.numel(), self.config.deviation_dtype());
        let rows = self.physical_rows();
        let mut parts = Vec::with_capacity(d.div_ceil(CHUNK));
        for lo in (0..d).step_by(CHUNK) {
            let len = CHUNK.min(d - lo);
            let chunk = self.columns.chunk(&rows, lo, len, dt)?;
            let w = Tensor::from_slice(weights, (1, rows.len()), chunk.device())?;
            parts.push(w.matmul(&chunk)?.squeeze(0)?.to_device(&self.device)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The low-rank weights of the held rows (oldest first): `z2ₖ` times the row's scale.
    /// Scales are 1 unless the columns are f16, and a product by 1 is exact, so f32 and bf16
    /// samples are unchanged by it.
    fn scaled_weights(&self, z2: &[f32]) -> Vec<f32> {
        z2.iter()
            .zip(self.physical_rows())
            .map(|(&z, r)| z * self.scales[r])
            .collect()
    }

    /// The standard-normal noise `(z1 [d], z2 [rows])` that `seed` draws, on the posterior's
    /// device: [`sample_with_noise`](Self::sample_with_noise) on it gives the seeded sample,
    /// so a sample can be reproduced or audited without the sampler. `z1` is keyed by
    /// (parameter index in the whole model, coordinate), `z2` by the seed alone
    /// ([`super::noise`]). On CUDA, `z1` is drawn on the device (the same bits).
    pub fn noise_for_seed(&self, seed: u64) -> Result<(Tensor, Tensor)> {
        let z2 = Tensor::from_vec(noise::z2_for_seed(seed, self.rows), self.rows, &self.device)?;
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            // Drawn on the device: the same bits, without d normals drawn on the host.
            let dev = super::cuda::cuda_device(&self.device, "posterior")?;
            let parts = (self.layout.entries().iter().enumerate())
                .map(|(p, e)| {
                    let param = (self.param_base + p) as u32;
                    super::cuda::normals(dev, seed, noise::Z1_STREAM, param, 0, e.numel())
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok((Tensor::cat(&parts, 0)?, z2));
        }
        let z1 = Tensor::from_vec(
            noise::z1_for_seed(seed, &self.layout, self.param_base),
            self.numel(),
            &self.device,
        )?;
        Ok((z1, z2))
    }

    /// A flat `[d]` sample for a seed (same noise as [`SwagPosterior::sample_into_seeded`]).
    /// On the CPU it is the fused kernel's result, bit for bit whatever the store; on CUDA the
    /// fused CUDA kernel's (module docs); on other devices
    /// [`sample_with_noise`](Self::sample_with_noise) on the seed's noise.
    pub fn sample_flat_seeded(&self, seed: u64, opts: &SampleConfig) -> Result<Tensor> {
        self.require_snapshots()?;
        if self.device.is_cpu() {
            let flat = self.sample_host(seed, opts)?;
            return Ok(Tensor::from_vec(flat, self.numel(), &Device::Cpu)?);
        }
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            let out = Tensor::zeros(self.numel(), DType::F32, &self.device)?;
            let views = self
                .layout
                .entries()
                .iter()
                .map(|e| Ok(out.narrow(0, e.offset, e.numel())?))
                .collect::<Result<Vec<_>>>()?;
            self.sample_cuda(&views, seed, opts)?;
            return Ok(out);
        }
        let (z1, z2) = self.noise_for_seed(seed)?;
        self.sample_with_noise(&z1, &z2, opts)
    }

    /// The fused CUDA sample, written into one contiguous f32 tensor per parameter (`targets`,
    /// layout order: the parameters' Vars or views of a flat output). The device store's
    /// columns are read by the kernel itself; a host or disk store's low-rank term is formed
    /// chunk by chunk ([`Self::low_rank_term`]) and added by the kernel.
    #[cfg(feature = "cuda")]
    fn sample_cuda(&self, targets: &[Tensor], seed: u64, opts: &SampleConfig) -> Result<()> {
        use super::cuda;
        let dev = cuda::cuda_device(&self.device, "posterior")?;
        let (coef, z2) = self.kernel_inputs(seed, opts);
        // The kernels take the weights with 1/√divisor folded in, as the CPU kernel forms them.
        let weights: Vec<f32> = z2.iter().map(|w| w * coef.inv_sqrt_divisor).collect();
        // Device-store columns: their physical rows and weights, for the kernel to read. Other
        // stores: the low-rank term, formed here and added by the kernel.
        let (mut device_rows, mut extra) = (None, None);
        match &self.columns {
            _ if weights.is_empty() => {}
            Columns::Memory(buffer) if buffer.device().same_device(&self.device) => {
                let rows: Vec<u32> = self.physical_rows().iter().map(|&r| r as u32).collect();
                let rows = Tensor::from_vec(rows, weights.len(), &self.device)?;
                let w = Tensor::from_slice(&weights, weights.len(), &self.device)?;
                device_rows = Some((buffer, rows, w));
            }
            _ => extra = Some(self.low_rank_term(&weights)?),
        }
        let args = cuda::SampleArgs {
            columns: device_rows.as_ref().map(|(b, r, w)| (*b, r, w)),
            extra: extra.as_ref(),
            sqrt_scale: coef.sqrt_scale,
            var_clamp: coef.var_clamp,
            inv_n: coef.inv_n,
            seed,
        };
        for (p, (target, entry)) in targets.iter().zip(self.layout.entries()).enumerate() {
            let param = (self.param_base + p) as u32;
            cuda::sample(
                dev,
                target,
                &self.moments,
                self.numel(),
                entry.offset,
                param,
                &args,
            )?;
        }
        Ok(())
    }

    /// The coefficients and low-rank weights of a seeded sample, as the fused kernel takes
    /// them (no weights for a diagonal sample).
    fn kernel_inputs(&self, seed: u64, opts: &SampleConfig) -> (SampleCoefficients, Vec<f32>) {
        let low_rank = !opts.diag_only() && self.rows > 0;
        let z2 = if low_rank {
            self.scaled_weights(&noise::z2_for_seed(seed, self.rows))
        } else {
            Vec::new()
        };
        let coef = SampleCoefficients {
            sqrt_scale: opts.scale().sqrt() as f32,
            inv_sqrt_divisor: (1.0 / self.divisor_value(opts.divisor()).sqrt()) as f32,
            var_clamp: opts.var_clamp() as f32,
            inv_n: kernels::inv_count(self.n_collected),
        };
        (coef, z2)
    }

    /// The fused kernel over a flat host vector, for a posterior whose moments are on the CPU:
    /// the columns are read from the buffer in place (memory) or [`CHUNK`] coordinates at a
    /// time (disk; `K · CHUNK` numbers in memory). Stored values are widened to f32 exactly and
    /// the kernel's arithmetic is the same, so every store gives the same bits.
    fn sample_host(&self, seed: u64, opts: &SampleConfig) -> Result<Vec<f32>> {
        let (coef, z2) = self.kernel_inputs(seed, opts);
        let rows = if z2.is_empty() {
            Vec::new()
        } else {
            self.physical_rows()
        };
        let d = self.numel();
        let mut out = vec![0f32; d];
        let (m_storage, m_layout) = self.moments.storage_and_layout();
        let moments = super::posterior::cpu_f32_slice(&m_storage, m_layout)?;
        let m2_row = &moments[super::posterior::ROW_M2 * d..(super::posterior::ROW_M2 + 1) * d];
        if let Columns::Disk(disk) = &self.columns {
            if disk.is_unverified() && rows.len() == self.rows && self.rows > 0 {
                let args = KernelArgs {
                    rows: &rows,
                    z2: &z2,
                    coef,
                    noise: NoiseSource {
                        seed,
                        param: 0,
                        first: 0,
                    },
                };
                let mean = &moments[..d];
                self.sample_disk_verifying(disk, &mut out, mean, m2_row, args)?;
                return Ok(out);
            }
            disk.verify()?;
        }
        for (p, entry) in self.layout.entries().iter().enumerate() {
            let range = entry.offset..entry.offset + entry.numel();
            let noise = NoiseSource {
                seed,
                param: (self.param_base + p) as u32,
                first: 0,
            };
            let param = ParamSlices {
                out: &mut out[range.clone()],
                mean: &moments[range.clone()],
                m2: &m2_row[range.clone()],
            };
            match &self.columns {
                Columns::Memory(buffer) => sample_from_memory(
                    param,
                    buffer,
                    entry.offset,
                    KernelArgs {
                        rows: &rows,
                        z2: &z2,
                        coef,
                        noise,
                    },
                )?,
                Columns::Disk(disk) => {
                    // One noise block per task, in parallel: each task reads its rows' slice
                    // (K · 64 KiB for f32) with positioned reads and runs the kernel on it while
                    // it is in cache; the other threads read meanwhile.
                    let dtype = self.config.deviation_dtype();
                    let block = noise::NOISE_BLOCK;
                    param
                        .out
                        .par_chunks_mut(block)
                        .zip(param.mean.par_chunks(block))
                        .zip(param.m2.par_chunks(block))
                        .enumerate()
                        .try_for_each_init(
                            || (Vec::new(), Vec::new()),
                            |(bytes, dev), (b, ((out, mean), m2))| -> Result<()> {
                                let len = out.len();
                                if !rows.is_empty() {
                                    disk.read_chunk_into(
                                        &rows,
                                        entry.offset + b * block,
                                        len,
                                        dtype,
                                        bytes,
                                        dev,
                                    )?;
                                }
                                let dev_rows: Vec<&[f32]> = dev.chunks(len).collect();
                                kernels::sample(
                                    out,
                                    kernels::SampleSource {
                                        mean,
                                        m2,
                                        dev_rows: &dev_rows,
                                        z2: &z2,
                                        coef,
                                        noise: NoiseSource {
                                            first: (b * block) as u64,
                                            ..noise
                                        },
                                    },
                                );
                                Ok(())
                            },
                        )?;
                }
            }
        }
        Ok(out)
    }

    /// The first full sample of columns opened on disk: the file is walked in windows of one
    /// checksum chunk of every row (1 MiB of each row's bytes, in parallel over windows), each
    /// window's rows are digested and decoded, and the kernel samples the window's coordinates,
    /// parameter by parameter (the noise is keyed by parameter and coordinate, and each
    /// coordinate's arithmetic is that of every other path, so the bits are the same). The
    /// digests complete the file's checksum; on a mismatch the sample is discarded.
    fn sample_disk_verifying(
        &self,
        disk: &DiskColumns,
        out: &mut [f32],
        mean: &[f32],
        m2: &[f32],
        args: KernelArgs<'_>,
    ) -> Result<()> {
        let dtype = self.config.deviation_dtype();
        let es = dtype.size_in_bytes();
        let width = CHECKSUM_CHUNK / es;
        let entries = self.layout.entries();
        let window_digests: Vec<Vec<u64>> = out
            .par_chunks_mut(width)
            .enumerate()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(bytes, dev): &mut (Vec<u8>, Vec<f32>), (w, out)| -> Result<Vec<u64>> {
                    let (lo, len) = (w * width, out.len());
                    let mut digests = Vec::with_capacity(self.rows);
                    if dtype == DType::F32 && cfg!(target_endian = "little") {
                        // Stored f32 are the host's own: read straight into the rows.
                        dev.resize(self.rows * len, 0.0);
                        for (r, row) in dev.chunks_exact_mut(len).enumerate() {
                            let row: &mut [u8] = bytemuck::cast_slice_mut(row);
                            digests.push(disk.read_window(r, lo, row)?);
                        }
                    } else {
                        bytes.resize(len * es, 0);
                        dev.clear();
                        for r in 0..self.rows {
                            digests.push(disk.read_window(r, lo, bytes)?);
                            decode_into(bytes, dtype, dev);
                        }
                    }
                    let physical: Vec<&[f32]> = dev.chunks(len).collect();
                    let first = entries.partition_point(|e| e.offset + e.numel() <= lo);
                    for (p, entry) in entries.iter().enumerate().skip(first) {
                        if entry.offset >= lo + len {
                            break;
                        }
                        let a = entry.offset.max(lo);
                        let b = (entry.offset + entry.numel()).min(lo + len);
                        let dev_rows: Vec<&[f32]> = args
                            .rows
                            .iter()
                            .map(|&r| &physical[r][a - lo..b - lo])
                            .collect();
                        kernels::sample(
                            &mut out[a - lo..b - lo],
                            kernels::SampleSource {
                                mean: &mean[a..b],
                                m2: &m2[a..b],
                                dev_rows: &dev_rows,
                                z2: args.z2,
                                coef: args.coef,
                                noise: NoiseSource {
                                    seed: args.noise.seed,
                                    param: (self.param_base + p) as u32,
                                    first: (a - entry.offset) as u64,
                                },
                            },
                        );
                    }
                    Ok(digests)
                },
            )
            .collect::<Result<_>>()?;
        let row_digests = (0..self.rows)
            .map(|r| BufferDigest {
                len: self.numel() * es,
                chunks: window_digests.iter().map(|w| w[r]).collect(),
            })
            .collect();
        disk.verify_with(row_digests)
    }

    /// Draws one weight sample and writes it straight into `params` (no flat copy on CPU).
    /// One `u64` is drawn from `rng` as the sample's seed.
    pub fn sample_into(
        &self,
        params: &ParamSet,
        opts: &SampleConfig,
        rng: &mut impl Rng,
    ) -> Result<()> {
        self.sample_into_seeded(params, opts, noise::seed_from(rng))
    }

    /// Like [`SwagPosterior::sample_into`] with an explicit seed.
    pub fn sample_into_seeded(
        &self,
        params: &ParamSet,
        opts: &SampleConfig,
        seed: u64,
    ) -> Result<()> {
        self.require_snapshots()?;
        self.layout.check_same(params.layout())?;
        self.check_device(params.device(), "params")?;
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() && self.can_fuse(params) {
            let targets: Vec<Tensor> = params
                .vars()
                .iter()
                .map(|v| v.as_tensor().clone())
                .collect();
            return self.sample_cuda(&targets, seed, opts);
        }
        let buffer = match &self.columns {
            Columns::Memory(buffer) if self.can_fuse(params) && buffer.device().is_cpu() => buffer,
            _ => return params.write_flat(&self.sample_flat_seeded(seed, opts)?),
        };
        let (coef, z2) = self.kernel_inputs(seed, opts);
        let rows = if z2.is_empty() {
            Vec::new()
        } else {
            self.physical_rows()
        };
        for (p, (var, entry)) in params.vars().iter().zip(self.layout.entries()).enumerate() {
            let op = SampleOp {
                offset: entry.offset,
                d: self.numel(),
                rows: &rows,
                z2: &z2,
                coef,
                noise: NoiseSource {
                    seed,
                    param: (self.param_base + p) as u32,
                    first: 0,
                },
            };
            var.as_tensor().inplace_op3(&self.moments, buffer, &op)?;
        }
        Ok(())
    }

    /// Writes the SWA mean into `params` (the scale-0 sample, without drawing noise).
    pub fn write_mean_into(&self, params: &ParamSet) -> Result<()> {
        self.require_snapshots()?;
        self.layout.check_same(params.layout())?;
        self.check_device(params.device(), "params")?;
        params.write_flat(&self.moments.get(super::posterior::ROW_MEAN)?)
    }
}

/// One parameter's output, mean and `M2` slices.
struct ParamSlices<'a> {
    out: &'a mut [f32],
    mean: &'a [f32],
    m2: &'a [f32],
}

/// What the fused kernel takes for every parameter of one sample.
#[derive(Clone, Copy)]
struct KernelArgs<'a> {
    /// Physical rows, oldest first (empty for a diagonal sample).
    rows: &'a [usize],
    /// Low-rank weights, scales folded in.
    z2: &'a [f32],
    coef: SampleCoefficients,
    noise: NoiseSource,
}

/// The fused kernel for one parameter (at `offset` in the flat vector) reading its rows from
/// an in-memory CPU buffer.
fn sample_from_memory(
    param: ParamSlices<'_>,
    buffer: &Tensor,
    offset: usize,
    args: KernelArgs<'_>,
) -> Result<()> {
    fn run<E: DeviationElem>(
        param: ParamSlices<'_>,
        dev: &[E],
        d: usize,
        offset: usize,
        args: KernelArgs<'_>,
    ) {
        let len = param.out.len();
        let dev_rows: Vec<&[E]> = args
            .rows
            .iter()
            .map(|&r| &dev[r * d + offset..r * d + offset + len])
            .collect();
        kernels::sample(
            param.out,
            kernels::SampleSource {
                mean: param.mean,
                m2: param.m2,
                dev_rows: &dev_rows,
                z2: args.z2,
                coef: args.coef,
                noise: args.noise,
            },
        );
    }
    let d = buffer.dim(1)?;
    let (storage, layout) = buffer.storage_and_layout();
    let range = kernels::contiguous_range(layout, "deviations")?;
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => run(param, &v[range], d, offset, args),
        candle_core::Storage::Cpu(CpuStorage::BF16(v)) => run(param, &v[range], d, offset, args),
        candle_core::Storage::Cpu(CpuStorage::F16(v)) => run(param, &v[range], d, offset, args),
        _ => {
            return Err(Error::invalid(
                "deviations",
                "expected an f32, bf16 or f16 buffer in host memory",
            ))
        }
    }
    Ok(())
}

/// Writes one parameter's sample into its Var's storage.
struct SampleOp<'a> {
    offset: usize,
    d: usize,
    rows: &'a [usize],
    z2: &'a [f32],
    coef: SampleCoefficients,
    noise: NoiseSource,
}

impl SampleOp<'_> {
    fn run<E: DeviationElem>(
        &self,
        out: &mut [f32],
        moments: &[f32],
        dev: &[E],
    ) -> candle_core::Result<()> {
        let len = out.len();
        let mean = &moments[self.offset..self.offset + len];
        let m2_lo = super::posterior::ROW_M2 * self.d + self.offset;
        let m2 = &moments[m2_lo..m2_lo + len];
        let dev_rows: Vec<&[E]> = self
            .rows
            .iter()
            .map(|&r| &dev[r * self.d + self.offset..r * self.d + self.offset + len])
            .collect();
        let src = kernels::SampleSource {
            mean,
            m2,
            dev_rows: &dev_rows,
            z2: self.z2,
            coef: self.coef,
            noise: self.noise,
        };
        kernels::sample(out, src);
        Ok(())
    }
}

impl InplaceOp3 for SampleOp<'_> {
    fn name(&self) -> &'static str {
        "swag-sample"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        moments: &CpuStorage,
        ml: &Layout,
        dev: &CpuStorage,
        devl: &Layout,
    ) -> candle_core::Result<()> {
        let msg = |m: &str| candle_core::Error::Msg(m.to_string());
        let out_range = kernels::contiguous_range(dl, "parameter")?;
        let m_range = kernels::contiguous_range(ml, "moments")?;
        let d_range = kernels::contiguous_range(devl, "deviations")?;
        let (CpuStorage::F32(out), CpuStorage::F32(m)) = (dst, moments) else {
            return Err(msg("parameter and moments must be f32"));
        };
        let out = &mut out[out_range];
        let m = &m[m_range];
        match dev {
            CpuStorage::F32(v) => self.run(out, m, &v[d_range]),
            CpuStorage::BF16(v) => self.run::<bf16>(out, m, &v[d_range]),
            CpuStorage::F16(v) => self.run::<f16>(out, m, &v[d_range]),
            _ => Err(msg("deviation buffer has an unsupported dtype")),
        }
    }
}
