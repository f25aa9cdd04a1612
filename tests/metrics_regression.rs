//! Regression metrics and the post-hoc recalibration baselines.

use anyhow::Result;
use candle_swag::metrics::{
    apply_temperature, calibration_curve, crps_gaussian, crps_samples, fit_sigma_scale,
    fit_temperature, gaussian_nll, linspace, prediction_interval_coverage, regression_metrics,
    regression_metrics_from_samples, sample_moments, CalibrationCurve, CrpsEstimator, CurveKind,
    RegressionConfig,
};
use candle_swag::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Calibrated Gaussian data: y ~ N(μ, σ) with random μ and σ.
fn gaussian_data(rng: &mut StdRng, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let z = Normal::new(0.0, 1.0).unwrap();
    let mean: Vec<f64> = (0..n).map(|_| rng.random_range(-3.0..3.0)).collect();
    let std: Vec<f64> = (0..n).map(|_| rng.random_range(0.2..2.0)).collect();
    let y = mean
        .iter()
        .zip(&std)
        .map(|(m, s)| m + s * z.sample(rng))
        .collect();
    (mean, std, y)
}

#[test]
fn linspace_follows_numpy() -> Result<()> {
    assert_eq!(linspace(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    let g = linspace(0.01, 0.99, 99);
    assert_eq!((g[0], g[98], g.len()), (0.01, 0.99, 99));
    assert_eq!(linspace(2.0, 3.0, 1), vec![2.0]);
    Ok(())
}

#[test]
fn miscalibration_area_hand_values() -> Result<()> {
    // Above the diagonal on both trapezoids: area of the triangle (0,0)-(0.5,1)-(1,1) minus
    // ... computed piecewise: [0, .5]: heights 0 and .5 -> .125; [.5, 1]: .5 and 0 -> .125.
    let c = CalibrationCurve {
        expected: vec![0.0, 0.5, 1.0],
        observed: vec![0.0, 1.0, 1.0],
    };
    assert!((c.miscalibration_area() - 0.25).abs() < 1e-15);
    // Crossing in the middle: two triangles of base ½ and height 1.
    let c = CalibrationCurve {
        expected: vec![0.0, 1.0],
        observed: vec![1.0, 0.0],
    };
    assert!((c.miscalibration_area() - 0.5).abs() < 1e-15);
    Ok(())
}

#[test]
fn calibrated_gaussians_give_near_diagonal_curves_and_nominal_coverage() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let n = 40_000;
    let (m, s, y) = gaussian_data(&mut rng, n);
    // Each observed proportion is a binomial mean: sd ≤ 1/(2 sqrt(n)) = 0.0025; 6 sd = 0.015.
    let bound = 6.0 * 0.5 / (n as f64).sqrt();
    for curve in [
        calibration_curve(&m, &s, &y, 100, CurveKind::Interval)?,
        calibration_curve(&m, &s, &y, 100, CurveKind::Quantile)?,
    ] {
        for (e, o) in curve.expected.iter().zip(&curve.observed) {
            assert!((e - o).abs() < bound, "expected {e}, observed {o}");
        }
    }
    let cov = prediction_interval_coverage(&m, &s, &y, 0.95)?;
    assert!((cov.picp - 0.95).abs() < bound);
    // MPIW = 2 · 1.959964 · mean σ.
    let mean_s = s.iter().sum::<f64>() / n as f64;
    assert!((cov.mpiw - 2.0 * 1.959_963_984_540_054 * mean_s).abs() < 1e-9);
    let all = regression_metrics(&m, &s, &y, &RegressionConfig::default())?;
    assert!(all.mace < bound && all.miscalibration_area < bound);
    assert_eq!(all.intervals.len(), 5);
    assert_eq!(all.picp_95, cov.picp);

    // Over-confident predictions (σ halved) fall clearly below the diagonal.
    let half: Vec<f64> = s.iter().map(|x| x / 2.0).collect();
    let bad = calibration_curve(&m, &half, &y, 100, CurveKind::Interval)?;
    let at_95 = bad.expected.iter().position(|&e| e > 0.949).unwrap();
    assert!(bad.observed[at_95] < 0.75);
    Ok(())
}

#[test]
fn quantile_curve_uses_the_toolbox_sign() -> Result<()> {
    // Targets far above the means: r = (μ − y)/σ is very negative, so under the toolbox's
    // convention every row counts as "below" every quantile except p = 0.
    let m = [0.0, 0.0];
    let s = [1.0, 1.0];
    let y = [10.0, 10.0];
    let q = calibration_curve(&m, &s, &y, 5, CurveKind::Quantile)?;
    assert_eq!(q.observed, vec![0.0, 1.0, 1.0, 1.0, 1.0]);
    Ok(())
}

#[test]
fn crps_samples_converge_to_the_closed_form() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(9);
    let z = Normal::new(0.0, 1.0)?;
    let (n, s) = (50, 4000);
    let mean: Vec<f64> = (0..n).map(|i| i as f64 / 10.0).collect();
    let std: Vec<f64> = (0..n).map(|i| 0.5 + (i % 5) as f64 / 5.0).collect();
    let y: Vec<f64> = (0..n).map(|i| mean[i] + 0.7 * std[i]).collect();
    let mut samples = vec![0.0; s * n];
    for k in 0..s {
        for i in 0..n {
            samples[k * n + i] = mean[i] + std[i] * z.sample(&mut rng);
        }
    }
    let closed = crps_gaussian(&mean, &std, &y)?;
    let fair = crps_samples(&samples, s, &y, CrpsEstimator::Fair)?;
    let plug = crps_samples(&samples, s, &y, CrpsEstimator::PlugIn)?;
    // Monte-Carlo error of a mean over 50 rows × 4000 samples is well below 1%.
    assert!((fair - closed).abs() < 0.01 * closed, "{fair} vs {closed}");
    // The plug-in estimator is biased upwards by (mean spread)/(2M(M−1))·... i.e. > fair.
    assert!(plug > fair);
    let (sm, ss) = sample_moments(&samples, s)?;
    assert!((sm[10] - mean[10]).abs() < 0.1 && (ss[10] - std[10]).abs() < 0.05);
    let from_samples =
        regression_metrics_from_samples(&samples, s, &y, &RegressionConfig::default())?;
    assert_eq!(from_samples.crps_samples, Some(fair));
    // Sample CRPS against a slow O(M²) computation on a tiny case.
    let tiny = [0.0, 1.0, 3.0, 0.5, 2.0, -1.0]; // [S = 3, N = 2]
    let yt = [1.0, 0.0];
    let mut want = 0.0;
    for i in 0..2 {
        let xs: Vec<f64> = (0..3).map(|k| tiny[k * 2 + i]).collect();
        let a: f64 = xs.iter().map(|x| (x - yt[i]).abs()).sum::<f64>() / 3.0;
        let mut b = 0.0;
        for p in &xs {
            for q in &xs {
                b += (p - q).abs();
            }
        }
        want += a - b / (2.0 * 3.0 * 2.0);
    }
    let got = crps_samples(&tiny, 3, &yt, CrpsEstimator::Fair)?;
    assert!((got - want / 2.0).abs() < 1e-12);
    Ok(())
}

#[test]
fn regression_input_errors_name_the_row() -> Result<()> {
    let m = [1.0, 2.0, 3.0];
    match gaussian_nll(&m, &[1.0, 0.0, 1.0], &[1.0, 2.0, 3.0]).unwrap_err() {
        Error::BadData { file, row, .. } => assert_eq!((file.as_str(), row), ("std", 2)),
        e => panic!("unexpected {e}"),
    }
    match gaussian_nll(&m, &[1.0; 3], &[1.0, 2.0, f64::NAN]).unwrap_err() {
        Error::BadData { file, row, .. } => assert_eq!((file.as_str(), row), ("targets", 3)),
        e => panic!("unexpected {e}"),
    }
    assert!(gaussian_nll(&m, &[1.0; 2], &[1.0; 3]).is_err());
    assert!(gaussian_nll(&[], &[], &[]).is_err());
    assert!(crps_samples(&[1.0, 2.0], 1, &[1.0, 2.0], CrpsEstimator::Fair).is_err());
    Ok(())
}

#[test]
fn sigma_scale_recovers_a_known_factor_and_is_the_nll_minimum() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(21);
    let (m, s, y) = gaussian_data(&mut rng, 50_000);
    let third: Vec<f64> = s.iter().map(|x| x / 3.0).collect();
    let fit = fit_sigma_scale(&m, &third, &y)?;
    assert!((fit.scale - 3.0).abs() < 0.05, "scale {}", fit.scale);
    assert!(fit.nll_after < fit.nll_before);
    // Closed form: no nearby scale does better.
    for f in [0.98, 1.02] {
        let other: Vec<f64> = third.iter().map(|x| x * fit.scale * f).collect();
        assert!(gaussian_nll(&m, &other, &y)? > fit.nll_after);
    }
    assert_eq!(fit.apply(&[1.0])[0], fit.scale);
    Ok(())
}

#[test]
fn temperature_scaling_recovers_a_known_temperature() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(17);
    let (n, c) = (20_000, 5);
    let z = Normal::new(0.0, 1.5)?;
    let true_t = 2.5;
    let mut logits = Vec::with_capacity(n * c);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        // Labels follow softmax(l); the model reports l·T, i.e. it is over-confident by T.
        let l: Vec<f64> = (0..c).map(|_| z.sample(&mut rng)).collect();
        let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|x| (x - max).exp()).collect();
        let s: f64 = e.iter().sum();
        let u: f64 = rng.random::<f64>() * s;
        let mut acc = 0.0;
        let mut y = c - 1;
        for (k, w) in e.iter().enumerate() {
            acc += w;
            if u < acc {
                y = k;
                break;
            }
        }
        logits.extend(l.iter().map(|x| (x * true_t) as f32));
        labels.push(y as u32);
    }
    let fit = fit_temperature(&logits, c, &labels)?;
    assert!(
        (fit.temperature - true_t).abs() < 0.1,
        "T = {}",
        fit.temperature
    );
    assert!(!fit.at_bound);
    assert!(fit.nll_after < fit.nll_before);
    // It is the minimum: nearby temperatures give a larger NLL.
    let nll_at = |t: f64| {
        let p = apply_temperature(&logits, c, t).unwrap();
        p.chunks(c)
            .zip(&labels)
            .map(|(r, &y)| -(r[y as usize] as f64).ln())
            .sum::<f64>()
            / n as f64
    };
    let best = nll_at(fit.temperature);
    assert!((best - fit.nll_after).abs() < 1e-5);
    assert!(nll_at(fit.temperature * 1.05) > best);
    assert!(nll_at(fit.temperature / 1.05) > best);

    // Separable data: the NLL keeps falling as T → 0, the fit stops at the documented bound.
    let sep = fit_temperature(&[5.0f32, 0.0, 0.0, 5.0], 2, &[0u32, 1])?;
    assert!(sep.at_bound && (sep.temperature - 1e-3).abs() < 1e-12);
    match fit_temperature(&[0.0f32, f32::NAN], 2, &[0u32]).unwrap_err() {
        Error::BadData {
            file, row, column, ..
        } => {
            assert_eq!(
                (file.as_str(), row, column.as_str()),
                ("logits", 1, "class 1")
            )
        }
        e => panic!("unexpected {e}"),
    }
    Ok(())
}
