//! Inverted dropout with counter-based masks, fused: one pass forward, one pass backward, no
//! mask tensor kept between them.
//!
//! Element `i` (row-major over the logical shape) of call `call` under `seed` is kept when
//! word `i mod 4` of `philox4x32_10([g mod 2³², g div 2³², call mod 2³², call div 2³²],
//! [seed mod 2³², seed div 2³²])`, `g = i div 4`, is at least `round(p · 2³²)` (the core's
//! generator, [`candle_swag::swag::normals::philox4x32_10`]). The mask depends on nothing but
//! `(seed, call, i)`, so the backward pass regenerates it: the gradient of dropout is the same
//! dropout applied to the incoming gradient.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use candle_swag::swag::normals::philox4x32_10;
use half::{bf16, f16};
use rayon::prelude::*;

use super::cpu::{contiguous, storage};

const NAME: &str = "dropout";
/// Elements per rayon task (a multiple of 4: a task starts on a Philox group).
const BLOCK: usize = 1 << 14;

/// One dropout call: probability, seed and call number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropout {
    pub p: f32,
    pub seed: u64,
    pub call: u64,
}

impl Dropout {
    /// The smallest kept word: `round(p · 2³²)`, at most `2³² − 1`.
    fn threshold(&self) -> u32 {
        (f64::from(self.p) * 4_294_967_296.0)
            .round()
            .min(f64::from(u32::MAX)) as u32
    }

    /// `1 / (1 − p)`, the kept elements' factor.
    pub(crate) fn scale(&self) -> f64 {
        1.0 / (1.0 - f64::from(self.p))
    }

    /// Calls `keep(j, kept)` for elements `start..start + len` (`start` a multiple of 4),
    /// `j` relative to `start`.
    #[inline]
    fn for_each(&self, start: usize, len: usize, mut keep: impl FnMut(usize, bool)) {
        let t = self.threshold();
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let (c2, c3) = (self.call as u32, (self.call >> 32) as u32);
        let mut j = 0;
        while j < len {
            let g = ((start + j) / 4) as u64;
            let words = philox4x32_10([g as u32, (g >> 32) as u32, c2, c3], key);
            for w in words {
                if j == len {
                    break;
                }
                keep(j, w >= t);
                j += 1;
            }
        }
    }

    /// The mask times `1 / (1 − p)` for `n` elements, as f32 (for devices without the fused
    /// kernel: the same mask, built on the host).
    pub(crate) fn host_mask(&self, n: usize) -> Vec<f32> {
        let scale = self.scale() as f32;
        let mut mask = vec![0f32; n];
        mask.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, chunk)| {
                let len = chunk.len();
                self.for_each(b * BLOCK, len, |j, kept| {
                    if kept {
                        chunk[j] = scale;
                    }
                });
            });
        mask
    }

    fn apply<T: Copy + Send + Sync>(
        &self,
        x: &[T],
        zero: T,
        times: impl Fn(T) -> T + Sync,
    ) -> Vec<T> {
        let mut y = vec![zero; x.len()];
        y.par_chunks_mut(BLOCK)
            .zip(x.par_chunks(BLOCK))
            .enumerate()
            .for_each(|(b, (yc, xc))| {
                self.for_each(b * BLOCK, xc.len(), |j, kept| {
                    if kept {
                        yc[j] = times(xc[j]);
                    }
                });
            });
        y
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (s32, s64) = (self.scale() as f32, self.scale());
        let out = match s {
            CpuStorage::F32(x) => storage(self.apply(&contiguous(x, l)?, 0f32, |v| v * s32)),
            CpuStorage::F64(x) => storage(self.apply(&contiguous(x, l)?, 0f64, |v| v * s64)),
            CpuStorage::F16(x) => storage(self.apply(&contiguous(x, l)?, f16::ZERO, |v| {
                f16::from_f32(v.to_f32() * s32)
            })),
            CpuStorage::BF16(x) => storage(self.apply(&contiguous(x, l)?, bf16::ZERO, |v| {
                bf16::from_f32(v.to_f32() * s32)
            })),
            other => bail!(
                "{NAME}: needs an f32, f64, f16 or bf16 tensor, got {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        // Linear in x with the same mask: its gradient is the same dropout of dy.
        Ok(Some(dy.apply_op1(*self)?))
    }
}
