//! Fused softmax over the last dimension, forward and backward.
//!
//! Forward per row: subtract the maximum (for range), exponentiate, divide by the sum. Backward
//! from the output `y` alone: `dx = y·(dy − Σ dy·y)`.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{self, contiguous, rows_per_task, storage, Acc, Elem, Scratch};
use super::norm::with_two;

const NAME: &str = "softmax_last_dim";

/// Softmax over the last dimension.
pub(crate) struct Softmax;

/// Its backward over `(y, dy)`.
struct SoftmaxBwd;

fn width_of(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&w) => Ok(w),
        None => bail!("{NAME}: a scalar has no last dimension"),
    }
}

fn fwd<T: Elem>(x: &[T], width: usize) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); x.len()];
    if width == 0 {
        return y;
    }
    y.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(rows_per_task(width))
        .for_each_init(Scratch::new, |s, (yr, xr)| {
            let xa = T::load(xr, &mut s.a);
            let ya = T::out(yr, &mut s.out);
            let n = xa.len().min(ya.len());
            let (xa, ya) = (&xa[..n], &mut ya[..n]);
            let m = cpu::max(xa);
            for i in 0..n {
                ya[i] = (xa[i] - m).exp();
            }
            let inv = <T::A as Acc>::ONE / cpu::sum(ya);
            for v in ya.iter_mut() {
                *v = *v * inv;
            }
            T::finish(yr, &s.out);
        });
    y
}

fn bwd<T: Elem>(y: &[T], dy: &[T], width: usize) -> Vec<T> {
    let mut dx = vec![T::from_f64(0.0); y.len()];
    if width == 0 {
        return dx;
    }
    dx.par_chunks_mut(width)
        .zip(y.par_chunks(width).zip(dy.par_chunks(width)))
        .with_min_len(rows_per_task(width))
        .for_each_init(Scratch::new, |s, (dxr, (yr, dyr))| {
            let ya = T::load(yr, &mut s.a);
            let dya = T::load(dyr, &mut s.b);
            let dxa = T::out(dxr, &mut s.out);
            let n = ya.len().min(dya.len()).min(dxa.len());
            let (ya, dya, dxa) = (&ya[..n], &dya[..n], &mut dxa[..n]);
            let s_dot = cpu::dot(ya, dya);
            for i in 0..n {
                dxa[i] = ya[i] * (dya[i] - s_dot);
            }
            T::finish(dxr, &s.out);
        });
    dx
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = width_of(l)?;
        let out = match s {
            CpuStorage::F32(x) => storage(fwd(&contiguous(x, l)?, width)),
            CpuStorage::F64(x) => storage(fwd(&contiguous(x, l)?, width)),
            CpuStorage::F16(x) => storage(fwd(&contiguous(x, l)?, width)),
            CpuStorage::BF16(x) => storage(fwd(&contiguous(x, l)?, width)),
            other => bail!(
                "{NAME}: needs an f32, f64, f16 or bf16 tensor, got {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        Ok(Some(y.apply_op2_no_bwd(dy, &SoftmaxBwd)?))
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax_last_dim_bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let width = width_of(l1)?;
        if l1.shape() != l2.shape() {
            bail!(
                "{NAME}: gradient of shape {:?} for an output of shape {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let out = with_two!(NAME, s1, s2, |y, dy| {
            bwd(&contiguous(y, l1)?, &contiguous(dy, l2)?, width)
        });
        Ok((out, l1.shape().clone()))
    }
}
