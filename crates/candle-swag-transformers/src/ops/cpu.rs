//! CPU plumbing shared by the fused ops: the element types and their working precision,
//! strided reads, vectorisable row reductions and the row-parallel driver.
//!
//! Every kernel is written once over an accumulator type [`Acc`] (f32 or f64). An element type
//! [`Elem`] names its accumulator: f32 and f64 compute in themselves, f16 and bf16 are widened
//! to f32 row by row (into a per-task scratch buffer) and rounded once on the way out.

use std::borrow::Cow;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use candle_core::{bail, CpuStorage, Layout, Result, WithDType};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Elements per rayon task: rows are grouped so that a task reads at least this many values
/// (a few hundred rows of a narrow tensor would otherwise each pay the scheduling cost).
pub(crate) const ELEMS_PER_TASK: usize = 8192;

/// Rows per task for rows of `width` values.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (ELEMS_PER_TASK / width.max(1)).max(1)
}

/// The precision the kernels compute in.
pub(crate) trait Acc:
    Copy
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + PartialOrd
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn from_usize(n: usize) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
}

macro_rules! acc_impl {
    ($t:ty) => {
        impl Acc for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
        }
    };
}
acc_impl!(f32);
acc_impl!(f64);

/// A storage element type and the precision it is computed in.
pub(crate) trait Elem: WithDType + Send + Sync {
    /// The accumulator: the type itself for f32/f64, f32 for f16/bf16.
    type A: Acc;

    /// `src` in the working precision: borrowed as is, or widened into `buf`.
    fn load<'a>(src: &'a [Self], buf: &'a mut Vec<Self::A>) -> &'a [Self::A];

    /// Where a kernel writes a row of `dst`: `dst` itself, or `buf` (then [`Elem::finish`]).
    fn out<'a>(dst: &'a mut [Self], buf: &'a mut Vec<Self::A>) -> &'a mut [Self::A];

    /// Rounds what the kernel wrote into `buf` back into `dst` (nothing to do for f32/f64).
    fn finish(dst: &mut [Self], buf: &[Self::A]);

    /// Converts a vector of results (the reductions over rows) to the element type.
    fn from_acc_vec(v: Vec<Self::A>) -> Vec<Self>;
}

macro_rules! elem_native {
    ($t:ty) => {
        impl Elem for $t {
            type A = $t;
            #[inline(always)]
            fn load<'a>(src: &'a [Self], _buf: &'a mut Vec<$t>) -> &'a [$t] {
                src
            }
            #[inline(always)]
            fn out<'a>(dst: &'a mut [Self], _buf: &'a mut Vec<$t>) -> &'a mut [$t] {
                dst
            }
            #[inline(always)]
            fn finish(_dst: &mut [Self], _buf: &[$t]) {}
            fn from_acc_vec(v: Vec<$t>) -> Vec<Self> {
                v
            }
        }
    };
}
elem_native!(f32);
elem_native!(f64);

macro_rules! elem_half {
    ($t:ty) => {
        impl Elem for $t {
            type A = f32;
            #[inline(always)]
            fn load<'a>(src: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32] {
                buf.resize(src.len(), 0.0);
                src.convert_to_f32_slice(buf);
                buf
            }
            #[inline(always)]
            fn out<'a>(dst: &'a mut [Self], buf: &'a mut Vec<f32>) -> &'a mut [f32] {
                buf.resize(dst.len(), 0.0);
                buf
            }
            #[inline(always)]
            fn finish(dst: &mut [Self], buf: &[f32]) {
                dst.convert_from_f32_slice(&buf[..dst.len()]);
            }
            fn from_acc_vec(v: Vec<f32>) -> Vec<Self> {
                let mut out = vec![<$t>::ZERO; v.len()];
                out.convert_from_f32_slice(&v);
                out
            }
        }
    };
}
elem_half!(f16);
elem_half!(bf16);

/// Scratch buffers of one rayon task (only the half types use them).
pub(crate) struct Scratch<A> {
    pub a: Vec<A>,
    pub b: Vec<A>,
    pub out: Vec<A>,
}

impl<A> Scratch<A> {
    pub(crate) fn new() -> Self {
        Self {
            a: Vec::new(),
            b: Vec::new(),
            out: Vec::new(),
        }
    }
}

/// The values of a tensor in row-major order: the storage itself when the layout is contiguous,
/// otherwise a gathered copy (transposed, narrowed or broadcast views).
pub(crate) fn contiguous<'a, T: Copy>(src: &'a [T], layout: &Layout) -> Result<Cow<'a, [T]>> {
    if let Some((start, end)) = layout.contiguous_offsets() {
        return match src.get(start..end) {
            Some(s) => Ok(Cow::Borrowed(s)),
            None => bail!(
                "layout {layout:?} outside a storage of {} values",
                src.len()
            ),
        };
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let n = layout.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(Cow::Owned(out));
    }
    let Some((&inner, outer_dims)) = dims.split_last() else {
        // A scalar.
        return match src.get(layout.start_offset()) {
            Some(&v) => Ok(Cow::Owned(vec![v])),
            None => bail!(
                "layout {layout:?} outside a storage of {} values",
                src.len()
            ),
        };
    };
    let inner_stride = stride[dims.len() - 1];
    // The largest index the layout reaches, checked once so the loop can index freely.
    let last: usize = layout.start_offset()
        + dims
            .iter()
            .zip(stride)
            .map(|(&d, &s)| (d - 1) * s)
            .sum::<usize>();
    if last >= src.len() {
        bail!(
            "layout {layout:?} outside a storage of {} values",
            src.len()
        );
    }
    let mut index = vec![0usize; outer_dims.len()];
    let mut base = layout.start_offset();
    for _ in 0..n / inner {
        if inner_stride == 1 {
            out.extend_from_slice(&src[base..base + inner]);
        } else {
            out.extend((0..inner).map(|j| src[base + j * inner_stride]));
        }
        for k in (0..outer_dims.len()).rev() {
            index[k] += 1;
            base += stride[k];
            if index[k] < outer_dims[k] {
                break;
            }
            base -= stride[k] * outer_dims[k];
            index[k] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

/// Lanes of the vectorisable reductions: eight independent partial sums, which LLVM maps to
/// SIMD registers (a single running sum would serialise on the floating-point additions and
/// could not be vectorised without reordering them).
const LANES: usize = 8;

/// Adds the [`LANES`] partial sums and the tail.
#[inline(always)]
fn finish_lanes<A: Acc>(acc: [A; LANES], tail: A) -> A {
    let mut total = tail;
    for a in acc {
        total += a;
    }
    total
}

/// Reduces `f` over the elements of `a` and `b` pairwise with [`LANES`] partial sums. The
/// chunks are zipped (no indexing), so the loop has no bounds checks and vectorises.
#[inline(always)]
fn lanes2<A: Acc>(a: &[A], b: &[A], f: impl Fn(A, A) -> A) -> A {
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [A::ZERO; LANES];
    for (xa, xb) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(xa).zip(xb) {
            *s += f(p, q);
        }
    }
    let mut tail = A::ZERO;
    for (&p, &q) in ra.iter().zip(rb) {
        tail += f(p, q);
    }
    finish_lanes(acc, tail)
}

/// Same as [`lanes2`] over three slices.
#[inline(always)]
fn lanes3<A: Acc>(a: &[A], b: &[A], c: &[A], f: impl Fn(A, A, A) -> A) -> A {
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    let mut acc = [A::ZERO; LANES];
    for ((xa, xb), xc) in ca.zip(cb).zip(cc) {
        for (((s, &p), &q), &r) in acc.iter_mut().zip(xa).zip(xb).zip(xc) {
            *s += f(p, q, r);
        }
    }
    let mut tail = A::ZERO;
    for ((&p, &q), &r) in ra.iter().zip(rb).zip(rc) {
        tail += f(p, q, r);
    }
    finish_lanes(acc, tail)
}

/// `Σ x`.
#[inline]
pub(crate) fn sum<A: Acc>(x: &[A]) -> A {
    lanes2(x, x, |p, _| p)
}

/// `Σ (x − c)`.
#[inline]
pub(crate) fn sum_dev<A: Acc>(x: &[A], c: A) -> A {
    lanes2(x, x, |p, _| p - c)
}

/// `Σ (x − c)²`.
#[inline]
pub(crate) fn sum_sq_dev<A: Acc>(x: &[A], c: A) -> A {
    lanes2(x, x, |p, _| (p - c) * (p - c))
}

/// `Σ a·b`.
#[inline]
pub(crate) fn dot<A: Acc>(a: &[A], b: &[A]) -> A {
    lanes2(a, b, |p, q| p * q)
}

/// `Σ a·b·c`.
#[inline]
pub(crate) fn dot3<A: Acc>(a: &[A], b: &[A], c: &[A]) -> A {
    lanes3(a, b, c, |p, q, r| p * q * r)
}

/// `Σ a·b·(x − m)`.
#[inline]
pub(crate) fn dot3_dev<A: Acc>(a: &[A], b: &[A], x: &[A], m: A) -> A {
    lanes3(a, b, x, |p, q, r| p * q * (r - m))
}

/// Row maximum (−∞ for an empty row; a NaN in the row makes the softmax NaN through the sum).
#[inline]
pub(crate) fn max<A: Acc>(x: &[A]) -> A {
    let mut acc = [A::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            if v > *a {
                *a = v;
            }
        }
    }
    let mut m = A::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        if v > m {
            m = v;
        }
    }
    m
}

/// Wraps a vector of results as candle storage.
pub(crate) fn storage<T: WithDType>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The gathered values of a view equal candle's own `contiguous()` of it.
    fn gathered(t: &Tensor) -> Vec<f32> {
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => {
                contiguous(v, layout).expect("gather").into_owned()
            }
            _ => panic!("not f32 on the CPU"),
        }
    }

    #[test]
    fn gathers_strided_views_in_row_major_order() -> Result<()> {
        let t = Tensor::arange(0f32, 60., &Device::Cpu)?.reshape((3, 4, 5))?;
        let views = [
            t.clone(),
            t.narrow(0, 1, 2)?,
            t.t()?,
            t.narrow(2, 1, 3)?,
            t.permute((2, 0, 1))?,
            t.narrow(1, 2, 1)?.broadcast_as((3, 6, 5))?,
            // A rank-0 view with an offset.
            t.flatten_all()?.narrow(0, 7, 1)?.squeeze(0)?,
        ];
        for v in &views {
            let want = v.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(gathered(v), want, "view {:?}", v.layout());
        }
        Ok(())
    }

    #[test]
    fn reductions_cover_every_lane_and_tail() {
        for n in [0usize, 1, 7, 8, 9, 33, 4096] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let plain: f64 = x.iter().sum();
            assert!(
                (sum(&x) - plain).abs() <= 1e-12 * (1.0 + n as f64),
                "sum at n = {n}"
            );
            let dots: f64 = x.iter().map(|v| v * v).sum();
            assert!(
                (dot(&x, &x) - dots).abs() <= 1e-12 * (1.0 + n as f64),
                "dot at n = {n}"
            );
            let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(max(&x), m, "max at n = {n}");
        }
    }
}
