//! Reproducible standard-normal noise in independent streams.
//!
//! candle's CPU generator cannot be seeded, so SWAG draws its noise on the host. To draw in
//! parallel and still be reproducible, the flat vector is cut into fixed blocks of
//! [`NOISE_BLOCK`] elements *per parameter*, and block `b` of parameter `p` draws from its own
//! generator seeded from `(seed, p, b)`. The low-rank coefficients `z2` come from one more stream.
//!
//! **Guarantee.** For a given seed, layout and crate version, the noise (hence the sample) is
//! bit-identical whatever the number of threads, on every platform where `rand`'s `SmallRng` is
//! the same algorithm (Xoshiro256++ on 64-bit targets). On CUDA and Metal the same host noise is
//! uploaded, so the same seed gives the same `z1`, `z2`; the device arithmetic may then differ
//! from the CPU result in the last bits.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::layout::ParamLayout;

/// Number of consecutive elements of one parameter drawn from one generator stream.
pub const NOISE_BLOCK: usize = 1 << 14;

/// Stream identifier reserved for the low-rank coefficients `z2`.
const Z2_STREAM: u64 = u64::MAX;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of block `block` of parameter `param` for a base `seed`.
pub(crate) fn stream(seed: u64, param: u64, block: u64) -> SmallRng {
    let key =
        splitmix64(seed ^ splitmix64(param.wrapping_mul(0x1000_0000_01B3) ^ splitmix64(block)));
    SmallRng::seed_from_u64(key)
}

/// Fills `out` with standard normals from one stream.
pub(crate) fn fill_normals(rng: &mut SmallRng, out: &mut [f32]) {
    for v in out.iter_mut() {
        *v = rng.sample::<f32, _>(StandardNormal);
    }
}

/// The low-rank coefficients `z2` (`rows` standard normals) for `seed`.
pub fn z2_for_seed(seed: u64, rows: usize) -> Vec<f32> {
    let mut rng = stream(seed, Z2_STREAM, 0);
    let mut z2 = vec![0f32; rows];
    fill_normals(&mut rng, &mut z2);
    z2
}

/// The diagonal noise `z1` (`d` standard normals, flat layout order) for `seed`: exactly the
/// values the fused sampler draws for the same seed.
pub fn z1_for_seed(seed: u64, layout: &ParamLayout) -> Vec<f32> {
    let mut z1 = vec![0f32; layout.numel()];
    for (p, e) in layout.entries().iter().enumerate() {
        let part = &mut z1[e.offset..e.offset + e.numel()];
        for (b, block) in part.chunks_mut(NOISE_BLOCK).enumerate() {
            fill_normals(&mut stream(seed, p as u64, b as u64), block);
        }
    }
    z1
}

/// Draws a fresh base seed from a user's generator: one `u64`.
pub fn seed_from(rng: &mut impl Rng) -> u64 {
    rng.random::<u64>()
}
