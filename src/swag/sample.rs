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
//! built from correctly rounded operations only ([`super::normals`]): it is drawn inside the
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

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::config::{Divisor, SampleConfig};
use super::kernels::{self, NoiseSource, SampleCoefficients};
use super::normals;
use super::posterior::SwagPosterior;
use super::sample_host::SampleOp;
use super::store::{Columns, CHUNK};
use crate::error::{Error, Result};
use crate::layout::ParamSet;

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
    /// ([`super::normals`]). On CUDA, `z1` is drawn on the device (the same bits).
    pub fn noise_for_seed(&self, seed: u64) -> Result<(Tensor, Tensor)> {
        let z2 = Tensor::from_vec(
            normals::z2_for_seed(seed, self.rows),
            self.rows,
            &self.device,
        )?;
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            // Drawn on the device: the same bits, without d normals drawn on the host.
            let dev = super::cuda::cuda_device(&self.device, "posterior")?;
            let parts = (self.layout.entries().iter().enumerate())
                .map(|(p, e)| {
                    let param = (self.param_base + p) as u32;
                    super::cuda::normals(dev, seed, normals::Z1_STREAM, param, 0, e.numel())
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok((Tensor::cat(&parts, 0)?, z2));
        }
        let z1 = Tensor::from_vec(
            normals::z1_for_seed(seed, &self.layout, self.param_base),
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
    pub(super) fn kernel_inputs(
        &self,
        seed: u64,
        opts: &SampleConfig,
    ) -> (SampleCoefficients, Vec<f32>) {
        let low_rank = !opts.diag_only() && self.rows > 0;
        let z2 = if low_rank {
            self.scaled_weights(&normals::z2_for_seed(seed, self.rows))
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

    /// Draws one weight sample and writes it straight into `params` (no flat copy on CPU).
    /// One `u64` is drawn from `rng` as the sample's seed.
    pub fn sample_into(
        &self,
        params: &ParamSet,
        opts: &SampleConfig,
        rng: &mut impl Rng,
    ) -> Result<()> {
        self.sample_into_seeded(params, opts, normals::seed_from(rng))
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
