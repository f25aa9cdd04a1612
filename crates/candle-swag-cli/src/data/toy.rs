//! A 1-D regression toy whose inputs have a gap, for showing epistemic uncertainty: a good
//! posterior is uncertain between the two clusters, where no data constrains the function.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use candle_swag::error::{Error, Result};

/// Lower cluster of inputs: x ∈ [−1, −0.3].
pub const LEFT: (f64, f64) = (-1.0, -0.3);
/// Upper cluster of inputs: x ∈ [0.3, 1].
pub const RIGHT: (f64, f64) = (0.3, 1.0);

/// The noise-free function of the toy: `f(x) = sin(2πx)`.
pub fn truth(x: f64) -> f64 {
    (2.0 * std::f64::consts::PI * x).sin()
}

/// Points of the gap toy: inputs and noisy targets.
#[derive(Debug, Clone, PartialEq)]
pub struct GapToy {
    /// Inputs, half drawn uniformly from [`LEFT`], half from [`RIGHT`] (the left cluster gets
    /// the extra point when `n` is odd), in draw order.
    pub x: Vec<f64>,
    /// Targets `truth(x) + ε`, ε ~ N(0, noise_std²).
    pub y: Vec<f64>,
}

/// Draws `n` points of the gap toy from a generator seeded with `seed` (reproducible).
pub fn gap_toy(n: usize, noise_std: f64, seed: u64) -> Result<GapToy> {
    if n < 2 {
        return Err(Error::invalid("n", "the gap toy needs at least 2 points"));
    }
    let noise = Normal::new(0.0, noise_std)
        .map_err(|e| Error::invalid("noise_std", format!("{noise_std}: {e}")))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n_left = n.div_ceil(2);
    let mut x = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let (lo, hi) = if i < n_left { LEFT } else { RIGHT };
        let xi = rng.random_range(lo..=hi);
        x.push(xi);
        y.push(truth(xi) + noise.sample(&mut rng));
    }
    Ok(GapToy { x, y })
}

/// True when `x` lies strictly inside the gap between the two clusters.
pub fn in_gap(x: f64) -> bool {
    x > LEFT.1 && x < RIGHT.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_avoid_the_gap_and_are_seeded() -> anyhow::Result<()> {
        let a = gap_toy(101, 0.1, 7)?;
        let b = gap_toy(101, 0.1, 7)?;
        assert_eq!(a, b);
        assert!(a
            .x
            .iter()
            .all(|&x| (-1.0..=-0.3).contains(&x) || (0.3..=1.0).contains(&x)));
        assert_eq!(a.x.iter().filter(|&&x| x < 0.0).count(), 51);
        assert_ne!(gap_toy(101, 0.1, 8)?, a);
        Ok(())
    }
}
