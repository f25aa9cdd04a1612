//! Fused CPU kernels over plain slices of candle's storage.
//!
//! Each kernel makes one pass over the memory it must touch: `collect` reads theta, updates the
//! two moments in place and writes the new deviation column; `sample` reads the moments and the
//! held deviation rows, draws its own noise block by block, and writes theta. No temporary of
//! size `d` is allocated. Work is split over rayon's pool in blocks of [`NOISE_BLOCK`] elements
//! when a parameter is large enough for threads to pay off.
//!
//! The candle glue (getting `&mut [f32]` out of a `Tensor`) lives in `posterior.rs` and
//! `sample.rs`; these functions only see slices, so they are tested directly.

use half::{bf16, f16};
use rayon::prelude::*;

use super::noise::{fill_normals, stream, NOISE_BLOCK};

/// Parameters shorter than this are processed on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// A storage type for deviation columns: f32, or a 16-bit float to halve the K×d buffer.
pub trait DeviationElem: Copy + Send + Sync {
    /// Rounds an f32 to the storage type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Widens back to f32 (exact).
    fn to_f32(self) -> f32;
}

impl DeviationElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

macro_rules! half_deviation_elem {
    ($($t:ty),*) => {$(
        impl DeviationElem for $t {
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                <$t>::from_f32(x)
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
        }
    )*};
}
half_deviation_elem!(bf16, f16);

/// The element range `lo..hi` of a contiguous tensor in its storage; `what` names it in the
/// error (these ops are only called on contiguous buffers, so this never fails in practice).
pub(crate) fn contiguous_range(
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<std::ops::Range<usize>> {
    layout
        .contiguous_offsets()
        .map(|(lo, hi)| lo..hi)
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} is not contiguous")))
}

/// True when every value of `xs` is finite (vectorises: x − x is 0 for finite x, NaN for NaN
/// or ±Inf).
#[allow(clippy::eq_op)]
fn all_finite(xs: &[f32]) -> bool {
    xs.chunks(4096)
        .all(|c| c.iter().fold(0f32, |acc, &x| acc + (x - x)) == 0.0)
}

/// Index of the first non-finite value of `xs`, if any (checked in parallel when large).
pub fn first_non_finite(xs: &[f32]) -> Option<usize> {
    let ok = if xs.len() < PARALLEL_MIN {
        all_finite(xs)
    } else {
        xs.par_chunks(NOISE_BLOCK).all(all_finite)
    };
    if ok {
        None
    } else {
        xs.iter().position(|x| !x.is_finite())
    }
}

#[inline(always)]
fn collect_serial<E: DeviationElem>(
    mean: &mut [f32],
    sq_mean: &mut [f32],
    theta: &[f32],
    dev: &mut [E],
    keep: f32,
    new: f32,
) {
    for (((m, s), &t), dv) in mean
        .iter_mut()
        .zip(sq_mean.iter_mut())
        .zip(theta.iter())
        .zip(dev.iter_mut())
    {
        let nm = *m * keep + t * new;
        *m = nm;
        *s = *s * keep + (t * t) * new;
        *dv = E::from_f32(t - nm);
    }
}

/// One SWAG collection step over a slice of the flat vector, `n` snapshots already collected:
/// `mean ← mean·n/(n+1) + θ/(n+1)`, `sq_mean ← sq_mean·n/(n+1) + θ²/(n+1)`,
/// `dev ← θ − mean` (the *updated* mean, as the reference implementation does).
pub fn collect<E: DeviationElem>(
    mean: &mut [f32],
    sq_mean: &mut [f32],
    theta: &[f32],
    dev: &mut [E],
    n: usize,
) {
    debug_assert!(mean.len() == theta.len() && sq_mean.len() == theta.len());
    debug_assert!(dev.len() == theta.len());
    let n1 = n as f64 + 1.0;
    let keep = (n as f64 / n1) as f32;
    let new = (1.0 / n1) as f32;
    if theta.len() < PARALLEL_MIN {
        collect_serial(mean, sq_mean, theta, dev, keep, new);
        return;
    }
    mean.par_chunks_mut(NOISE_BLOCK)
        .zip(sq_mean.par_chunks_mut(NOISE_BLOCK))
        .zip(theta.par_chunks(NOISE_BLOCK))
        .zip(dev.par_chunks_mut(NOISE_BLOCK))
        .for_each(|(((m, s), t), d)| collect_serial(m, s, t, d, keep, new));
}

/// What the sampling kernel needs besides the slices.
#[derive(Debug, Clone, Copy)]
pub struct SampleCoefficients {
    /// sqrt(scale).
    pub sqrt_scale: f32,
    /// 1 / sqrt(divisor) applied to `Dᵀ z2`.
    pub inv_sqrt_divisor: f32,
    /// Lower clamp of the diagonal variance.
    pub var_clamp: f32,
}

/// Where the sampling kernel draws `z1`: a seed and the parameter's index in the layout.
#[derive(Debug, Clone, Copy)]
pub struct NoiseSource {
    /// Base seed of this sample.
    pub seed: u64,
    /// Index of the parameter in the layout.
    pub param: u64,
}

#[allow(clippy::too_many_arguments)]
fn sample_block<E: DeviationElem>(
    out: &mut [f32],
    mean: &[f32],
    sq_mean: &[f32],
    dev_rows: &[&[E]],
    z2: &[f32],
    coef: SampleCoefficients,
    z1: &mut [f32],
    noise: NoiseSource,
    block: usize,
) {
    let len = out.len();
    let z1 = &mut z1[..len];
    fill_normals(&mut stream(noise.seed, noise.param, block as u64), z1);
    // Low-rank part, accumulated row by row into `out` while the block sits in cache.
    // Rows are taken four at a time so `out` is swept K/4 times instead of K.
    out.fill(0.0);
    let lo = block * NOISE_BLOCK;
    let mut rows = dev_rows.chunks_exact(4);
    let mut weights = z2.chunks_exact(4);
    for (r, w) in (&mut rows).zip(&mut weights) {
        let s = coef.inv_sqrt_divisor;
        let (w0, w1, w2, w3) = (w[0] * s, w[1] * s, w[2] * s, w[3] * s);
        let (r0, r1) = (&r[0][lo..lo + len], &r[1][lo..lo + len]);
        let (r2, r3) = (&r[2][lo..lo + len], &r[3][lo..lo + len]);
        for ((((o, &a), &b), &c), &d) in out.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            *o += (a.to_f32() * w0 + b.to_f32() * w1) + (c.to_f32() * w2 + d.to_f32() * w3);
        }
    }
    for (row, &w) in rows.remainder().iter().zip(weights.remainder()) {
        let w = w * coef.inv_sqrt_divisor;
        for (o, &x) in out.iter_mut().zip(&row[lo..lo + len]) {
            *o += x.to_f32() * w;
        }
    }
    for (((o, &m), &s), &z) in out
        .iter_mut()
        .zip(mean.iter())
        .zip(sq_mean.iter())
        .zip(z1.iter())
    {
        let var = (s - m * m).max(coef.var_clamp);
        *o = m + coef.sqrt_scale * (var.sqrt() * z + *o);
    }
}

/// Draws one SWAG sample for a slice of the flat vector (one parameter) straight into `out`:
/// `θ = mean + sqrt(scale)·( sqrt(max(sq_mean − mean², clamp))·z1 + Dᵀz2 / sqrt(divisor) )`.
///
/// `dev_rows` are the held deviation rows of this parameter, in the order matching `z2`
/// (oldest first); pass an empty slice for a diagonal-only sample. `z1` is drawn block by
/// block from [`NoiseSource`] (see [`super::noise`] for the reproducibility guarantee).
pub fn sample<E: DeviationElem>(
    out: &mut [f32],
    mean: &[f32],
    sq_mean: &[f32],
    dev_rows: &[&[E]],
    z2: &[f32],
    coef: SampleCoefficients,
    noise: NoiseSource,
) {
    let n_blocks = out.len().div_ceil(NOISE_BLOCK);
    if out.len() < PARALLEL_MIN {
        let mut z1 = vec![0f32; NOISE_BLOCK.min(out.len())];
        for (b, o) in out.chunks_mut(NOISE_BLOCK).enumerate() {
            let lo = b * NOISE_BLOCK;
            let hi = lo + o.len();
            sample_block(
                o,
                &mean[lo..hi],
                &sq_mean[lo..hi],
                dev_rows,
                z2,
                coef,
                &mut z1,
                noise,
                b,
            );
        }
        return;
    }
    debug_assert_eq!(n_blocks, out.par_chunks_mut(NOISE_BLOCK).len());
    out.par_chunks_mut(NOISE_BLOCK)
        .zip(mean.par_chunks(NOISE_BLOCK))
        .zip(sq_mean.par_chunks(NOISE_BLOCK))
        .enumerate()
        .for_each_init(
            || vec![0f32; NOISE_BLOCK],
            |z1, (b, ((o, m), s))| sample_block(o, m, s, dev_rows, z2, coef, z1, noise, b),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_matches_running_mean_formula() {
        let theta = [1.0f32, -2.0, 3.0];
        let mut mean = [0.5f32, 0.5, 0.5];
        let mut sq = [1.0f32, 1.0, 1.0];
        let mut dev = [0f32; 3];
        collect(&mut mean, &mut sq, &theta, &mut dev, 1);
        assert_eq!(mean, [0.75, -0.75, 1.75]);
        assert_eq!(sq, [1.0, 2.5, 5.0]);
        assert_eq!(dev, [0.25, -1.25, 1.25]);
    }

    #[test]
    fn non_finite_is_located() {
        let mut xs = vec![1.0f32; 10_000];
        assert_eq!(first_non_finite(&xs), None);
        xs[7777] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&xs), Some(7777));
        xs[5] = f32::NAN;
        assert_eq!(first_non_finite(&xs), Some(5));
    }
}
