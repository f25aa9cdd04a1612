//! Fused layer norm and RMS norm over the last dimension, forward and backward.
//!
//! The forward ops keep nothing but their output: the backward recomputes each row's mean and
//! reciprocal standard deviation from `x` (one pass over a row that is about to be read
//! anyway), so a forward pass allocates no statistics tensor. The backward is one fused op
//! whose output packs `dx` (when `x` needs it) followed by the column sums `dgamma` and `dbeta`
//! (when a parameter needs them) as extra rows; [`unpack`] cuts it into the gradients.
//!
//! The column sums are reduced per fixed block of rows and the block partials added in block
//! order, so gradients do not depend on the number of threads.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{self, contiguous, rows_per_task, storage, Acc, Elem, Scratch};

/// The width of the rows of `layout` (its last dimension) and their number.
fn rows_of(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    match layout.dims().last() {
        Some(&w) if w > 0 => Ok((layout.shape().elem_count() / w, w)),
        Some(_) => Ok((0, 0)),
        None => bail!("{op}: a scalar has no last dimension to normalise over"),
    }
}

/// Checks that a per-column parameter holds one value per column.
fn check_param(len: usize, width: usize, what: &str, op: &str) -> Result<()> {
    if len != width {
        bail!("{op}: {what} has {len} values for rows of {width}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Row kernels, in the working precision.

/// Mean and reciprocal standard deviation (biased variance, divisor = width) of a row.
///
/// The mean is summed relative to the row's first value (shifted data): a row of constant
/// value then has exactly its value as mean and variance 0 (a plain f32 sum of 4096 equal
/// values is off by ~1e-5 relative, which `1/sqrt(eps)` would amplify into the output), and a
/// row whose mean is large against its spread loses less to cancellation.
#[inline]
fn ln_stats<A: Acc>(x: &[A], eps: A) -> (A, A) {
    let n = A::from_usize(x.len());
    let pivot = x.first().copied().unwrap_or(A::ZERO);
    let mean = pivot + cpu::sum_dev(x, pivot) / n;
    let var = cpu::sum_sq_dev(x, mean) / n;
    (mean, A::ONE / (var + eps).sqrt())
}

#[inline]
fn ln_fwd_row<A: Acc>(x: &[A], g: &[A], b: &[A], eps: A, y: &mut [A]) {
    let (mean, rstd) = ln_stats(x, eps);
    let n = x.len().min(y.len()).min(g.len()).min(b.len());
    let (x, g, b, y) = (&x[..n], &g[..n], &b[..n], &mut y[..n]);
    for i in 0..n {
        y[i] = (x[i] - mean) * rstd * g[i] + b[i];
    }
}

/// `dx = rstd·(dy·g − mean(dy·g) − x̂·mean(dy·g·x̂))`, `dgamma += dy·x̂`, `dbeta += dy`.
#[inline]
fn ln_bwd_row<A: Acc>(
    x: &[A],
    g: &[A],
    dy: &[A],
    eps: A,
    dx: Option<&mut [A]>,
    params: Option<(&mut [A], &mut [A])>,
) {
    let (mean, rstd) = ln_stats(x, eps);
    let n = x.len().min(g.len()).min(dy.len());
    let (x, g, dy) = (&x[..n], &g[..n], &dy[..n]);
    if let Some(dx) = dx {
        let dx = &mut dx[..n];
        let nf = A::from_usize(n);
        let c1 = cpu::dot(dy, g) / nf;
        let c2 = cpu::dot3_dev(dy, g, x, mean) * rstd / nf;
        for i in 0..n {
            let xhat = (x[i] - mean) * rstd;
            dx[i] = rstd * (dy[i] * g[i] - c1 - xhat * c2);
        }
    }
    if let Some((dg, db)) = params {
        let (dg, db) = (&mut dg[..n], &mut db[..n]);
        for i in 0..n {
            dg[i] += dy[i] * (x[i] - mean) * rstd;
            db[i] += dy[i];
        }
    }
}

/// Reciprocal root mean square of a row.
#[inline]
fn rms_stat<A: Acc>(x: &[A], eps: A) -> A {
    let ms = cpu::dot(x, x) / A::from_usize(x.len());
    A::ONE / (ms + eps).sqrt()
}

#[inline]
fn rms_fwd_row<A: Acc>(x: &[A], g: &[A], eps: A, y: &mut [A]) {
    let r = rms_stat(x, eps);
    let n = x.len().min(y.len()).min(g.len());
    let (x, g, y) = (&x[..n], &g[..n], &mut y[..n]);
    for i in 0..n {
        y[i] = x[i] * r * g[i];
    }
}

/// `dx = r·(dy·g − x·r²·mean(dy·g·x))`, `dgamma += dy·x·r`.
#[inline]
fn rms_bwd_row<A: Acc>(
    x: &[A],
    g: &[A],
    dy: &[A],
    eps: A,
    dx: Option<&mut [A]>,
    dg: Option<&mut [A]>,
) {
    let r = rms_stat(x, eps);
    let n = x.len().min(g.len()).min(dy.len());
    let (x, g, dy) = (&x[..n], &g[..n], &dy[..n]);
    if let Some(dx) = dx {
        let dx = &mut dx[..n];
        let c = cpu::dot3(dy, g, x) * r * r / A::from_usize(n);
        for i in 0..n {
            dx[i] = r * (dy[i] * g[i] - x[i] * c);
        }
    }
    if let Some(dg) = dg {
        let dg = &mut dg[..n];
        for i in 0..n {
            dg[i] += dy[i] * x[i] * r;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drivers over rows, per element type.

/// Which norm a driver runs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Layer,
    Rms,
}

/// Forward over all rows: `y = norm(x)·g (+ b)`.
fn fwd<T: Elem>(kind: Kind, x: &[T], g: &[T], b: Option<&[T]>, width: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); x.len()];
    if width == 0 {
        return y;
    }
    let eps = <T::A as Acc>::from_f64(eps);
    let (mut gbuf, mut bbuf) = (Vec::new(), Vec::new());
    let ga = T::load(g, &mut gbuf);
    let ba = b.map(|b| T::load(b, &mut bbuf));
    y.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(rows_per_task(width))
        .for_each_init(Scratch::new, |s, (yr, xr)| {
            let xa = T::load(xr, &mut s.a);
            let ya = T::out(yr, &mut s.out);
            match (kind, ba) {
                (Kind::Layer, Some(ba)) => ln_fwd_row(xa, ga, ba, eps, ya),
                _ => rms_fwd_row(xa, ga, eps, ya),
            }
            T::finish(yr, &s.out);
        });
    y
}

/// Backward over all rows; returns `dx` (if asked) followed by `dgamma` and, for layer norm,
/// `dbeta` (if asked), all in `T`.
#[allow(clippy::too_many_arguments)]
fn bwd<T: Elem>(
    kind: Kind,
    x: &[T],
    g: &[T],
    dy: &[T],
    width: usize,
    eps: f64,
    need_dx: bool,
    need_params: bool,
) -> Vec<T> {
    let n_params = match (need_params, kind) {
        (false, _) => 0,
        (true, Kind::Layer) => 2,
        (true, Kind::Rms) => 1,
    };
    if width == 0 {
        return Vec::new();
    }
    let rows = x.len() / width;
    let eps = <T::A as Acc>::from_f64(eps);
    let mut gbuf = Vec::new();
    let ga = T::load(g, &mut gbuf);
    let block_rows = rows_per_task(width);
    let n_blocks = rows.div_ceil(block_rows);

    // One block of rows: writes its rows of dx (if any) and returns its column partials.
    let block = |bi: usize, dx: Option<&mut [T]>, s: &mut Scratch<T::A>| -> Vec<T::A> {
        let zero = <T::A as Acc>::ZERO;
        let mut partial = vec![zero; n_params * width];
        let (pg, pb) = partial.split_at_mut(width.min(n_params * width));
        let first = bi * block_rows;
        let last = (first + block_rows).min(rows);
        let mut dx = dx;
        for (k, row) in (first..last).enumerate() {
            let xr = &x[row * width..(row + 1) * width];
            let dyr = &dy[row * width..(row + 1) * width];
            let xa = T::load(xr, &mut s.a);
            let dya = T::load(dyr, &mut s.b);
            let dx_row = dx
                .as_deref_mut()
                .map(|d| &mut d[k * width..(k + 1) * width]);
            match dx_row {
                Some(dxr) => {
                    let dxa = T::out(dxr, &mut s.out);
                    row_bwd(kind, xa, ga, dya, eps, Some(dxa), n_params > 0, pg, pb);
                    T::finish(dxr, &s.out);
                }
                None => row_bwd(kind, xa, ga, dya, eps, None, n_params > 0, pg, pb),
            }
        }
        partial
    };

    let mut out = Vec::new();
    let partials: Vec<Vec<T::A>> = if need_dx {
        out = vec![T::from_f64(0.0); rows * width + n_params * width];
        let (dx, _) = out.split_at_mut(rows * width);
        dx.par_chunks_mut(block_rows * width)
            .enumerate()
            .map_init(Scratch::new, |s, (bi, d)| block(bi, Some(d), s))
            .collect()
    } else if n_params > 0 {
        out = vec![T::from_f64(0.0); n_params * width];
        (0..n_blocks)
            .into_par_iter()
            .map_init(Scratch::new, |s, bi| block(bi, None, s))
            .collect()
    } else {
        Vec::new()
    };
    if n_params > 0 {
        let mut total = vec![<T::A as Acc>::ZERO; n_params * width];
        for p in &partials {
            for (t, &v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        let tail = out.len() - n_params * width;
        out[tail..].copy_from_slice(&T::from_acc_vec(total));
    }
    out
}

/// One row of either backward, accumulating the column partials into `pg` (and `pb`).
#[allow(clippy::too_many_arguments)]
#[inline]
fn row_bwd<A: Acc>(
    kind: Kind,
    x: &[A],
    g: &[A],
    dy: &[A],
    eps: A,
    dx: Option<&mut [A]>,
    params: bool,
    pg: &mut [A],
    pb: &mut [A],
) {
    match kind {
        Kind::Layer => ln_bwd_row(x, g, dy, eps, dx, params.then_some((pg, pb))),
        Kind::Rms => rms_bwd_row(x, g, dy, eps, dx, params.then_some(pg)),
    }
}

// ---------------------------------------------------------------------------------------------
// The custom ops.

/// Dispatches a closure over the element type of three storages of one dtype.
macro_rules! with_three {
    ($op:expr, $s1:expr, $s2:expr, $s3:expr, |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($s1, $s2, $s3) {
            (CpuStorage::F32($a), CpuStorage::F32($b), CpuStorage::F32($c)) => storage($body),
            (CpuStorage::F64($a), CpuStorage::F64($b), CpuStorage::F64($c)) => storage($body),
            (CpuStorage::F16($a), CpuStorage::F16($b), CpuStorage::F16($c)) => storage($body),
            (CpuStorage::BF16($a), CpuStorage::BF16($b), CpuStorage::BF16($c)) => storage($body),
            (a, b, c) => bail!(
                "{}: needs f32, f64, f16 or bf16 tensors of one dtype, got {:?}, {:?} and {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(a),
                candle_core::backend::BackendStorage::dtype(b),
                candle_core::backend::BackendStorage::dtype(c)
            ),
        }
    };
}
pub(crate) use with_three;

/// Same as [`with_three`] for two storages.
macro_rules! with_two {
    ($op:expr, $s1:expr, $s2:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32($a), CpuStorage::F32($b)) => storage($body),
            (CpuStorage::F64($a), CpuStorage::F64($b)) => storage($body),
            (CpuStorage::F16($a), CpuStorage::F16($b)) => storage($body),
            (CpuStorage::BF16($a), CpuStorage::BF16($b)) => storage($body),
            (a, b) => bail!(
                "{}: needs f32, f64, f16 or bf16 tensors of one dtype, got {:?} and {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(a),
                candle_core::backend::BackendStorage::dtype(b)
            ),
        }
    };
}
pub(crate) use with_two;

/// Layer norm forward over `(x, gamma, beta)`.
pub(crate) struct LayerNorm {
    pub eps: f64,
}

/// Layer norm backward over `(x, gamma, dy)`, packed as described in the module docs.
struct LayerNormBwd {
    eps: f64,
    need_dx: bool,
    need_params: bool,
}

/// RMS norm forward over `(x, gamma)`.
pub(crate) struct RmsNorm {
    pub eps: f64,
}

/// RMS norm backward over `(x, gamma, dy)`, packed as described in the module docs.
struct RmsNormBwd {
    eps: f64,
    need_dx: bool,
    need_params: bool,
}

const LN: &str = "layer_norm";
const RMS: &str = "rms_norm";

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        LN
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = rows_of(l1, LN)?;
        check_param(l2.shape().elem_count(), width, "gamma", LN)?;
        check_param(l3.shape().elem_count(), width, "beta", LN)?;
        let out = with_three!(LN, s1, s2, s3, |x, g, b| {
            let (x, g, b) = (contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?);
            fwd(Kind::Layer, &x, &g, Some(&b), width, self.eps)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_g, need_b) = (gamma.track_op(), beta.track_op());
        let op = LayerNormBwd {
            eps: self.eps,
            need_dx: x.track_op(),
            need_params: need_g || need_b,
        };
        if !op.need_dx && !op.need_params {
            return Ok((None, None, None));
        }
        let packed = x.apply_op3_no_bwd(gamma, dy, &op)?;
        let (dx, mut params) = unpack(&packed, x, op.need_dx, op.need_params, 2)?;
        let db = params.pop().filter(|_| need_b);
        let dg = params.pop().filter(|_| need_g);
        Ok((
            dx,
            dg.map(|t| t.reshape(gamma.shape())).transpose()?,
            db.map(|t| t.reshape(beta.shape())).transpose()?,
        ))
    }
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "layer_norm_bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_of(l1, LN)?;
        check_param(l2.shape().elem_count(), width, "gamma", LN)?;
        if l3.shape() != l1.shape() {
            bail!(
                "{LN}: gradient of shape {:?} for an input of shape {:?}",
                l3.shape(),
                l1.shape()
            );
        }
        let out = with_three!(LN, s1, s2, s3, |x, g, dy| {
            let (x, g, dy) = (contiguous(x, l1)?, contiguous(g, l2)?, contiguous(dy, l3)?);
            bwd(
                Kind::Layer,
                &x,
                &g,
                &dy,
                width,
                self.eps,
                self.need_dx,
                self.need_params,
            )
        });
        let out_rows = if self.need_dx { rows } else { 0 } + if self.need_params { 2 } else { 0 };
        Ok((out, Shape::from((out_rows, width))))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        RMS
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = rows_of(l1, RMS)?;
        check_param(l2.shape().elem_count(), width, "gamma", RMS)?;
        let out = with_two!(RMS, s1, s2, |x, g| {
            let (x, g) = (contiguous(x, l1)?, contiguous(g, l2)?);
            fwd(Kind::Rms, &x, &g, None, width, self.eps)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = RmsNormBwd {
            eps: self.eps,
            need_dx: x.track_op(),
            need_params: gamma.track_op(),
        };
        if !op.need_dx && !op.need_params {
            return Ok((None, None));
        }
        let packed = x.apply_op3_no_bwd(gamma, dy, &op)?;
        let (dx, mut params) = unpack(&packed, x, op.need_dx, op.need_params, 1)?;
        let dg = params.pop().map(|t| t.reshape(gamma.shape())).transpose()?;
        Ok((dx, dg))
    }
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "rms_norm_bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = rows_of(l1, RMS)?;
        check_param(l2.shape().elem_count(), width, "gamma", RMS)?;
        if l3.shape() != l1.shape() {
            bail!(
                "{RMS}: gradient of shape {:?} for an input of shape {:?}",
                l3.shape(),
                l1.shape()
            );
        }
        let out = with_three!(RMS, s1, s2, s3, |x, g, dy| {
            let (x, g, dy) = (contiguous(x, l1)?, contiguous(g, l2)?, contiguous(dy, l3)?);
            bwd(
                Kind::Rms,
                &x,
                &g,
                &dy,
                width,
                self.eps,
                self.need_dx,
                self.need_params,
            )
        });
        let out_rows = if self.need_dx { rows } else { 0 } + if self.need_params { 1 } else { 0 };
        Ok((out, Shape::from((out_rows, width))))
    }
}

/// Cuts a packed backward output `[rows? + n_params, width]` into `dx` (shaped as `x`) and the
/// `n_params` column sums (each `[1, width]`). Views, no copies.
fn unpack(
    packed: &Tensor,
    x: &Tensor,
    has_dx: bool,
    has_params: bool,
    n_params: usize,
) -> Result<(Option<Tensor>, Vec<Tensor>)> {
    let rows = if has_dx {
        packed.dim(0)? - if has_params { n_params } else { 0 }
    } else {
        0
    };
    let dx = if has_dx {
        Some(packed.narrow(0, 0, rows)?.reshape(x.shape())?)
    } else {
        None
    };
    let params = if has_params {
        (0..n_params)
            .map(|k| packed.narrow(0, rows + k, 1))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok((dx, params))
}
