//! The sampler's normals are standard normal: 10⁷ draws, the way the sampler draws them (several
//! parameters, each keyed by coordinate), checked against N(0, 1).
//!
//! Thresholds, for n = 10⁷ independent draws:
//! - Kolmogorov–Smirnov: D ≤ 1.95/√n is the 0.1% critical value (asymptotic Kolmogorov
//!   distribution). The transform itself is within 2e-6 of Φ⁻¹ (unit test in `swag::normals`), which
//!   moves the CDF by < 1e-6, far below 1.95/√n ≈ 6.2e-4.
//! - Moments: the mean's standard error is 1/√n, the variance's √(2/n), the fourth moment's
//!   √(96/n) (Var z⁴ = E z⁸ − 9 = 96); each is allowed 5 standard errors (two-sided p ≈ 6e-7).
//! - Tail masses P(|z| > 3), P(|z| > 4) and the lag-1 correlation: 5 binomial / normal standard
//!   errors.
//!
//! The seed is fixed, so this test is deterministic; a correct generator passes each check
//! except with the small probabilities above.

use candle_swag::swag::normals::z1_for_seed;
use candle_swag::{ParamLayout, Result};
use statrs::distribution::{ContinuousCDF, Normal};

#[test]
fn ten_million_draws_are_standard_normal() -> Result<()> {
    let sizes = [4_000_000usize, 3, 2_999_997, 3_000_000];
    let layout = ParamLayout::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("p{i}"), vec![n]))
            .collect(),
    )?;
    let z = z1_for_seed(0x5eed, &layout, 0);
    let n = z.len() as f64;
    assert_eq!(z.len(), 10_000_000);

    let mean = z.iter().map(|&x| x as f64).sum::<f64>() / n;
    let moment = |k: i32| z.iter().map(|&x| (x as f64 - mean).powi(k)).sum::<f64>() / n;
    let (var, m4) = (moment(2), moment(4));
    assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
    assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
    assert!(
        (m4 - 3.0).abs() < 5.0 * (96.0 / n).sqrt(),
        "fourth moment {m4}"
    );

    for (c, p) in [(3.0f32, 2.699_796e-3f64), (4.0, 6.334_248e-5)] {
        let tail = z.iter().filter(|x| x.abs() > c).count() as f64 / n;
        assert!(
            (tail - p).abs() < 5.0 * (p * (1.0 - p) / n).sqrt(),
            "P(|z| > {c}) = {tail}, expected {p}"
        );
    }

    let lag1 = z.windows(2).map(|w| w[0] as f64 * w[1] as f64).sum::<f64>() / (n - 1.0);
    assert!(lag1.abs() < 5.0 / n.sqrt(), "lag-1 correlation {lag1}");

    let mut sorted = z;
    sorted.sort_unstable_by(|a, b| a.total_cmp(b));
    let normal = Normal::standard();
    let d = sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = normal.cdf(x as f64);
            (c - i as f64 / n).abs().max(((i + 1) as f64 / n - c).abs())
        })
        .fold(0.0, f64::max);
    assert!(d < 1.95 / n.sqrt(), "Kolmogorov-Smirnov statistic {d}");
    Ok(())
}
