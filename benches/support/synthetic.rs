//! Synthetic classifier outputs for the metrics benchmark and speed example: each row puts a
//! random extra mass on one class (like a trained classifier) and is normalised to sum to 1;
//! the label is that class 90% of the time. Generated in parallel from per-chunk seeds, so the
//! data is the same for a given seed whatever the thread count.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Row-major `[n, c]` probabilities (f32) and `n` labels.
pub fn synthetic_predictions(n: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    const CHUNK: usize = 8192;
    let mut probs = vec![0.0f32; n * c];
    let mut labels = vec![0u32; n];
    probs
        .par_chunks_mut(CHUNK * c)
        .zip(labels.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(chunk, (p, y))| {
            let mut rng = StdRng::seed_from_u64(seed ^ (chunk as u64).wrapping_mul(0x9E37_79B9));
            for (row, label) in p.chunks_exact_mut(c).zip(y.iter_mut()) {
                let peak = rng.random_range(0..c);
                let mut sum = 0.0f32;
                for v in row.iter_mut() {
                    *v = rng.random::<f32>();
                    sum += *v;
                }
                let extra = rng.random::<f32>() * 4.0 * c as f32;
                row[peak] += extra;
                sum += extra;
                for v in row.iter_mut() {
                    *v /= sum;
                }
                *label = if rng.random::<f32>() < 0.9 {
                    peak as u32
                } else {
                    rng.random_range(0..c as u32)
                };
            }
        });
    (probs, labels)
}
