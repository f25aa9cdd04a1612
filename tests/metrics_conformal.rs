//! Split-conformal intervals and prediction sets: the quantile rank by hand, and the coverage
//! guarantee over many random calibration/test splits of data with a known distribution.
//!
//! Monte-Carlo bound used below: the mean of `S` per-split coverages is compared with its
//! target band widened by `4·sd/√S`, `sd` the sample standard deviation of the per-split
//! coverages (a normal approximation; a correct method fails it with probability < 1e-4).
//! The seeds are fixed, so a run is reproducible.

use anyhow::Result;
use candle_swag::metrics::{
    conformal_quantile, conformal_rank, normalized_scores, prediction_interval_coverage,
    ConformalClassifier, ConformalParams, ConformalRegressor, SetScore, MIN_CALIBRATION_ROWS,
};
use candle_swag::Error;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const SPLITS: usize = 200;

fn mean_and_mc_bound(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, 4.0 * (var / n).sqrt())
}

#[test]
fn rank_matches_hand_values() -> Result<()> {
    // ⌈(n + 1)(1 − α)⌉
    assert_eq!(conformal_rank(19, 0.1), Some(18)); // 20 · 0.9 = 18 exactly
    assert_eq!(conformal_rank(20, 0.1), Some(19)); // ⌈18.9⌉
    assert_eq!(conformal_rank(99, 0.1), Some(90)); // 100 · 0.9 = 90 exactly
    assert_eq!(conformal_rank(100, 0.1), Some(91)); // ⌈90.9⌉
    assert_eq!(conformal_rank(20, 0.05), Some(20)); // ⌈19.95⌉
    assert_eq!(conformal_rank(39, 0.05), Some(38)); // 40 · 0.95 = 38 exactly
    assert_eq!(conformal_rank(20, 0.01), None); // ⌈20.79⌉ = 21 > 20: infinite
    assert_eq!(conformal_rank(20, 0.5), Some(11)); // ⌈10.5⌉
    Ok(())
}

#[test]
fn quantile_is_the_kth_smallest_score() -> Result<()> {
    let cfg = ConformalParams { alpha: 0.1 }.check()?;
    // Scores 1..=20 shuffled: the 19th smallest is 19.
    let mut s: Vec<f64> = (1..=20).map(f64::from).collect();
    s.shuffle(&mut StdRng::seed_from_u64(1));
    assert_eq!(conformal_quantile(&s, &cfg)?, 19.0);
    // 19 scores are refused (fewer than 20 rows).
    let e = conformal_quantile(&s[..19], &cfg).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, .. } if name == "calibration set"),
        "{e}"
    );
    assert!(e.to_string().contains("19 rows"), "{e}");
    // α = 0.01 on 20 scores: rank 21 > 20, so the quantile is infinite.
    let cfg = ConformalParams { alpha: 0.01 }.check()?;
    assert_eq!(conformal_quantile(&s, &cfg)?, f64::INFINITY);
    Ok(())
}

#[test]
fn config_refuses_levels_outside_the_unit_interval() -> Result<()> {
    for a in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        assert!(ConformalParams { alpha: a }.check().is_err(), "alpha {a}");
    }
    for c in [0.0, 1.0, 1.2] {
        assert!(
            ConformalParams::with_coverage(c).check().is_err(),
            "coverage {c}"
        );
    }
    let c = ConformalParams::with_coverage(0.9).check()?;
    assert!((c.alpha() - 0.1).abs() < 1e-15);
    assert!(SetScore::raps(-1.0, 1).is_err());
    assert!(SetScore::raps(f64::INFINITY, 1).is_err());
    Ok(())
}

#[test]
fn regressor_intervals_hand_case() -> Result<()> {
    // Calibration scores |y − μ|/σ = 0.1, 0.2, ..., 2.0 (σ = 2, μ = 0, y = 0.2 i).
    let n = 20;
    let mean = vec![0.0; n];
    let std = vec![2.0; n];
    let y: Vec<f64> = (1..=n).map(|i| 0.2 * i as f64).collect();
    let s = normalized_scores(&mean, &std, &y)?;
    assert!((s[4] - 0.5).abs() < 1e-12);
    let cfg = ConformalParams { alpha: 0.1 }.check()?;
    let r = ConformalRegressor::fit(&cfg, &mean, &std, &y)?;
    // Rank 19: q̂ = 1.9.
    assert_eq!(r.rank, Some(19));
    assert!((r.quantile - 1.9).abs() < 1e-12);
    let iv = r.intervals(&[1.0, -2.0], &[1.0, 0.5])?;
    assert!((iv[0].0 + 0.9).abs() < 1e-12 && (iv[0].1 - 2.9).abs() < 1e-12);
    assert!((iv[1].0 + 2.95).abs() < 1e-12 && (iv[1].1 + 1.05).abs() < 1e-12);
    // Coverage and width on two test rows: one inside, one outside.
    let ev = r.evaluate(&[0.0, 0.0], &[1.0, 1.0], &[1.8, 2.0])?;
    assert_eq!(ev.coverage, 0.5);
    assert!((ev.mean_size - 3.8).abs() < 1e-12);
    // Too small a calibration set, bad σ, mismatched lengths: errors, not numbers.
    assert!(ConformalRegressor::fit(&cfg, &mean[..19], &std[..19], &y[..19]).is_err());
    let mut bad = std.clone();
    bad[3] = 0.0;
    let e = ConformalRegressor::fit(&cfg, &mean, &bad, &y).unwrap_err();
    assert!(matches!(e, Error::BadData { row: 4, .. }), "{e}");
    assert!(r.intervals(&[0.0, 1.0], &[1.0]).is_err());
    // Infinite quantile: infinite intervals, and the JSON round trip keeps it.
    let r = ConformalRegressor::fit(&ConformalParams { alpha: 0.01 }.check()?, &mean, &std, &y)?;
    assert!(r.infinite());
    assert_eq!(
        r.intervals(&[0.0], &[1.0])?,
        vec![(f64::NEG_INFINITY, f64::INFINITY)]
    );
    let back: ConformalRegressor = serde_json::from_str(&serde_json::to_string(&r)?)?;
    assert_eq!(back, r);
    Ok(())
}

/// y = x + (0.2 + |x|)·ε, ε ~ N(0, 1), x ~ U(−2, 2); the "model" predicts μ = x and a σ that
/// is half the true one, so its Gaussian intervals under-cover and conformal must fix it.
fn heteroscedastic_pool(rng: &mut StdRng, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let z = Normal::new(0.0, 1.0).unwrap();
    let mut mean = Vec::with_capacity(n);
    let mut std = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let x: f64 = rng.random_range(-2.0..2.0);
        let s = 0.2 + x.abs();
        mean.push(x);
        std.push(0.5 * s);
        y.push(x + s * z.sample(rng));
    }
    (mean, std, y)
}

fn take(v: &[f64], idx: &[usize]) -> Vec<f64> {
    idx.iter().map(|&i| v[i]).collect()
}

#[test]
fn regression_coverage_over_random_splits_lies_in_the_finite_sample_band() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(12);
    let n_cal = 100;
    let n_test = 1000;
    let (mean, std, y) = heteroscedastic_pool(&mut rng, n_cal + n_test);
    for alpha in [0.1, 0.2] {
        let cfg = ConformalParams { alpha }.check()?;
        let mut idx: Vec<usize> = (0..mean.len()).collect();
        let mut cov = Vec::with_capacity(SPLITS);
        let mut gauss = Vec::with_capacity(SPLITS);
        for _ in 0..SPLITS {
            idx.shuffle(&mut rng);
            let (cal, test) = idx.split_at(n_cal);
            let r =
                ConformalRegressor::fit(&cfg, &take(&mean, cal), &take(&std, cal), &take(&y, cal))?;
            let (tm, ts, ty) = (take(&mean, test), take(&std, test), take(&y, test));
            cov.push(r.evaluate(&tm, &ts, &ty)?.coverage);
            gauss.push(prediction_interval_coverage(&tm, &ts, &ty, 1.0 - alpha)?.picp);
        }
        let (m, mc) = mean_and_mc_bound(&cov);
        let lo = 1.0 - alpha;
        let hi = 1.0 - alpha + 1.0 / (n_cal as f64 + 1.0);
        assert!(
            m >= lo - mc && m <= hi + mc,
            "alpha {alpha}: mean coverage {m} outside [{lo}, {hi}] ± {mc}"
        );
        // The halved σ makes the plain Gaussian intervals clearly under-cover.
        let (g, _) = mean_and_mc_bound(&gauss);
        assert!(g < lo - 0.1, "alpha {alpha}: Gaussian coverage {g}");
    }
    Ok(())
}

/// A calibrated classifier by construction: random probability rows, labels drawn from them.
fn calibrated_classes(rng: &mut StdRng, n: usize, c: usize) -> (Vec<f64>, Vec<u32>) {
    let z = Normal::new(0.0, 1.5).unwrap();
    let mut probs = Vec::with_capacity(n * c);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let e: Vec<f64> = (0..c).map(|_| f64::exp(z.sample(rng))).collect();
        let s: f64 = e.iter().sum();
        let row: Vec<f64> = e.iter().map(|v| v / s).collect();
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut y = c - 1;
        for (k, p) in row.iter().enumerate() {
            acc += p;
            if u < acc {
                y = k;
                break;
            }
        }
        probs.extend(row);
        labels.push(y as u32);
    }
    (probs, labels)
}

#[test]
fn aps_and_raps_sets_cover_at_least_the_target() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let c = 10;
    let n_cal = 200;
    let n_test = 500;
    let (probs, labels) = calibrated_classes(&mut rng, n_cal + n_test, c);
    let cfg = ConformalParams { alpha: 0.1 }.check()?;
    for score in [SetScore::Aps, SetScore::raps(0.05, 2)?] {
        let mut idx: Vec<usize> = (0..labels.len()).collect();
        let mut cov = Vec::with_capacity(SPLITS);
        let mut size = 0.0;
        for _ in 0..SPLITS {
            idx.shuffle(&mut rng);
            let (cal, test) = idx.split_at(n_cal);
            let rows = |ix: &[usize]| -> (Vec<f64>, Vec<u32>) {
                let p = ix
                    .iter()
                    .flat_map(|&i| probs[i * c..(i + 1) * c].iter().copied())
                    .collect();
                (p, ix.iter().map(|&i| labels[i]).collect())
            };
            let (cp, cl) = rows(cal);
            let (tp, tl) = rows(test);
            let m = ConformalClassifier::fit(&cfg, score, &cp, c, &cl)?;
            let ev = m.evaluate(&tp, &tl)?;
            cov.push(ev.coverage);
            size += ev.mean_size / SPLITS as f64;
        }
        let (m, mc) = mean_and_mc_bound(&cov);
        assert!(m >= 0.9 - mc, "{score:?}: mean coverage {m} (MC {mc})");
        // Sets are informative: far fewer than all 10 classes on average.
        assert!(size > 1.0 && size < 8.0, "{score:?}: mean set size {size}");
    }
    Ok(())
}

#[test]
fn aps_sets_hand_case() -> Result<()> {
    // Calibration: 20 rows of [0.5, 0.3, 0.2] with label 0 (score 0.5) or 1 (score 0.8).
    // 18 rows labelled 0, 2 labelled 1: at α = 0.1 the 19th smallest score is 0.8.
    let row = [0.5f64, 0.3, 0.2];
    let probs: Vec<f64> = (0..20).flat_map(|_| row).collect();
    let labels: Vec<u32> = (0..20).map(|i| u32::from(i >= 18)).collect();
    let cfg = ConformalParams { alpha: 0.1 }.check()?;
    let m = ConformalClassifier::fit(&cfg, SetScore::Aps, &probs, 3, &labels)?;
    assert!((m.quantile - 0.8).abs() < 1e-12);
    // [0.1, 0.6, 0.3] ranks class 1 (0.6), class 2 (0.9), class 0 (1.0): q̂ = 0.8 keeps class 1.
    let sets = m.sets(&[0.1f64, 0.6, 0.3, 0.4, 0.35, 0.25, 0.9, 0.05, 0.05])?;
    assert_eq!(sets[0], vec![1]);
    assert_eq!(sets[1], vec![0, 1]); // 0.4, 0.75 ≤ 0.8, then 1.0
    assert_eq!(sets[2], vec![0]); // 0.9 > q̂, but the top class is always kept
                                  // Ties rank by class index: [0.3, 0.4, 0.3] gives class 1 (0.4), class 0 (0.7), class 2.
    assert_eq!(m.sets(&[0.3f64, 0.4, 0.3])?, vec![vec![1, 0]]);
    assert!(m.sets(&[0.25f64, 0.25, 0.25, 0.25]).is_err()); // not whole rows of 3
                                                            // RAPS with λ = 1, k_reg = 1: the second class costs 1 more, so q̂ over the same
                                                            // calibration is 1.8 and [0.4, 0.35, 0.25] keeps classes 0 and 1 (0.4, 1.75), not 2 (3.0).
    let raps = SetScore::raps(1.0, 1)?;
    let m = ConformalClassifier::fit(&cfg, raps, &probs, 3, &labels)?;
    assert!((m.quantile - 1.8).abs() < 1e-12);
    assert_eq!(m.sets(&[0.4f64, 0.35, 0.25])?, vec![vec![0, 1]]);
    // Bad rows are refused with their row number.
    let mut bad = probs.clone();
    bad[3 * 5] = 0.9;
    let e = ConformalClassifier::fit(&cfg, SetScore::Aps, &bad, 3, &labels).unwrap_err();
    assert!(matches!(e, Error::BadData { row: 6, .. }), "{e}");
    let few = ConformalClassifier::fit(
        &cfg,
        SetScore::Aps,
        &probs[..3 * (MIN_CALIBRATION_ROWS - 1)],
        3,
        &labels[..MIN_CALIBRATION_ROWS - 1],
    );
    assert!(few.is_err());
    Ok(())
}
