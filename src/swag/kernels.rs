//! Fused CPU kernels over plain slices of candle's storage.
//!
//! Each kernel makes one pass over the memory it must touch: `collect` reads theta, updates the
//! two moments in place and writes the new deviation column; `sample` reads the moments and the
//! held deviation rows, draws its own noise (keyed by coordinate), and writes theta. No temporary of
//! size `d` is allocated. Work is split over rayon's pool in blocks of [`NOISE_BLOCK`] elements
//! when a parameter is large enough for threads to pay off.
//!
//! The candle glue (getting `&mut [f32]` out of a `Tensor`) lives in `posterior.rs` and
//! `sample.rs`; these functions only see slices, so they are tested directly.

use half::{bf16, f16};
use rayon::prelude::*;

use super::normals::{fill_normals, NOISE_BLOCK, Z1_STREAM};

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

/// The moments of one coordinate, as the collection kernels keep them (see
/// [`super::posterior`] for why these three numbers).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments {
    /// The running mean, rounded to f32 (what `mean` returns).
    pub mean: f32,
    /// The rounding error of `mean`: the mean is `mean + mean_comp` to about 2⁻⁴⁸ relative.
    pub mean_comp: f32,
    /// Welford's centred second moment `M2 = Σ (θ − mean)²` over the snapshots.
    pub m2: f32,
}

/// One compensated Welford step for one coordinate, `inv` = `1/(n+1)` rounded to f32 with `n`
/// snapshots already collected. Returns `θ − mean` with the *updated* mean (the deviation
/// column, as the reference implementation takes it).
///
/// The mean is carried as an unevaluated f32 sum `hi + lo` (TwoSum, then Fast2Sum to
/// renormalise), so `θ − mean` is formed against the mean to about 2⁻⁴⁸ relative, and the
/// variance is limited by f32 rounding of the deviations themselves, not by `|mean|`: this is
/// the precision the f32 mean has, whatever `|mean| / std`. Only f32 adds, subtracts and
/// multiplies are used, in a fixed order, so the device tensor-op path
/// ([`super::posterior`]) reproduces it operation for operation (no f64 needed: Metal has none).
#[inline(always)]
pub fn welford_step(m: &mut Moments, t: f32, inv: f32, count: f32) -> f32 {
    let (hi, lo) = (m.mean, m.mean_comp);
    let delta = (t - hi) - lo;
    let step = delta * inv;
    // What `step = delta · fl(1/count)` lost (the rounding of the product and of 1/count):
    // r = delta − step·count, with step·count exact by Dekker's product, then r/count.
    let (p, p_err) = two_product(step, count);
    let step_lo = ((delta - p) - p_err) * inv;
    // TwoSum: s + e = hi + step exactly.
    let s = hi + step;
    let bp = s - hi;
    let e = (hi - (s - bp)) + (step - bp);
    // Fold the old compensation and the step's own error in, and renormalise (|l| << |s|, so
    // Fast2Sum is exact): `h` is then the f32 nearest the compensated mean.
    let l = lo + (e + step_lo);
    let h = s + l;
    let l = l - (h - s);
    m.mean = h;
    m.mean_comp = l;
    let delta2 = (t - h) - l;
    m.m2 += delta * delta2;
    delta2
}

/// Veltkamp's split of an f32 into a high and a low half (12 significant bits each), so that the
/// products of halves are exact in f32.
#[inline(always)]
pub(crate) fn split(a: f32) -> (f32, f32) {
    let c = SPLITTER * a;
    let high = c - (c - a);
    (high, a - high)
}

/// Veltkamp's splitting constant for f32: 2¹² + 1.
pub(crate) const SPLITTER: f32 = 4097.0;

/// Dekker's product: `p + err = a · b` exactly (no FMA, so the tensor-op path reproduces it).
#[inline(always)]
fn two_product(a: f32, b: f32) -> (f32, f32) {
    let p = a * b;
    let (ah, al) = split(a);
    let (bh, bl) = split(b);
    let err = (((ah * bh - p) + ah * bl) + al * bh) + al * bl;
    (p, err)
}

/// The diagonal variance of one coordinate: `max(M2 · (1/n), clamp)` in f32, `inv_n` = `1/n`
/// rounded to f32. The one formula the sampler, [`super::posterior::SwagPosterior::variance`]
/// and `log_prob` share (the tensor-op paths compute the same two f32 operations).
#[inline(always)]
pub fn diag_variance(m2: f32, inv_n: f32, clamp: f32) -> f32 {
    (m2 * inv_n).max(clamp)
}

/// `1/k` rounded to f32 (0 for k = 0): the factor of the Welford step and of the variance.
pub fn inv_count(k: usize) -> f32 {
    if k == 0 {
        0.0
    } else {
        (1.0 / k as f64) as f32
    }
}

/// One SWAG collection step over a slice of the flat vector, `n` snapshots already collected:
/// [`welford_step`] per coordinate on `(mean, comp, m2)`, and `dev ← θ − mean` (the *updated*
/// mean, as the reference implementation does).
pub fn collect<E: DeviationElem>(
    mean: &mut [f32],
    comp: &mut [f32],
    m2: &mut [f32],
    theta: &[f32],
    dev: &mut [E],
    n: usize,
) {
    debug_assert!(mean.len() == theta.len() && m2.len() == theta.len());
    debug_assert!(comp.len() == theta.len() && dev.len() == theta.len());
    let inv = inv_count(n + 1);
    let count = (n + 1) as f32;
    let serial =
        |mean: &mut [f32], comp: &mut [f32], m2: &mut [f32], theta: &[f32], dev: &mut [E]| {
            for ((((m, c), s), &t), dv) in mean
                .iter_mut()
                .zip(comp.iter_mut())
                .zip(m2.iter_mut())
                .zip(theta.iter())
                .zip(dev.iter_mut())
            {
                let mut st = Moments {
                    mean: *m,
                    mean_comp: *c,
                    m2: *s,
                };
                *dv = E::from_f32(welford_step(&mut st, t, inv, count));
                *m = st.mean;
                *c = st.mean_comp;
                *s = st.m2;
            }
        };
    if theta.len() < PARALLEL_MIN {
        serial(mean, comp, m2, theta, dev);
        return;
    }
    mean.par_chunks_mut(NOISE_BLOCK)
        .zip(comp.par_chunks_mut(NOISE_BLOCK))
        .zip(m2.par_chunks_mut(NOISE_BLOCK))
        .zip(theta.par_chunks(NOISE_BLOCK))
        .zip(dev.par_chunks_mut(NOISE_BLOCK))
        .for_each(|((((m, c), s), t), d)| serial(m, c, s, t, d));
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
    /// `1/n` rounded to f32, n = snapshots collected ([`inv_count`]).
    pub inv_n: f32,
}

/// Where the sampling kernel draws `z1`: a seed, the parameter's index in the whole model's
/// layout and the coordinate (within the parameter) the slice starts at (see [`super::normals`]).
#[derive(Debug, Clone, Copy)]
pub struct NoiseSource {
    /// Base seed of this sample.
    pub seed: u64,
    /// Index of the parameter in the whole model's layout (a shard adds its first index).
    pub param: u32,
    /// Coordinate, within the parameter, of the slice's first element.
    pub first: u64,
}

/// What one parameter's sample reads: its slice of the moments, its held deviation rows (in
/// the order matching `z2`, oldest first; empty for a diagonal-only sample), the low-rank
/// weights `z2`, the coefficients and where `z1` comes from.
#[derive(Clone, Copy)]
pub struct SampleSource<'a, E> {
    /// The parameter's slice of the mean.
    pub mean: &'a [f32],
    /// The parameter's slice of `M2`.
    pub m2: &'a [f32],
    /// The parameter's slice of each held deviation row.
    pub dev_rows: &'a [&'a [E]],
    /// Low-rank noise, one number per held row.
    pub z2: &'a [f32],
    /// Scale, divisor and clamp.
    pub coef: SampleCoefficients,
    /// Seed and parameter index of `z1`.
    pub noise: NoiseSource,
}

/// Block `block` of a sample (entries `block·NOISE_BLOCK ..` of the parameter) into `out`.
fn sample_block<E: DeviationElem>(
    out: &mut [f32],
    src: &SampleSource<'_, E>,
    z1: &mut [f32],
    block: usize,
) {
    let len = out.len();
    let lo = block * NOISE_BLOCK;
    let (coef, noise) = (src.coef, src.noise);
    let z1 = &mut z1[..len];
    fill_normals(
        noise.seed,
        Z1_STREAM,
        noise.param,
        noise.first + lo as u64,
        z1,
    );
    // Low-rank part, accumulated row by row into `out` while the block sits in cache.
    // Rows are taken four at a time so `out` is swept K/4 times instead of K.
    out.fill(0.0);
    let mut rows = src.dev_rows.chunks_exact(4);
    let mut weights = src.z2.chunks_exact(4);
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
        .zip(&src.mean[lo..lo + len])
        .zip(&src.m2[lo..lo + len])
        .zip(z1.iter())
    {
        let var = diag_variance(s, coef.inv_n, coef.var_clamp);
        *o = m + coef.sqrt_scale * (var.sqrt() * z + *o);
    }
}

/// Draws one SWAG sample for a slice of the flat vector (one parameter) straight into `out`:
/// `θ = mean + sqrt(scale)·( sqrt(diag_variance(m2))·z1 + Dᵀz2 / sqrt(divisor) )`.
///
/// `z1` is drawn from the [`NoiseSource`], keyed by coordinate (see [`super::normals`]), so the
/// result does not depend on the number of threads nor on how the vector is cut.
pub fn sample<E: DeviationElem>(out: &mut [f32], src: SampleSource<'_, E>) {
    if out.len() < PARALLEL_MIN {
        let mut z1 = vec![0f32; NOISE_BLOCK.min(out.len())];
        for (b, o) in out.chunks_mut(NOISE_BLOCK).enumerate() {
            sample_block(o, &src, &mut z1, b);
        }
        return;
    }
    out.par_chunks_mut(NOISE_BLOCK).enumerate().for_each_init(
        || vec![0f32; NOISE_BLOCK],
        |z1, (b, o)| sample_block(o, &src, z1, b),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_matches_hand_computed_welford() -> anyhow::Result<()> {
        // Two snapshots 1 and 3 (then -2 and 4, 3 and 5): mean 2, M2 = 2, deviation 3 − 2 = 1.
        let mut mean = [0f32; 3];
        let mut comp = [0f32; 3];
        let mut m2 = [0f32; 3];
        let mut dev = [0f32; 3];
        collect(
            &mut mean,
            &mut comp,
            &mut m2,
            &[1.0, -2.0, 3.0],
            &mut dev,
            0,
        );
        assert_eq!((mean, m2, dev), ([1.0, -2.0, 3.0], [0.0; 3], [0.0; 3]));
        collect(&mut mean, &mut comp, &mut m2, &[3.0, 4.0, 5.0], &mut dev, 1);
        assert_eq!(mean, [2.0, 1.0, 4.0]);
        assert_eq!(comp, [0.0; 3]);
        assert_eq!(m2, [2.0, 18.0, 2.0]);
        assert_eq!(dev, [1.0, 3.0, 1.0]);
        Ok(())
    }

    #[test]
    fn compensated_mean_keeps_what_f32_rounds_away() -> anyhow::Result<()> {
        // Mean of 1 and 1 + 2⁻²³ is 1 + 2⁻²⁴, not representable in f32: the compensation
        // holds the 2⁻²⁴, and M2 = 2·(2⁻²⁴)² exactly.
        let eps = f32::EPSILON; // 2⁻²³
        let mut st = Moments::default();
        welford_step(&mut st, 1.0, inv_count(1), 1.0);
        let dev = welford_step(&mut st, 1.0 + eps, inv_count(2), 2.0);
        assert_eq!(st.mean as f64 + st.mean_comp as f64, 1.0 + eps as f64 / 2.0);
        assert_eq!(dev as f64, eps as f64 / 2.0);
        assert_eq!(st.m2 as f64, 2.0 * (eps as f64 / 2.0).powi(2));
        Ok(())
    }

    #[test]
    fn non_finite_is_located() -> anyhow::Result<()> {
        let mut xs = vec![1.0f32; 10_000];
        assert_eq!(first_non_finite(&xs), None);
        xs[7777] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&xs), Some(7777));
        xs[5] = f32::NAN;
        assert_eq!(first_non_finite(&xs), Some(5));
        Ok(())
    }
}
