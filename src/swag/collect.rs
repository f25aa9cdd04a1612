//! Collection: one snapshot of the weights updates the moments and writes a deviation column,
//! through the fused kernels (CPU in-place ops here, CUDA in `super::cuda`) or tensor ops on
//! other devices. The conventions are those of [`super::posterior`].

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor};
use half::{bf16, f16};

use super::kernels::{self, DeviationElem};
use super::posterior::*;
use super::store::{Columns, DeviationStore};
use crate::error::Result;
use crate::layout::ParamSet;

impl SwagPosterior {
    /// True when a new column is written straight into a device buffer by the collection
    /// kernels (f32 or bf16 on the device store); otherwise it goes through
    /// [`Self::store_column`].
    fn writes_columns_directly(&self) -> bool {
        matches!(self.config.store(), DeviationStore::Device)
            && self.config.deviation_dtype() != DType::F16
    }

    /// Encodes an f32 column and writes it into physical row `slot`.
    fn store_column(&mut self, slot: usize, column: &[f32]) -> Result<()> {
        let (scale, flushed) = self
            .columns
            .store(slot, column, self.config.deviation_dtype())?;
        self.scales[slot] = scale;
        self.flushed += flushed;
        Ok(())
    }

    /// Physical row the next deviation column goes to, and the ring state after the write.
    fn next_slot(&self) -> (usize, usize, usize) {
        let k = self.config.rank();
        if self.rows < k {
            ((self.oldest + self.rows) % k, self.rows + 1, self.oldest)
        } else {
            (self.oldest, self.rows, (self.oldest + 1) % k)
        }
    }

    /// True when the fused kernels can work on `params` in place: the posterior is on the CPU
    /// (or on CUDA, with the `cuda` feature) and every Var is a contiguous f32 tensor
    /// (otherwise the tensor-op path is used).
    pub(crate) fn can_fuse(&self, params: &ParamSet) -> bool {
        self.has_fused_kernels()
            && params
                .vars()
                .iter()
                .all(|v| v.dtype() == DType::F32 && v.as_tensor().is_contiguous())
    }

    /// True when this build has fused kernels for the posterior's device: the CPU always, CUDA
    /// with the `cuda` feature.
    fn has_fused_kernels(&self) -> bool {
        self.device.is_cpu() || (cfg!(feature = "cuda") && self.device.is_cuda())
    }

    /// Collects one snapshot: the current weights of `params`.
    pub fn collect(&mut self, params: &ParamSet) -> Result<()> {
        self.layout.check_same(params.layout())?;
        self.check_device(params.device(), "params")?;
        if !self.can_fuse(params) {
            return self.collect_flat(&params.flatten()?);
        }
        let pieces: Vec<(&Tensor, usize)> = params
            .vars()
            .iter()
            .zip(self.layout.entries())
            .map(|(v, e)| (v.as_tensor(), e.offset))
            .collect();
        self.collect_pieces(&pieces)
    }

    /// Collects one snapshot given as a flat `[d]` vector (layout order).
    pub fn collect_flat(&mut self, theta: &Tensor) -> Result<()> {
        self.layout.check_flat(theta, "theta")?;
        if self.has_fused_kernels() && self.device.same_device(theta.device()) {
            let theta = theta.to_dtype(DType::F32)?.contiguous()?;
            return self.collect_pieces(&[(&theta, 0)]);
        }
        self.collect_with_tensor_ops(theta)
    }

    /// The device-generic collection: a few tensor ops and in-place `slice_set`s, no host copy.
    /// Used on CUDA and Metal; on CPU the fused kernel is used instead.
    pub(crate) fn collect_with_tensor_ops(&mut self, theta: &Tensor) -> Result<()> {
        let theta = theta.to_dtype(DType::F32)?.to_device(&self.device)?;
        self.layout.check_finite(&theta)?;
        // The same f32 operations, in the same order, as kernels::welford_step: each is its
        // own kernel, so no compiler can reassociate the compensated sums.
        let inv = kernels::inv_count(self.n_collected + 1) as f64;
        let hi = self.moments.get(ROW_MEAN)?;
        let lo = self.moments.get(ROW_COMP)?;
        let m2 = self.moments.get(ROW_M2)?;
        let count = (self.n_collected + 1) as f32;
        let delta = theta.sub(&hi)?.sub(&lo)?;
        let step = delta.affine(inv, 0.0)?;
        // Dekker's product step·count (see kernels::welford_step), on tensors.
        let p = step.affine(f64::from(count), 0.0)?;
        let c = step.affine(f64::from(kernels::SPLITTER), 0.0)?;
        let sh = c.sub(&c.sub(&step)?)?;
        let sl = step.sub(&sh)?;
        let (kh, kl) = kernels::split(count);
        let (kh, kl) = (f64::from(kh), f64::from(kl));
        let p_err = sh
            .affine(kh, 0.0)?
            .sub(&p)?
            .add(&sh.affine(kl, 0.0)?)?
            .add(&sl.affine(kh, 0.0)?)?
            .add(&sl.affine(kl, 0.0)?)?;
        let step_lo = delta.sub(&p)?.sub(&p_err)?.affine(inv, 0.0)?;
        let s = hi.add(&step)?;
        let bp = s.sub(&hi)?;
        let e = hi.sub(&s.sub(&bp)?)?.add(&step.sub(&bp)?)?;
        let l = lo.add(&e.add(&step_lo)?)?;
        let h = s.add(&l)?;
        let l = l.sub(&h.sub(&s)?)?;
        let delta2 = theta.sub(&h)?.sub(&l)?;
        let m2 = m2.add(&delta.mul(&delta2)?)?;
        let moments = Tensor::stack(&[&h, &l, &m2], 0)?;
        if self.config.rank() > 0 {
            let (slot, rows, oldest) = self.next_slot();
            match (&self.columns, self.writes_columns_directly()) {
                (Columns::Memory(buffer), true) => {
                    let dev = delta2
                        .to_dtype(self.config.deviation_dtype())?
                        .unsqueeze(0)?;
                    buffer.slice_set(&dev, 0, slot)?;
                }
                _ => self.store_column(slot, &delta2.to_device(&Device::Cpu)?.to_vec1()?)?,
            }
            self.rows = rows;
            self.oldest = oldest;
        }
        self.moments.slice_set(&moments, 0, 0)?;
        self.n_collected += 1;
        Ok(())
    }

    /// Fused collection over `(tensor, offset)` pieces covering the flat vector (contiguous
    /// f32 tensors on the posterior's device).
    fn collect_pieces(&mut self, pieces: &[(&Tensor, usize)]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            return self.collect_pieces_cuda(pieces);
        }
        // 1. Refuse non-finite snapshots before touching the state.
        for (t, offset) in pieces {
            let (storage, layout) = t.storage_and_layout();
            let xs = cpu_f32_slice(&storage, layout)?;
            if let Some(i) = kernels::first_non_finite(xs) {
                return Err(self.layout.non_finite_error(offset + i, xs[i]));
            }
        }
        // 2. One fused pass per piece.
        let (slot, rows, oldest) = if self.config.rank() > 0 {
            self.next_slot()
        } else {
            (0, 0, 0)
        };
        let d = self.numel();
        let direct = self.writes_columns_directly();
        // The column in f32 when it is encoded after the fact (f16, host or disk store).
        let mut scratch = if self.config.rank() > 0 && !direct {
            vec![0f32; d]
        } else {
            Vec::new()
        };
        for (t, offset) in pieces {
            let op = CollectOp {
                moments: &self.moments,
                theta: t,
                offset: *offset,
                len: t.elem_count(),
                d,
                row: slot,
                n: self.n_collected,
            };
            match &self.columns {
                _ if self.config.rank() == 0 => op.update_moments::<f32>(None)?,
                Columns::Memory(buffer) if direct => buffer.inplace_op1(&op)?,
                _ => op.update_moments::<f32>(Some(&mut scratch[*offset..*offset + op.len]))?,
            }
        }
        if !scratch.is_empty() {
            self.store_column(slot, &scratch)?;
        }
        self.rows = rows;
        self.oldest = oldest;
        self.n_collected += 1;
        Ok(())
    }

    /// [`Self::collect_pieces`] with the fused CUDA kernels: a check of every piece for
    /// non-finite values, then one pass per piece over θ and the moments that writes the new
    /// column (f32 or bf16 on the device; otherwise into a `[d]` f32 scratch that is encoded on
    /// the device (f16) or stored as on the CPU (host, disk)). The passes read the check's
    /// verdict on the device and change nothing if a value is bad; the host reads it once,
    /// after everything is queued, and only then counts the snapshot.
    #[cfg(feature = "cuda")]
    fn collect_pieces_cuda(&mut self, pieces: &[(&Tensor, usize)]) -> Result<()> {
        use super::cuda;
        let dev = cuda::cuda_device(&self.device, "posterior")?.clone();
        let tensors: Vec<&Tensor> = pieces.iter().map(|(t, _)| *t).collect();
        let check = cuda::FiniteCheck::launch(&dev, &tensors)?;
        let verdict = check.verdict_address()?;
        let rank = self.config.rank();
        let (slot, rows, oldest) = if rank > 0 {
            self.next_slot()
        } else {
            (0, 0, 0)
        };
        let d = self.numel();
        let scratch = if rank > 0 && !self.writes_columns_directly() {
            Some(Tensor::zeros((1, d), DType::F32, &self.device)?)
        } else {
            None
        };
        // f16 on the device: the collection pass also takes the column's maximum, and a kernel
        // derives the scale from it and encodes: `store::encode_pieces`' numbers, on the device.
        let f16_on_device = scratch.is_some()
            && matches!(self.config.store(), DeviationStore::Device)
            && matches!(self.columns, Columns::Memory(_));
        let f16 = if f16_on_device {
            Some(cuda::F16Column::new(&dev)?)
        } else {
            None
        };
        let max_at = f16.as_ref().map_or(Ok(0), |f| f.max_address())?;
        for (t, offset) in pieces {
            let [mean, comp, m2] = cuda::moment_rows(&self.moments, d, *offset)?;
            let dev_at = match (&scratch, &self.columns) {
                _ if rank == 0 => None,
                (Some(s), _) => Some(cuda::column_at(s, 0, *offset)?),
                (None, Columns::Memory(buffer)) => Some(cuda::column_at(buffer, slot, *offset)?),
                (None, Columns::Disk(_)) => {
                    return Err(crate::error::Error::invalid(
                        "store",
                        "a disk store needs a scratch column",
                    ))
                }
            };
            let target = cuda::CollectTarget {
                mean,
                comp,
                m2,
                dev: dev_at,
            };
            cuda::collect(&dev, t, &target, self.n_collected, verdict, max_at)?;
        }
        if let (Some(s), Some(f), Columns::Memory(buffer)) = (&scratch, &f16, &self.columns) {
            cuda::encode_f16(&dev, &s.squeeze(0)?, buffer, slot, f, verdict)?;
        }
        // The kernels left everything untouched if a value was bad: refuse by name.
        for ((t, offset), bad) in pieces.iter().zip(check.finish()?) {
            if let Some(i) = bad {
                let value = t.flatten_all()?.get(i)?.to_scalar::<f32>()?;
                return Err(self.layout.non_finite_error(offset + i, value));
            }
        }
        match (scratch, f16) {
            (Some(_), Some(f)) => {
                let (scale, flushed) = f.finish()?;
                self.scales[slot] = scale;
                self.flushed += flushed;
            }
            (Some(s), None) => self.store_column(slot, &s.squeeze(0)?.to_vec1::<f32>()?)?,
            _ => {}
        }
        self.rows = rows;
        self.oldest = oldest;
        self.n_collected += 1;
        Ok(())
    }
}

/// Outer op: holds the deviation buffer mutably, then runs [`MomentsOp`] on the moments.
struct CollectOp<'a> {
    moments: &'a Tensor,
    theta: &'a Tensor,
    offset: usize,
    len: usize,
    d: usize,
    row: usize,
    n: usize,
}

impl CollectOp<'_> {
    fn update_moments<E: DeviationElem>(&self, dev: Option<&mut [E]>) -> candle_core::Result<()> {
        let inner = MomentsOp {
            dev: Mutex::new(dev),
            offset: self.offset,
            len: self.len,
            d: self.d,
            n: self.n,
        };
        self.moments.inplace_op2(self.theta, &inner)
    }
}

impl InplaceOp1 for CollectOp<'_> {
    fn name(&self) -> &'static str {
        "swag-collect"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let lo = kernels::contiguous_range(layout, "deviation buffer")?.start;
        let start = lo + self.row * self.d + self.offset;
        let range = start..start + self.len;
        match storage {
            CpuStorage::F32(v) => self.update_moments::<f32>(Some(&mut v[range])),
            CpuStorage::BF16(v) => self.update_moments::<bf16>(Some(&mut v[range])),
            CpuStorage::F16(v) => self.update_moments::<f16>(Some(&mut v[range])),
            _ => Err(candle_core::Error::Msg(
                "deviation buffer has an unsupported dtype".into(),
            )),
        }
    }
}

/// Inner op: updates the moments (mean, compensation, M2) in place and writes the deviation column.
struct MomentsOp<'a, E> {
    dev: Mutex<Option<&'a mut [E]>>,
    offset: usize,
    len: usize,
    d: usize,
    n: usize,
}

impl<E: DeviationElem> InplaceOp2 for MomentsOp<'_, E> {
    fn name(&self) -> &'static str {
        "swag-moments"
    }

    fn cpu_fwd(
        &self,
        moments: &mut CpuStorage,
        ml: &Layout,
        theta: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<()> {
        let msg = |m: &str| candle_core::Error::Msg(m.to_string());
        let mlo = kernels::contiguous_range(ml, "moments")?.start;
        let trange = kernels::contiguous_range(tl, "theta")?;
        let (CpuStorage::F32(m), CpuStorage::F32(t)) = (moments, theta) else {
            return Err(msg("moments and theta must be f32"));
        };
        let theta = &t[trange];
        let (mean_row, rest) = m[mlo..mlo + MOMENT_ROWS * self.d].split_at_mut(self.d);
        let (comp_row, m2_row) = rest.split_at_mut(self.d);
        let range = self.offset..self.offset + self.len;
        let mean = &mut mean_row[range.clone()];
        let comp = &mut comp_row[range.clone()];
        let m2 = &mut m2_row[range];
        let mut dev_guard = self.dev.lock().map_err(|_| msg("poisoned lock"))?;
        match dev_guard.as_deref_mut() {
            Some(dev) => kernels::collect(mean, comp, m2, theta, dev, self.n),
            None => {
                // K = 0: moments only; the deviation is computed into a scratch block and dropped.
                let mut scratch = vec![0f32; self.len.min(super::normals::NOISE_BLOCK)];
                let b = super::normals::NOISE_BLOCK;
                for (((m, c), s), t) in mean
                    .chunks_mut(b)
                    .zip(comp.chunks_mut(b))
                    .zip(m2.chunks_mut(b))
                    .zip(theta.chunks(b))
                {
                    let l = m.len();
                    kernels::collect(m, c, s, t, &mut scratch[..l], self.n);
                }
            }
        }
        Ok(())
    }
}
