//! Classification metrics: agreement of the one-pass evaluation with slow obvious
//! implementations, invariance to row order, calibrated synthetic data, input errors.

use anyhow::Result;
mod common;
use common::invalid_name;

use candle_swag::metrics::{
    calibration_bins, classification_metrics, evaluate_classification, top_label,
    ClassificationConfig, ClassificationMetrics, ClassificationParams,
};
use candle_swag::Error;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random probability rows (normalised exponentials, i.e. Dirichlet(1, ..., 1)) and labels
/// drawn from those same probabilities, so the data is calibrated by construction.
fn calibrated_data(rng: &mut StdRng, n: usize, c: usize) -> (Vec<f64>, Vec<usize>) {
    let mut probs = Vec::with_capacity(n * c);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let e: Vec<f64> = (0..c).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect();
        let s: f64 = e.iter().sum();
        let row: Vec<f64> = e.iter().map(|x| x / s).collect();
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
        labels.push(y);
    }
    (probs, labels)
}

/// Hoeffding bound on the ECE of calibrated data, given the bin counts.
///
/// Under calibration the bin's accuracy is a mean of n_b independent Bernoulli(c_i) with mean
/// equal to the bin's mean confidence, so P(|gap_b| > t) ≤ 2 exp(−2 n_b t²). Choosing
/// t_b = sqrt(ln(2B/δ) / (2 n_b)) and a union bound over the B bins, with probability at least
/// 1 − δ every |gap_b| ≤ t_b, hence ECE = Σ (n_b/N)|gap_b| ≤ Σ (n_b/N) t_b. δ = 1e-6.
fn ece_bound(counts: &[usize]) -> f64 {
    let n: usize = counts.iter().sum();
    let b = counts.len() as f64;
    let log_term = (2.0 * b / 1e-6f64).ln();
    counts
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| (k as f64 / n as f64) * (log_term / (2.0 * k as f64)).sqrt())
        .sum()
}

#[test]
fn calibrated_confidences_give_small_ece_and_miscalibrated_ones_do_not() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 200_000;
    let conf: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let correct: Vec<bool> = conf.iter().map(|&c| rng.random::<f64>() < c).collect();
    let bins = calibration_bins(&conf, &correct, 15)?;
    let counts: Vec<usize> = bins.bins.iter().map(|b| b.count).collect();
    let bound = ece_bound(&counts);
    assert!(bins.ece < bound, "ECE {} above bound {bound}", bins.ece);
    // The bound is tight enough to catch a real miscalibration: correct ~ Bernoulli(c²).
    let over: Vec<bool> = conf.iter().map(|&c| rng.random::<f64>() < c * c).collect();
    let bad = calibration_bins(&conf, &over, 15)?;
    assert!(
        bad.ece > 3.0 * bound,
        "miscalibrated ECE {} vs bound {bound}",
        bad.ece
    );
    assert!(
        bad.signed_ece > 0.0,
        "over-confidence must give a positive signed ECE"
    );
    Ok(())
}

#[test]
fn calibrated_probability_matrix_gives_small_top_label_and_classwise_ece() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    let (probs, labels) = calibrated_data(&mut rng, 100_000, 4);
    let eval = evaluate_classification(&probs, 4, &labels, &ClassificationConfig::default())?;
    let counts: Vec<usize> = eval.reliability.bins.iter().map(|b| b.count).collect();
    let bound = ece_bound(&counts);
    assert!(
        eval.metrics.ece < bound,
        "ECE {} above {bound}",
        eval.metrics.ece
    );
    for (k, cw) in eval.classwise.iter().enumerate() {
        let counts: Vec<usize> = cw.bins.iter().map(|b| b.count).collect();
        let bound = ece_bound(&counts);
        assert!(cw.ece < bound, "class {k}: ECE {} above {bound}", cw.ece);
    }
    assert!(eval.metrics.l2_debiased <= eval.metrics.l2_plugin);
    Ok(())
}

/// Straightforward per-row formulas, one metric at a time.
fn slow_metrics(probs: &[f64], c: usize, labels: &[usize], nb: usize) -> (f64, f64, f64, f64) {
    let n = labels.len() as f64;
    let mut acc = 0.0;
    let mut nll = 0.0;
    let mut brier = 0.0;
    for (row, &y) in probs.chunks(c).zip(labels) {
        let mut best = 0;
        for k in 1..c {
            if row[k] > row[best] {
                best = k;
            }
        }
        acc += (best == y) as u8 as f64;
        nll += -row[y].max(1e-12).ln();
        brier += (0..c)
            .map(|k| (row[k] - if k == y { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>();
    }
    // Classwise ECE: the simple binning function on each column.
    let mut cw = 0.0;
    for k in 0..c {
        let col: Vec<f64> = probs.chunks(c).map(|r| r[k]).collect();
        let hit: Vec<bool> = labels.iter().map(|&y| y == k).collect();
        cw += calibration_bins(&col, &hit, nb).unwrap().ece;
    }
    (acc / n, nll / n, brier / n, cw / c as f64)
}

#[test]
fn one_pass_matches_slow_formulas_over_several_chunks() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    // More rows than one parallel chunk (4096), to exercise the merge.
    let (probs, labels) = calibrated_data(&mut rng, 10_000, 5);
    let options = ClassificationParams {
        n_bins: 10,
        ..Default::default()
    }
    .check()?;
    let eval = evaluate_classification(&probs, 5, &labels, &options)?;
    let (acc, nll, brier, cw) = slow_metrics(&probs, 5, &labels, 10);
    let m = &eval.metrics;
    assert!((m.accuracy - acc).abs() < 1e-12);
    assert!((m.nll - nll).abs() < 1e-10);
    assert!((m.brier - brier).abs() < 1e-10);
    assert!((m.classwise_ece - cw).abs() < 1e-10);
    let (conf, correct) = top_label(&probs, 5, &labels)?;
    let simple = calibration_bins(&conf, &correct, 10)?;
    assert!((m.ece - simple.ece).abs() < 1e-12);
    assert!((m.mce - simple.mce).abs() < 1e-12);
    assert_eq!(
        eval.reliability
            .bins
            .iter()
            .map(|b| b.count)
            .collect::<Vec<_>>(),
        simple.bins.iter().map(|b| b.count).collect::<Vec<_>>()
    );
    Ok(())
}

fn assert_metrics_close(a: &ClassificationMetrics, b: &ClassificationMetrics) {
    let pairs = [
        (a.accuracy, b.accuracy),
        (a.nll, b.nll),
        (a.brier, b.brier),
        (a.ece, b.ece),
        (a.mce, b.mce),
        (a.signed_ece, b.signed_ece),
        (a.ece_equal_mass, b.ece_equal_mass),
        (a.classwise_ece, b.classwise_ece),
        (a.l2_plugin, b.l2_plugin),
        (a.l2_debiased, b.l2_debiased),
    ];
    for (i, (x, y)) in pairs.iter().enumerate() {
        // Only the summation order differs.
        assert!((x - y).abs() <= 1e-12, "metric {i}: {x} vs {y}");
    }
}

fn prob_rows(c: usize) -> impl Strategy<Value = (Vec<f64>, Vec<usize>)> {
    // Weights on a coarse grid make ties in confidence (and equal-mass cut points) frequent.
    prop::collection::vec((prop::collection::vec(1u32..6, c), 0..c), 1..60).prop_map(move |rows| {
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for (w, y) in rows {
            let s: u32 = w.iter().sum();
            probs.extend(w.iter().map(|&x| x as f64 / s as f64));
            labels.push(y);
        }
        (probs, labels)
    })
}

proptest! {
    #[test]
    fn metrics_do_not_depend_on_row_order(
        (probs, labels) in prob_rows(3),
        seed in any::<u64>(),
    ) {
        let c = 3;
        let n = labels.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let p2: Vec<f64> = order.iter().flat_map(|&i| probs[i * c..(i + 1) * c].to_vec()).collect();
        let y2: Vec<usize> = order.iter().map(|&i| labels[i]).collect();
        let options = ClassificationParams { n_bins: 7, n_bins_equal_mass: 4, ..Default::default() }.check().unwrap();
        let a = evaluate_classification(&probs, c, &labels, &options).unwrap();
        let b = evaluate_classification(&p2, c, &y2, &options).unwrap();
        assert_metrics_close(&a.metrics, &b.metrics);
        let counts = |e: &candle_swag::metrics::CalibrationBins| {
            e.bins.iter().map(|b| b.count).collect::<Vec<_>>()
        };
        prop_assert_eq!(counts(&a.reliability), counts(&b.reliability));
        prop_assert_eq!(counts(&a.reliability_equal_mass), counts(&b.reliability_equal_mass));
    }
}

fn bad_data(err: Error) -> (String, usize, String, String) {
    match err {
        Error::BadData {
            file,
            row,
            column,
            reason,
        } => (file, row, column, reason),
        other => panic!("expected BadData, got {other}"),
    }
}

#[test]
fn input_errors_name_the_row_and_column() -> Result<()> {
    let good = vec![0.2f32, 0.8, 0.5, 0.5, 1.0, 0.0];
    let labels = vec![1u32, 0, 0];
    let opts = ClassificationConfig::default();
    assert!(classification_metrics(&good, 2, &labels, &opts).is_ok());

    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let (file, row, column, reason) =
        bad_data(classification_metrics(&nan, 2, &labels, &opts).unwrap_err());
    assert_eq!(
        (file.as_str(), row, column.as_str()),
        ("probabilities", 2, "class 1")
    );
    assert!(reason.contains("NaN"), "{reason}");

    let mut inf = good.clone();
    inf[4] = f32::INFINITY;
    let (_, row, column, reason) =
        bad_data(classification_metrics(&inf, 2, &labels, &opts).unwrap_err());
    assert_eq!((row, column.as_str()), (3, "class 0"));
    assert!(reason.contains("inf"), "{reason}");

    let mut outside = good.clone();
    outside[0] = -0.2;
    outside[1] = 1.2;
    let (_, row, column, reason) =
        bad_data(classification_metrics(&outside, 2, &labels, &opts).unwrap_err());
    assert_eq!((row, column.as_str()), (1, "class 0"));
    assert!(reason.contains("outside [0, 1]"), "{reason}");

    let mut sum = good.clone();
    sum[2] = 0.4; // row 2 sums to 0.9
    let (_, row, column, reason) =
        bad_data(classification_metrics(&sum, 2, &labels, &opts).unwrap_err());
    assert_eq!((row, column.as_str()), (2, "row sum"));
    assert!(reason.contains("sum"), "{reason}");

    // Within the ±1e-4 tolerance a row is accepted.
    let mut nearly = good.clone();
    nearly[2] = 0.50005;
    assert!(classification_metrics(&nearly, 2, &labels, &opts).is_ok());

    let (file, row, _, reason) =
        bad_data(classification_metrics(&good, 2, &[1u32, 2, 0], &opts).unwrap_err());
    assert_eq!((file.as_str(), row), ("labels", 2));
    assert!(reason.contains("out of range"), "{reason}");

    let (file, row, _, reason) =
        bad_data(classification_metrics(&good, 2, &[1i64, -1, 0], &opts).unwrap_err());
    assert_eq!((file.as_str(), row), ("labels", 2));
    assert!(reason.contains("negative"), "{reason}");

    let (file, _, _, reason) =
        bad_data(classification_metrics(&good, 2, &[1u32, 0], &opts).unwrap_err());
    assert_eq!(file, "labels");
    assert!(reason.contains("3"), "{reason}");

    let (_, _, _, reason) =
        bad_data(classification_metrics::<f32, u32>(&[], 2, &[], &opts).unwrap_err());
    assert!(reason.contains("empty"), "{reason}");

    let (_, row, _, _) =
        bad_data(classification_metrics(&good[..5], 2, &labels, &opts).unwrap_err());
    assert_eq!(row, 3, "a ragged last row is named");

    // The first bad row in row order is reported even when later chunks also hold errors.
    let n = 20_000;
    let mut big = vec![0.5f32; 2 * n];
    big[2 * 15_000] = f32::NAN;
    big[2 * 9_000 + 1] = 2.0;
    let big_labels = vec![0u32; n];
    let (_, row, column, _) =
        bad_data(classification_metrics(&big, 2, &big_labels, &opts).unwrap_err());
    assert_eq!((row, column.as_str()), (9_001, "class 1"));
    Ok(())
}

#[test]
fn options_are_validated() -> Result<()> {
    let p = [0.5f64, 0.5];
    let y = [0usize];
    let d = ClassificationParams::default;
    let with = |f: fn(&mut ClassificationParams)| {
        let mut p = d();
        f(&mut p);
        p.check()
    };
    assert_eq!(invalid_name(with(|p| p.n_bins = 0)), "n_bins");
    assert_eq!(
        invalid_name(with(|p| p.n_bins_equal_mass = 0)),
        "n_bins_equal_mass"
    );
    assert_eq!(invalid_name(with(|p| p.nll_eps = 0.0)), "nll_eps");
    assert_eq!(invalid_name(with(|p| p.nll_eps = f64::NAN)), "nll_eps");
    assert_eq!(
        invalid_name(ClassificationParams::with_bins(0).check()),
        "n_bins"
    );
    assert!(matches!(
        classification_metrics(&p, 0, &y, &ClassificationConfig::default()),
        Err(Error::InvalidArgument { .. })
    ));
    Ok(())
}

#[test]
fn nll_clamps_zero_probabilities_at_eps() -> Result<()> {
    let p = [1.0f64, 0.0];
    let m = classification_metrics(&p, 2, &[1usize], &ClassificationConfig::default())?;
    assert!((m.nll - (-(1e-12f64).ln())).abs() < 1e-12);
    assert_eq!(m.brier, 2.0);
    assert_eq!(m.accuracy, 0.0);
    Ok(())
}

#[test]
fn metrics_json_has_the_report_keys() -> Result<()> {
    let p = [0.9f32, 0.1, 0.3, 0.7];
    let m = classification_metrics(&p, 2, &[0u32, 0], &ClassificationConfig::default())?;
    let v = serde_json::to_value(&m)?;
    for key in ["accuracy", "nll", "brier", "ece", "mce"] {
        assert!(
            v.get(key).and_then(|x| x.as_f64()).is_some(),
            "missing {key}"
        );
    }
    let back: ClassificationMetrics = serde_json::from_value(v)?;
    assert_eq!(back, m);
    assert_eq!(m.accuracy, 0.5);
    Ok(())
}
