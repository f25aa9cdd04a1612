//! Isotonic regression against an independent brute force, histogram binning and the
//! Kuleshov et al. (2018) quantile recalibration, on hand examples and random inputs.

use anyhow::Result;
use candle_swag::metrics::{
    fit_isotonic_confidence, isotonic_regression, HistogramBinning, IsotonicFit,
    QuantileRecalibrator,
};
use candle_swag::Error;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// The closed form of the weighted isotonic regression, O(n³):
/// `f_i = max_{j ≤ i} min_{k ≥ i} (Σ_{j..=k} w y) / (Σ_{j..=k} w)`.
fn brute_force_isotonic(y: &[f64], w: &[f64]) -> Vec<f64> {
    let n = y.len();
    (0..n)
        .map(|i| {
            (0..=i)
                .map(|j| {
                    (i..n)
                        .map(|k| {
                            let sw: f64 = w[j..=k].iter().sum();
                            let swy: f64 = (j..=k).map(|t| w[t] * y[t]).sum();
                            swy / sw
                        })
                        .fold(f64::INFINITY, f64::min)
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

/// Pools adjacent violators one pair at a time, always the leftmost, restarting after each.
fn slow_adjacent_pooling(y: &[f64], w: &[f64]) -> Vec<f64> {
    let mut blocks: Vec<(f64, f64, usize)> = y.iter().zip(w).map(|(&y, &w)| (y, w, 1)).collect();
    loop {
        let v = (0..blocks.len().saturating_sub(1)).find(|&i| blocks[i].0 > blocks[i + 1].0);
        match v {
            Some(i) => {
                let (a, b) = (blocks[i], blocks[i + 1]);
                let sw = a.1 + b.1;
                blocks[i] = ((a.0 * a.1 + b.0 * b.1) / sw, sw, a.2 + b.2);
                blocks.remove(i + 1);
            }
            None => break,
        }
    }
    blocks
        .iter()
        .flat_map(|&(m, _, c)| std::iter::repeat_n(m, c))
        .collect()
}

#[test]
fn isotonic_hand_examples() -> Result<()> {
    // Already sorted: unchanged.
    assert_eq!(
        isotonic_regression(&[1.0, 2.0, 3.0], None)?,
        vec![1.0, 2.0, 3.0]
    );
    // One violation: 3, 1 pool to 2.
    assert_eq!(
        isotonic_regression(&[1.0, 3.0, 1.0, 4.0], None)?,
        vec![1.0, 2.0, 2.0, 4.0]
    );
    // A cascade: 4, 3, 2, 1 is all one block of mean 2.5.
    assert_eq!(
        isotonic_regression(&[4.0, 3.0, 2.0, 1.0], None)?,
        vec![2.5; 4]
    );
    // Weighted: (3, w = 3) and (1, w = 1) pool to (9 + 1)/4 = 2.5.
    assert_eq!(
        isotonic_regression(&[3.0, 1.0], Some(&[3.0, 1.0]))?,
        vec![2.5, 2.5]
    );
    // Bad input names what is wrong.
    let e = isotonic_regression(&[1.0, f64::NAN], None).unwrap_err();
    assert!(matches!(e, Error::BadData { row: 2, .. }), "{e}");
    let e = isotonic_regression(&[1.0, 2.0], Some(&[1.0, 0.0])).unwrap_err();
    assert!(e.to_string().contains("weight"), "{e}");
    assert!(isotonic_regression(&[1.0, 2.0], Some(&[1.0])).is_err());
    assert!(isotonic_regression(&[], None).is_err());
    Ok(())
}

proptest! {
    #[test]
    fn pav_matches_brute_force(
        pts in prop::collection::vec((-5i32..5, 1u8..5), 1..12)
    ) {
        // Small integers make ties and violations frequent.
        let y: Vec<f64> = pts.iter().map(|p| f64::from(p.0)).collect();
        let w: Vec<f64> = pts.iter().map(|p| f64::from(p.1)).collect();
        let fast = isotonic_regression(&y, Some(&w)).unwrap();
        let closed = brute_force_isotonic(&y, &w);
        let slow = slow_adjacent_pooling(&y, &w);
        for i in 0..y.len() {
            prop_assert!((fast[i] - closed[i]).abs() < 1e-9, "{:?} vs {:?}", fast, closed);
            prop_assert!((fast[i] - slow[i]).abs() < 1e-9, "{:?} vs {:?}", fast, slow);
        }
        for i in 1..y.len() {
            prop_assert!(fast[i - 1] <= fast[i]);
        }
    }

    #[test]
    fn fit_on_unsorted_x_matches_sorted_pooled_pav(
        pts in prop::collection::vec((0i32..6, -3i32..3), 1..15)
    ) {
        let x: Vec<f64> = pts.iter().map(|p| f64::from(p.0)).collect();
        let y: Vec<f64> = pts.iter().map(|p| f64::from(p.1)).collect();
        let f = IsotonicFit::fit(&x, &y, None).unwrap();
        // Independent: group by distinct x by hand, then the closed form with counts as weights.
        let mut xs: Vec<i32> = pts.iter().map(|p| p.0).collect();
        xs.sort_unstable();
        xs.dedup();
        let means: Vec<f64> = xs.iter().map(|&v| {
            let g: Vec<f64> = pts.iter().filter(|p| p.0 == v).map(|p| f64::from(p.1)).collect();
            g.iter().sum::<f64>() / g.len() as f64
        }).collect();
        let counts: Vec<f64> = xs.iter()
            .map(|&v| pts.iter().filter(|p| p.0 == v).count() as f64).collect();
        let expected = brute_force_isotonic(&means, &counts);
        let (kx, ky) = f.knots();
        prop_assert_eq!(kx.len(), xs.len());
        for (i, &v) in xs.iter().enumerate() {
            prop_assert_eq!(kx[i], f64::from(v));
            prop_assert!((ky[i] - expected[i]).abs() < 1e-9);
            prop_assert!((f.predict(f64::from(v)) - expected[i]).abs() < 1e-9);
        }
    }
}

#[test]
fn predict_and_inverse_interpolate_between_knots() -> Result<()> {
    // Knots (0, 0), (1, 0.5), (2, 0.5), (3, 1) from exact data.
    let f = IsotonicFit::fit(&[2.0, 0.0, 3.0, 1.0], &[0.5, 0.0, 1.0, 0.5], None)?;
    assert_eq!(f.predict(0.5), 0.25);
    assert_eq!(f.predict(1.5), 0.5);
    assert_eq!(f.predict(2.5), 0.75);
    assert_eq!(f.predict(-1.0), 0.0); // clipped
    assert_eq!(f.predict(9.0), 1.0);
    assert_eq!(f.inverse(0.25), 0.5);
    assert_eq!(f.inverse(0.5), 1.0); // first x reaching 0.5, not 2
    assert_eq!(f.inverse(0.75), 2.5);
    assert_eq!(f.inverse(-1.0), 0.0);
    assert_eq!(f.inverse(2.0), 3.0);
    Ok(())
}

#[test]
fn isotonic_confidence_and_histogram_binning_hand_case() -> Result<()> {
    // Confidences 0.6 (correct 1 of 2), 0.7 (0 of 1), 0.9 (2 of 2).
    let conf = [0.6, 0.6, 0.7, 0.9, 0.9];
    let ok = [true, false, false, true, true];
    // Isotonic: means 0.5, 0, 1 at x 0.6, 0.7, 0.9: 0.5 and 0 pool with weights 2, 1 to 1/3.
    let f = fit_isotonic_confidence(&conf, &ok)?;
    let (_, ky) = f.knots();
    assert!((ky[0] - 1.0 / 3.0).abs() < 1e-15 && (ky[1] - 1.0 / 3.0).abs() < 1e-15);
    assert_eq!(ky[2], 1.0);
    // Histogram binning with 5 bins (0.2 wide): 0.6 lands in (0.4, 0.6], 0.7 in (0.6, 0.8],
    // 0.9 in (0.8, 1]; the first two bins are empty and keep their midpoints.
    let h = HistogramBinning::fit(&conf, &ok, 5)?;
    assert_eq!(h.counts, vec![0, 0, 2, 1, 2]);
    assert!((h.values[0] - 0.1).abs() < 1e-15 && (h.values[1] - 0.3).abs() < 1e-15);
    assert_eq!(&h.values[2..], &[0.5, 0.0, 1.0]);
    assert_eq!(h.apply(&[0.55, 0.61, 1.0])?, vec![0.5, 0.0, 1.0]);
    let e = h.apply(&[0.5, 1.5]).unwrap_err();
    assert!(matches!(e, Error::BadData { row: 2, .. }), "{e}");
    assert!(HistogramBinning::fit(&conf, &ok, 0).is_err());
    assert!(fit_isotonic_confidence(&conf, &ok[..4]).is_err());
    Ok(())
}

#[test]
fn quantile_recalibration_repairs_an_overconfident_gaussian() -> Result<()> {
    // Truth y ~ N(μ, 2σ) but the model says σ: its 90% intervals cover about 59%.
    let mut rng = StdRng::seed_from_u64(3);
    let z = Normal::new(0.0, 1.0)?;
    let mut draw = |n: usize| {
        let mut m = Vec::new();
        let mut s = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let mu: f64 = rng.random_range(-1.0..1.0);
            let sd: f64 = rng.random_range(0.5..1.5);
            m.push(mu);
            s.push(sd);
            y.push(mu + 2.0 * sd * z.sample(&mut rng));
        }
        (m, s, y)
    };
    let (cm, cs, cy) = draw(2000);
    let (tm, ts, ty) = draw(5000);
    let r = QuantileRecalibrator::fit(&cm, &cs, &cy)?;
    assert_eq!(r.n_calibration, 2000);
    let (kx, ky) = r.map.knots();
    assert_eq!((kx[0], ky[0]), (0.0, 0.0));
    assert_eq!((*kx.last().unwrap(), *ky.last().unwrap()), (1.0, 1.0));
    for level in [0.5, 0.9] {
        let iv = r.intervals(&tm, &ts, level)?;
        let cov = iv
            .iter()
            .zip(&ty)
            .filter(|((lo, hi), y)| lo <= *y && *y <= hi)
            .count() as f64
            / ty.len() as f64;
        // Sampling error of the map (n = 2000) and of the test coverage (n = 5000) are both
        // about 0.01 at these levels; 0.03 is three of them.
        assert!((cov - level).abs() < 0.03, "level {level}: coverage {cov}");
    }
    // Recalibrated CDF levels of the test set are close to uniform: mean ≈ 0.5.
    let u = r.cdf(&tm, &ts, &ty)?;
    let mean_u = u.iter().sum::<f64>() / u.len() as f64;
    assert!((mean_u - 0.5).abs() < 0.02, "{mean_u}");
    // The exact recalibrated quantile: z = Φ⁻¹(R⁻¹(τ)) is the same for every row.
    let q = r.quantiles(&[0.0, 10.0], &[1.0, 3.0], 0.95)?;
    assert!(((q[1] - 10.0) / 3.0 - q[0]).abs() < 1e-12);
    // Roughly 2 · 1.645: the true 95% quantile of N(0, 2²) in units of the model's σ.
    assert!((q[0] - 2.0 * 1.6449).abs() < 0.25, "{}", q[0]);
    assert!(r.intervals(&tm, &ts, 1.0).is_err());
    assert!(r.quantiles(&tm, &ts, 0.0).is_err());
    Ok(())
}
