//! Fused rotary position embedding (the non-interleaved "rotate half" convention), forward and
//! backward.
//!
//! For `x` of shape `[b, h, t, d]` and `cos`, `sin` of shape `[t, d/2]`, with `x₁ = x[.., :d/2]`
//! and `x₂ = x[.., d/2:]`: `y₁ = x₁·cos − x₂·sin`, `y₂ = x₁·sin + x₂·cos`. The rotation is
//! orthogonal, so `dx` is the inverse rotation of `dy` (the same kernel with `−sin`); `dcos` and
//! `dsin` are sums over batch and heads, computed only when `cos` or `sin` needs a gradient.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{contiguous, storage, Acc, Elem, Scratch, ELEMS_PER_TASK};
use super::norm::{with_three, with_two};

const NAME: &str = "rope";

/// Rotary embedding over `(x, cos, sin)`; `inverse` rotates by `−sin` (the backward of `dx`).
pub(crate) struct Rope {
    pub inverse: bool,
}

/// `dcos` and `dsin` over `(x, dy)`, packed as `[t, d]`: `dcos` in the first `d/2` columns.
struct RopeParamBwd;

/// `(b·h, t, d)` of a `[b, h, t, d]` layout.
fn dims_of(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, h, t, d) = l.shape().dims4()?;
    if d % 2 == 1 {
        bail!("{NAME}: head dimension {d} is odd");
    }
    Ok((b * h, t, d))
}

fn fwd<T: Elem>(x: &[T], cos: &[T], sin: &[T], t: usize, d: usize, inverse: bool) -> Vec<T> {
    let half = d / 2;
    let mut y = vec![T::from_f64(0.0); x.len()];
    if t * d == 0 {
        return y;
    }
    let (mut cbuf, mut sbuf) = (Vec::new(), Vec::new());
    let c = T::load(&cos[..t * half], &mut cbuf);
    let s = T::load(&sin[..t * half], &mut sbuf);
    let s_neg: Vec<T::A>;
    let s = if inverse {
        s_neg = s.iter().map(|&v| -v).collect();
        &s_neg[..]
    } else {
        s
    };
    let chunk = t * d;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .with_min_len((ELEMS_PER_TASK / chunk).max(1))
        .for_each_init(Scratch::new, |sc, (yr, xr)| {
            let xa = T::load(xr, &mut sc.a);
            let ya = T::out(yr, &mut sc.out);
            for ((xt, yt), (ct, st)) in xa
                .chunks_exact(d)
                .zip(ya.chunks_exact_mut(d))
                .zip(c.chunks_exact(half).zip(s.chunks_exact(half)))
            {
                let (x1, x2) = xt.split_at(half);
                let (y1, y2) = yt.split_at_mut(half);
                for i in 0..half {
                    let (a, b, cc, ss) = (x1[i], x2[i], ct[i], st[i]);
                    y1[i] = a * cc - b * ss;
                    y2[i] = a * ss + b * cc;
                }
            }
            T::finish(yr, &sc.out);
        });
    y
}

fn param_bwd<T: Elem>(x: &[T], dy: &[T], bh: usize, t: usize, d: usize) -> Vec<T> {
    let half = d / 2;
    let mut out = vec![T::from_f64(0.0); t * d];
    if t * d == 0 {
        return out;
    }
    out.par_chunks_mut(d)
        .enumerate()
        .for_each_init(Scratch::new, |sc, (ti, o)| {
            let zero = <T::A as Acc>::ZERO;
            let mut acc = vec![zero; d];
            for k in 0..bh {
                let at = k * t * d + ti * d;
                let xa = T::load(&x[at..at + d], &mut sc.a);
                let ga = T::load(&dy[at..at + d], &mut sc.b);
                let (x1, x2) = xa.split_at(half);
                let (g1, g2) = ga.split_at(half);
                let (dc, ds) = acc.split_at_mut(half);
                for i in 0..half {
                    dc[i] += g1[i] * x1[i] + g2[i] * x2[i];
                    ds[i] += g2[i] * x1[i] - g1[i] * x2[i];
                }
            }
            let oa = T::out(o, &mut sc.out);
            oa.copy_from_slice(&acc);
            T::finish(o, &sc.out);
        });
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        NAME
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
        let (_, t, d) = dims_of(l1)?;
        for (l, what) in [(l2, "cos"), (l3, "sin")] {
            match l.dims() {
                &[tc, hc] if tc >= t && hc * 2 == d => {}
                dims => bail!(
                    "{NAME}: {what} of shape {dims:?} for x of shape {:?} (needs [≥{t}, {}])",
                    l1.dims(),
                    d / 2
                ),
            }
        }
        let out = with_three!(NAME, s1, s2, s3, |x, c, s| {
            let (x, c, s) = (contiguous(x, l1)?, contiguous(c, l2)?, contiguous(s, l3)?);
            fwd(&x, &c, &s, t, d, self.inverse)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            let op = Rope {
                inverse: !self.inverse,
            };
            Some(dy.apply_op3_no_bwd(cos, sin, &op)?)
        } else {
            None
        };
        let (need_c, need_s) = (cos.track_op(), sin.track_op());
        if !need_c && !need_s {
            return Ok((dx, None, None));
        }
        let t = x.dim(2)?;
        let half = x.dim(3)? / 2;
        let packed = x.apply_op2_no_bwd(dy, &RopeParamBwd)?;
        let (dc, ds) = (packed.narrow(1, 0, half)?, packed.narrow(1, half, half)?);
        // The inverse rotation's `sin` enters negated.
        let ds = if self.inverse { ds.neg()? } else { ds };
        // Gradients for the rows the op read; longer tables get zeros below.
        let pad = |g: Tensor, full: &Tensor| -> Result<Tensor> {
            let rows = full.dim(0)?;
            if rows > t {
                g.pad_with_zeros(0, 0, rows - t)
            } else {
                Ok(g)
            }
        };
        let dc = if need_c { Some(pad(dc, cos)?) } else { None };
        let ds = if need_s { Some(pad(ds, sin)?) } else { None };
        Ok((dx, dc, ds))
    }
}

impl CustomOp2 for RopeParamBwd {
    fn name(&self) -> &'static str {
        "rope_param_bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bh, t, d) = dims_of(l1)?;
        if l1.shape() != l2.shape() {
            bail!(
                "{NAME}: gradient of shape {:?} for an input of shape {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let out = with_two!(NAME, s1, s2, |x, dy| {
            param_bwd(&contiguous(x, l1)?, &contiguous(dy, l2)?, bh, t, d)
        });
        Ok((out, Shape::from((t, d))))
    }
}
