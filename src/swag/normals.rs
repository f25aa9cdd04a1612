//! The sampler's standard-normal draws: one counter-based stream, the same bits on every device.
//!
//! # Generator
//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
//! generator of Random123, cuRAND and JAX's GPU backends), checked against Random123's
//! published known-answer vectors. It maps a 128-bit counter and a 64-bit key to four 32-bit
//! words with integer operations only, so it gives the same bits on any CPU and in a CUDA kernel.
//!
//! # Keying
//! Coordinate `i` (0-based, within its parameter) of parameter `p` (its index in the *whole*
//! model's layout) under `seed` takes word `i mod 4` of
//! `philox(counter = [g mod 2³², g div 2³², p, stream], key = [seed mod 2³², seed div 2³²])`,
//! `g = i div 4`, with `stream` = [`Z1_STREAM`]. The low-rank coefficients `z2` are the
//! coordinates `0..rows` of parameter 0 in stream `Z2_STREAM`. A draw therefore depends on nothing
//! but (seed, stream, parameter, coordinate): not on threads, blocks, chunks, devices or shards,
//! so a posterior sampled shard by shard gives the whole posterior's bits.
//!
//! # Normal transform, designed for bit-identity
//! Transcendental functions (`log`, `exp`, `sin`) are not correctly rounded in libm nor in
//! CUDA's math library, and differ between them. The transform uses only operations IEEE 754
//! rounds correctly (f32 `+ − × ÷ √`, integer-to-float conversion, bit manipulation), each with
//! round-to-nearest-even, in a fixed order and with no fused multiply-add; the CUDA kernels
//! spell each one with its `__f*_rn` intrinsic, which the compiler never contracts, and are
//! compiled with `--fmad=false -ftz=false`. So the CPU and a GPU produce the same f32 for the
//! same 32-bit word.
//!
//! It is the inverse normal CDF `z = √2 · erfinv(2p − 1)`, with Giles' single-precision
//! approximation of erfinv ("Approximating the erfinv function", GPU Computing Gems, 2011;
//! relative accuracy about 4e-7), chosen because one branch covers 99.66% of draws (GPU warps
//! rarely diverge) and it needs one division, in the logarithm:
//! - the top bit of the 32-bit word `u` is the sign; the low 31 bits `m` place the draw in the
//!   lower half, `p = (m + ½)·2⁻³²` ∈ `[2⁻³³, ½)`, so the output is `±Φ⁻¹(p)` (exactly
//!   symmetric); `x = 2p − 1` is formed from `2³¹ − 1 − m`, so it keeps full resolution near 0,
//!   and `1 − x² = (1 − x)(2p)` with `2p` from `m`, so the tail keeps it too;
//! - `w = −ln(1 − x²)` by `portable_ln` (exponent from the bits, `atanh` series on the
//!   mantissa), which uses only the operations above;
//! - `w < 5`: a degree-8 polynomial in `w − 2.5`; otherwise one in `√w − 3`; times `x·√2`.
//!
//! Accuracy against the exact `Φ⁻¹` (measured over the whole range of words, unit test
//! `transform_matches_the_f64_inverse_cdf`): relative error ≤ 3.2e-7 for `p ≥ 1e-6`
//! (`|z| ≤ 4.75`, all but 2·10⁻⁶ of the draws), growing beyond Giles' single-precision domain to
//! 6e-5 at `p ~ 1e-8` and 4e-4 at the last words (`|z| ≈ 6.3`, 2·10⁻⁹ of the draws).
//!
//! Consequences: draws are discretised (31 bits of the word), and `|z| ≤ Φ⁻¹(1 − 2⁻³³) ≈ 6.23`;
//! the mass cut off beyond is 2⁻³² per draw. A normality test over 10⁷ draws is in this module's
//! tests and in `tests/noise.rs`.

use rand::Rng;

use crate::layout::ParamLayout;

/// Number of consecutive coordinates processed as one unit of work by the CPU kernels (rayon
/// tasks, chunked reads). The noise does not depend on it (see the [module docs](self)).
pub const NOISE_BLOCK: usize = 1 << 14;

/// The stream of the diagonal noise `z1`.
pub const Z1_STREAM: u32 = 0;
/// The stream of the low-rank coefficients `z2`.
pub(crate) const Z2_STREAM: u32 = 1;

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: four random words for a 128-bit `counter` and a 64-bit `key`
/// (checked against Random123's known-answer vectors). Public so that other counter-based
/// draws (the transformers crate's dropout masks) share this one generator.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let (hi0, lo0) = mulhilo(PHILOX_M0, c[0]);
        let (hi1, lo1) = mulhilo(PHILOX_M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The four words of group `g` (coordinates `4g..4g+4`) of parameter `param` in `stream`.
#[inline(always)]
fn group_words(seed: u64, stream: u32, param: u32, g: u64) -> [u32; 4] {
    philox4x32_10(
        [g as u32, (g >> 32) as u32, param, stream],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// `ln x` for a positive normal f32, with correctly rounded f32 operations only (module docs):
/// `x = m·2ᵉ` with `m ∈ [√½, √2)`, `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, by its series to
/// `s⁹` (`|s| ≤ 0.172`, truncation below 2⁻²⁶ relative), plus `e·ln 2` split in two parts.
/// About 1 ulp of accuracy; its point is that every device computes the same bits.
#[inline(always)]
pub(crate) fn portable_ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // m > √2: halve it (exact) and count one more power of two; written as a select.
    let big = m > std::f32::consts::SQRT_2;
    let e = ((bits >> 23) & 0xff) as i32 - 127 + i32::from(big);
    let m = if big { m * 0.5 } else { m };
    let f = m - 1.0; // exact (Sterbenz)
    let s = f / (2.0 + f);
    let s2 = s * s;
    // 2s·(1 + s²/3 + s⁴/5 + s⁶/7 + s⁸/9), Horner in s².
    let poly = (((s2 * LN_C9 + LN_C7) * s2 + LN_C5) * s2 + LN_C3) * s2;
    let ln_m = (s + s) + (s + s) * poly;
    let ef = e as f32;
    ef * LN2_HI + (ef * LN2_LO + ln_m)
}

// 1/3, 1/5, 1/7, 1/9 rounded to f32.
const LN_C3: f32 = f32::from_bits(0x3eaa_aaab);
const LN_C5: f32 = f32::from_bits(0x3e4c_cccd);
const LN_C7: f32 = f32::from_bits(0x3e12_4925);
const LN_C9: f32 = f32::from_bits(0x3de3_8e39);
/// ln 2 = LN2_HI + LN2_LO (0.693359375 − 2.1219444e-4), LN2_HI with 9 significant bits so
/// `e·LN2_HI` is exact.
const LN2_HI: f32 = f32::from_bits(0x3f31_8000);
const LN2_LO: f32 = f32::from_bits(0xb95e_8083);

// Giles' erfinv (single precision), given by their f32 bit patterns: the CUDA kernels
// (`kernels.cu`) use the same patterns, and a unit test compares the two files.
// Centre polynomial in w − 2.5, highest degree first: 2.81022636e-8, 3.43273939e-7,
// −3.5233877e-6, −4.39150654e-6, 2.1858087e-4, −1.25372503e-3, −4.17768164e-3, 0.246640727,
// 1.50140941.
const P: [f32; 9] = [
    f32::from_bits(0x32f1_6588),
    f32::from_bits(0x34b8_4b36),
    f32::from_bits(0xb66c_7357),
    f32::from_bits(0xb693_5ac1),
    f32::from_bits(0x3965_32db),
    f32::from_bits(0xbaa4_5408),
    f32::from_bits(0xbb88_e4ef),
    f32::from_bits(0x3e7c_8f63),
    f32::from_bits(0x3fc0_2e2f),
];
// Tail polynomial in √w − 3: −2.00214257e-4, 1.00950558e-4, 1.34934322e-3, −3.67342844e-3,
// 5.73950773e-3, −7.6224613e-3, 9.43887047e-3, 1.00167406, 2.83297682.
const Q: [f32; 9] = [
    f32::from_bits(0xb951_f09b),
    f32::from_bits(0x38d3_b56b),
    f32::from_bits(0x3ab0_dc72),
    f32::from_bits(0xbb70_bde7),
    f32::from_bits(0x3bbc_127b),
    f32::from_bits(0xbbf9_c5d7),
    f32::from_bits(0x3c1a_a57e),
    f32::from_bits(0x3f80_36db),
    f32::from_bits(0x4035_4f7e),
];

/// Horner's rule, `c + acc·w` at each step (the order the CUDA kernels follow).
#[inline(always)]
fn horner(c: &[f32; 9], w: f32) -> f32 {
    let mut acc = c[0];
    for &k in &c[1..] {
        acc = k + acc * w;
    }
    acc
}

/// The shared first half of the transform: `(x, w)` for the 31 low bits of a word, with
/// `x = 2p − 1 ≤ 0` and `w = −ln(1 − x²)` (module docs).
#[inline(always)]
fn erfinv_arguments(u: u32) -> (f32, f32) {
    let m = u & 0x7fff_ffff;
    let n = 0x7fff_ffff - m;
    // x = 2p − 1 = −(2³¹ − 1 − m + ½)·2⁻³¹, from n so that it is exact near 0.
    let x = -((n as f32) * TWO_POW_M31 + TWO_POW_M32);
    // 1 − x² = (1 − x)·(1 + x), 1 + x = 2p = (m + ½)·2⁻³¹ from m so that it is exact near 0.
    let two_p = (m as f32) * TWO_POW_M31 + TWO_POW_M32;
    let w = -portable_ln((1.0 - x) * two_p);
    (x, w)
}

/// One standard normal from a 32-bit word (module docs). The CUDA kernels implement this same
/// sequence of operations; change both together.
#[inline(always)]
pub(crate) fn normal_from_bits(u: u32) -> f32 {
    let (x, w) = erfinv_arguments(u);
    let poly = if w < 5.0 {
        horner(&P, w - 2.5)
    } else {
        horner(&Q, w.sqrt() - 3.0)
    };
    signed_normal(u, x, poly)
}

/// The shared last step: `±erfinv(x)·√2` from the polynomial, with the word's top bit as sign.
#[inline(always)]
fn signed_normal(u: u32, x: f32, poly: f32) -> f32 {
    let z = (poly * x) * std::f32::consts::SQRT_2;
    f32::from_bits(z.to_bits() ^ (u & 0x8000_0000))
}

const TWO_POW_M31: f32 = f32::from_bits(0x3000_0000);
const TWO_POW_M32: f32 = f32::from_bits(0x2f80_0000);

/// Fills `out` with the normals of coordinates `first..first + out.len()` of parameter `param`
/// in `stream` (module docs).
///
/// Whole groups are drawn `LANES` words at a time and transformed by `normals_from_words`,
/// a branch-free form of `normal_from_bits` that the compiler vectorises; both perform the
/// same operations on each word, so the values are the same.
pub fn fill_normals(seed: u64, stream: u32, param: u32, first: u64, out: &mut [f32]) {
    let (mut i, mut k) = (first, 0);
    let n = out.len();
    while k < n {
        let lane = (i % 4) as usize;
        if lane == 0 && n - k >= LANES {
            let mut words = [0u32; LANES];
            for (g, w) in words.chunks_exact_mut(4).enumerate() {
                w.copy_from_slice(&group_words(seed, stream, param, i / 4 + g as u64));
            }
            let block: &mut [f32; LANES] = (&mut out[k..k + LANES])
                .try_into()
                .expect("a slice of LANES elements");
            normals_from_words(&words, block);
            k += LANES;
            i += LANES as u64;
            continue;
        }
        let words = group_words(seed, stream, param, i / 4);
        let take = (4 - lane).min(n - k);
        for (o, &w) in out[k..k + take].iter_mut().zip(&words[lane..]) {
            *o = normal_from_bits(w);
        }
        k += take;
        i += take as u64;
    }
}

/// Words transformed together by [`normals_from_words`].
pub(crate) const LANES: usize = 64;

/// [`normal_from_bits`] on [`LANES`] words, computing both branches for every word and
/// selecting, so that the loop has no branch and vectorises. Each word goes through exactly the
/// operations of [`normal_from_bits`] (the unused branch is computed and dropped). On x86-64
/// CPUs with AVX2 the same code runs 8 lanes wide (no FMA is enabled, so the bits are the same).
pub(crate) fn normals_from_words(words: &[u32; LANES], out: &mut [f32; LANES]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { normals_from_words_avx2(words, out) };
        return;
    }
    normals_from_words_generic(words, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normals_from_words_avx2(words: &[u32; LANES], out: &mut [f32; LANES]) {
    normals_from_words_generic(words, out);
}

#[inline(always)]
fn normals_from_words_generic(words: &[u32; LANES], out: &mut [f32; LANES]) {
    for (o, &u) in out.iter_mut().zip(words) {
        let (x, w) = erfinv_arguments(u);
        let centre = horner(&P, w - 2.5);
        let tail = horner(&Q, w.sqrt() - 3.0);
        *o = signed_normal(u, x, if w < 5.0 { centre } else { tail });
    }
}

/// The low-rank coefficients `z2` (`rows` standard normals) for `seed`.
pub(crate) fn z2_for_seed(seed: u64, rows: usize) -> Vec<f32> {
    let mut z2 = vec![0f32; rows];
    fill_normals(seed, Z2_STREAM, 0, 0, &mut z2);
    z2
}

/// The diagonal noise `z1` (`d` standard normals, flat layout order) for `seed`: exactly the
/// values the samplers draw for the same seed. Parameter `p` of `layout` draws as parameter
/// `param_base + p` of the whole model (a shard's first index; 0 otherwise).
pub fn z1_for_seed(seed: u64, layout: &ParamLayout, param_base: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut z1 = vec![0f32; layout.numel()];
    for (p, e) in layout.entries().iter().enumerate() {
        let part = &mut z1[e.offset..e.offset + e.numel()];
        let param = (param_base + p) as u32;
        part.par_chunks_mut(NOISE_BLOCK)
            .enumerate()
            .for_each(|(b, block)| {
                fill_normals(seed, Z1_STREAM, param, (b * NOISE_BLOCK) as u64, block)
            });
    }
    z1
}

/// Draws a fresh base seed from a user's generator: one `u64`.
pub(crate) fn seed_from(rng: &mut impl Rng) -> u64 {
    rng.random::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's kat_vectors for philox4x32 with 10 rounds (counter, key, output).
    #[test]
    fn philox_matches_random123_known_answers() -> anyhow::Result<()> {
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in cases {
            assert_eq!(
                philox4x32_10(ctr, key),
                want,
                "counter {ctr:x?} key {key:x?}"
            );
        }
        Ok(())
    }

    /// The CUDA kernels spell the same constants as bit patterns; a drift in either file
    /// would break CPU/GPU bit-identity where no GPU is at hand to notice.
    #[test]
    fn cuda_source_uses_the_same_constants() -> anyhow::Result<()> {
        let cu = include_str!("kernels.cu");
        let define = |name: &str| -> u32 {
            let key = format!("#define {name} __uint_as_float(0x");
            let at = cu
                .find(&key)
                .unwrap_or_else(|| panic!("{name} not in kernels.cu"))
                + key.len();
            u32::from_str_radix(&cu[at..at + 8], 16).expect("eight hex digits")
        };
        for (i, (p, q)) in P.iter().zip(&Q).enumerate() {
            assert_eq!(define(&format!("P{i}")), p.to_bits(), "P{i}");
            assert_eq!(define(&format!("Q{i}")), q.to_bits(), "Q{i}");
        }
        let named = [
            ("LN_C3", LN_C3),
            ("LN_C5", LN_C5),
            ("LN_C7", LN_C7),
            ("LN_C9", LN_C9),
            ("LN2_HI", LN2_HI),
            ("LN2_LO", LN2_LO),
            ("TWO_POW_M31", TWO_POW_M31),
            ("TWO_POW_M32", TWO_POW_M32),
            ("SQRT_2", std::f32::consts::SQRT_2),
        ];
        for (name, value) in named {
            assert_eq!(define(name), value.to_bits(), "{name}");
        }
        assert_eq!(1.0f32 / 3.0, LN_C3);
        assert_eq!(1.0f32 / 9.0, LN_C9);
        Ok(())
    }

    #[test]
    fn portable_ln_is_within_two_ulp_of_f64() -> anyhow::Result<()> {
        let mut x = 2f32.powi(-40);
        while x < 4.0 {
            let got = portable_ln(x) as f64;
            let want = (x as f64).ln();
            let ulp = (want.abs() as f32).max(f32::MIN_POSITIVE);
            let ulp = (f32::from_bits(ulp.to_bits() + 1) - ulp) as f64;
            assert!(
                (got - want).abs() <= 2.0 * ulp,
                "ln({x}) = {got}, f64 gives {want}"
            );
            x *= 1.000_37;
        }
        Ok(())
    }

    #[test]
    fn transform_matches_the_f64_inverse_cdf() -> anyhow::Result<()> {
        use statrs::distribution::{ContinuousCDF, Normal};
        let normal = Normal::standard();
        // Words across the whole range, both signs, both branches, the far tail and the extremes.
        let mut words: Vec<u32> = (0..200_000u32).map(|k| k.wrapping_mul(21_473)).collect();
        words.extend((0..20_000u32).flat_map(|k| [k * 37, 0x8000_0000 | (k * 4099)]));
        words.extend([0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX, 0x0999_9999]);
        for u in words {
            let m = u & 0x7fff_ffff;
            let p = (m as f64 + 0.5) / 4_294_967_296.0;
            let want = -normal.inverse_cdf(p) * if u >> 31 == 1 { 1.0 } else { -1.0 };
            let got = normal_from_bits(u) as f64;
            // The documented accuracy: 4e-7 relative while p ≥ 1e-6, 5e-4 beyond.
            let rel = if p >= 1e-6 { 4e-7 } else { 5e-4 };
            assert!(
                (got - want).abs() <= rel * want.abs() + 1e-12,
                "word {u:#x}: {got} against {want}"
            );
        }
        Ok(())
    }

    #[test]
    fn vectorised_transform_gives_the_scalar_bits() -> anyhow::Result<()> {
        let mut words = [0u32; LANES];
        for start in (0..u32::MAX - 4 * LANES as u32).step_by(9_973_777) {
            for (k, w) in words.iter_mut().enumerate() {
                *w = start.wrapping_add((k as u32).wrapping_mul(2_654_435_761));
            }
            words[0] = [0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX][start as usize % 5];
            let mut out = [0f32; LANES];
            normals_from_words(&words, &mut out);
            for (w, z) in words.iter().zip(out) {
                assert_eq!(z.to_bits(), normal_from_bits(*w).to_bits(), "word {w:#x}");
            }
        }
        Ok(())
    }

    #[test]
    fn draws_depend_only_on_their_key() -> anyhow::Result<()> {
        // Filling from an unaligned start, or one coordinate at a time, gives the same values.
        let mut whole = vec![0f32; 237];
        fill_normals(9, Z1_STREAM, 3, 5, &mut whole);
        for (k, &v) in whole.iter().enumerate() {
            let mut one = [0f32];
            fill_normals(9, Z1_STREAM, 3, 5 + k as u64, &mut one);
            assert_eq!(one[0].to_bits(), v.to_bits(), "coordinate {}", 5 + k);
        }
        let mut other = vec![0f32; 237];
        fill_normals(9, Z1_STREAM, 4, 5, &mut other);
        assert_ne!(whole, other);
        fill_normals(9, Z2_STREAM, 3, 5, &mut other);
        assert_ne!(whole, other);
        fill_normals(10, Z1_STREAM, 3, 5, &mut other);
        assert_ne!(whole, other);
        Ok(())
    }
}
