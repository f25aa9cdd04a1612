//! The calibration sections of a report: conditional-coverage binning against a hand-computed
//! example; every number of the conformal and recalibration tables equal to the metric
//! computed directly (by another path where one exists) on the same predictions; no section
//! without calibration data; bad calibration input refused with the parameter named.

use anyhow::Result;
use candle_swag::metrics::{
    self, calibration_bins, conditional_coverage, fit_isotonic_confidence, fit_sigma_scale,
    fit_temperature, prediction_interval_coverage, ClassificationParams, ConformalClassifier,
    ConformalParams, ConformalRegressor, HistogramBinning, QuantileRecalibrator, RegressionConfig,
    SetScore,
};
use candle_swag_report::report::{CalibrationSetup, GaussianPredictions, Report, ReportBuilder};
use serde_json::Value;

/// A small deterministic generator (no dependency on rand's stream stability).
struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Box–Muller standard normal.
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Gaussian predictions whose true noise is 1.6 times the predicted σ (under-dispersed, so
/// recalibration has something to do).
fn regression_data(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut g = Lcg(seed);
    let (mut mean, mut std, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let m = 10.0 * g.uniform();
        let s = 0.5 + 2.0 * g.uniform();
        mean.push(m);
        std.push(s);
        y.push(m + 1.6 * s * g.normal());
    }
    (mean, std, y)
}

/// Over-confident three-class probabilities and labels.
fn classification_data(n: usize, seed: u64) -> (Vec<f64>, Vec<u32>) {
    let mut g = Lcg(seed);
    let (mut probs, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let top = (g.uniform() * 3.0) as usize % 3;
        let p_top = 0.55 + 0.44 * g.uniform();
        let rest = (1.0 - p_top) / 2.0;
        let row: Vec<f64> = (0..3)
            .map(|k| if k == top { p_top } else { rest })
            .collect();
        // Correct with probability 0.75 p_top (over-confident), else another class.
        let label = if g.uniform() < 0.75 * p_top {
            top
        } else {
            (top + 1 + (g.uniform() * 2.0) as usize % 2) % 3
        };
        probs.extend(row);
        labels.push(label as u32);
    }
    (probs, labels)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn conditional_coverage_matches_a_hand_computed_example() -> Result<()> {
    // σ = 3, 1, 2, 1, 5; covered: yes, no, yes, yes, no (closed intervals: row 2 on its edge).
    let std = [3.0, 1.0, 2.0, 1.0, 5.0];
    let y = [0.0, 5.0, 1.0, 0.5, -9.0];
    let intervals = [
        (-1.0, 1.0),
        (0.0, 2.0),
        (-1.0, 1.0),
        (0.0, 4.0),
        (-2.0, 6.0),
    ];
    let c = conditional_coverage(&std, &intervals, &y, 2)?;
    assert_eq!(c.n, 5);
    // Sorted by σ, ties in row order: rows 1, 3 (σ 1), 2 (σ 2) | 0 (σ 3), 4 (σ 5); sizes 3, 2
    // (numpy.array_split: the larger bin first).
    let b0 = &c.bins[0];
    assert_eq!(b0.count, 3);
    assert_eq!((b0.sigma_lower, b0.sigma_upper), (1.0, 2.0));
    assert!(close(b0.mean_sigma, 4.0 / 3.0));
    assert!(close(b0.coverage, 2.0 / 3.0)); // rows 1 no, 3 yes, 2 yes
    assert!(close(b0.mean_width, (2.0 + 4.0 + 2.0) / 3.0));
    let b1 = &c.bins[1];
    assert_eq!(b1.count, 2);
    assert_eq!((b1.sigma_lower, b1.sigma_upper), (3.0, 5.0));
    assert!(close(b1.mean_sigma, 4.0));
    assert!(close(b1.coverage, 0.5)); // row 0 yes, row 4 no
    assert!(close(b1.mean_width, (2.0 + 8.0) / 2.0));

    // One bin is the overall coverage; one bin per row is each row's own.
    let one = conditional_coverage(&std, &intervals, &y, 1)?;
    assert!(close(one.bins[0].coverage, 0.6));
    let five = conditional_coverage(&std, &intervals, &y, 5)?;
    let per_row: Vec<f64> = five.bins.iter().map(|b| b.coverage).collect();
    assert_eq!(per_row, vec![0.0, 1.0, 1.0, 1.0, 0.0]);

    // Bad input names the parameter.
    for bins in [0, 6] {
        let e = conditional_coverage(&std, &intervals, &y, bins).unwrap_err();
        assert!(e.to_string().contains("n_bins"), "{e}");
    }
    let e = conditional_coverage(&std, &intervals[..4], &y, 2).unwrap_err();
    assert!(e.to_string().contains("targets"), "{e}");
    let e = conditional_coverage(&std, &[(1.0, 0.0); 5], &y, 2).unwrap_err();
    assert!(e.to_string().contains("intervals"), "{e}");
    Ok(())
}

/// Report with one regression method fitted on calibration predictions.
fn regression_report(level: f64) -> (ReportBuilder, [Vec<f64>; 6]) {
    let (mean, std, y) = regression_data(150, 1);
    let (cm, cs, cy) = regression_data(80, 2);
    let b = ReportBuilder::new("toy")
        .with_calibration(CalibrationSetup::new(level, "the toy hold-out").unwrap())
        .unwrap()
        .regression_method_calibrated(
            "SWAG",
            &mean,
            &std,
            &y,
            GaussianPredictions {
                mean: &cm,
                std: &cs,
                targets: &cy,
            },
        )
        .unwrap();
    (b, [mean, std, y, cm, cs, cy])
}

#[test]
fn regression_numbers_equal_the_metrics_computed_directly() -> Result<()> {
    let level = 0.9;
    let (builder, [mean, std, y, cm, cs, cy]) = regression_report(level);
    let report = builder.report();
    let c = &report.regression_calibration[0];
    assert_eq!(c.n_calibration, 80);

    // Gaussian intervals: PICP at the level, by the regression metrics' own path.
    let g = prediction_interval_coverage(&mean, &std, &y, level)?;
    assert!(close(c.gaussian.picp, g.picp) && close(c.gaussian.mpiw, g.mpiw));

    // Conformal: q̂ as the ⌈(n+1)(1−α)⌉-th smallest calibration score, counted by hand.
    let mut scores: Vec<f64> = (0..80).map(|i| (cy[i] - cm[i]).abs() / cs[i]).collect();
    scores.sort_by(f64::total_cmp);
    let k = ((81.0 * 0.9f64) - 1e-9).ceil() as usize; // 73
    assert_eq!(k, 73);
    assert_eq!(c.conformal.quantile, scores[k - 1]);
    let q = scores[k - 1];
    let inside = (0..150)
        .filter(|&i| (y[i] - mean[i]).abs() <= q * std[i])
        .count();
    assert!(close(
        c.conformal_evaluation.coverage,
        inside as f64 / 150.0
    ));
    let width = std.iter().map(|s| 2.0 * q * s).sum::<f64>() / 150.0;
    assert!(close(c.conformal_evaluation.mean_size, width));
    let direct = ConformalRegressor::fit(
        &ConformalParams::with_coverage(level).check()?,
        &cm,
        &cs,
        &cy,
    )?
    .evaluate(&mean, &std, &y)?;
    assert_eq!(c.conformal_evaluation, direct);

    // σ scaling fitted on the calibration rows only, scored by PICP and MACE on the test rows.
    let s = fit_sigma_scale(&cm, &cs, &cy)?;
    assert_eq!(c.sigma_scaling, s);
    let scaled: Vec<f64> = std.iter().map(|v| v * s.scale).collect();
    let sg = prediction_interval_coverage(&mean, &scaled, &y, level)?;
    assert!(close(c.sigma_scaled.picp, sg.picp) && close(c.sigma_scaled.mpiw, sg.mpiw));
    let opts = RegressionConfig::default();
    let m_scaled = metrics::regression_metrics(&mean, &scaled, &y, &opts)?;
    assert!(close(c.mace_sigma_scaled, m_scaled.mace));
    assert!(close(c.mace, report.regression[0].metrics.mace));
    // The calibration data is under-dispersed by 1.6: σ scaling finds about that, and moves
    // the coverage towards the target.
    assert!(s.scale > 1.3 && s.scale < 1.9, "{}", s.scale);
    assert!((c.sigma_scaled.picp - level).abs() < (c.gaussian.picp - level).abs());

    // Isotonic quantile recalibration: coverage of its intervals counted here.
    let r = QuantileRecalibrator::fit(&cm, &cs, &cy)?;
    let iv = r.intervals(&mean, &std, level)?;
    let inside = (0..150)
        .filter(|&i| iv[i].0 <= y[i] && y[i] <= iv[i].1)
        .count();
    assert!(close(c.isotonic.picp, inside as f64 / 150.0));
    let curve = r.calibration_curve(&mean, &std, &y, opts.calibration_points())?;
    assert!(close(
        c.mace_isotonic,
        metrics::mean_absolute_calibration_error(&curve)
    ));
    // Conditional coverage: the Gaussian intervals' coverage per 5 equal-count σ bins, by hand.
    let mut order: Vec<usize> = (0..150).collect();
    order.sort_by(|&a, &b| std[a].total_cmp(&std[b]));
    let z = 1.6448536269514722;
    for (b, chunk) in order.chunks(30).enumerate() {
        let hits = chunk
            .iter()
            .filter(|&&i| (y[i] - mean[i]).abs() <= z * std[i])
            .count();
        let bin = &c.conditional_gaussian.bins[b];
        assert_eq!(bin.count, 30);
        assert!(close(bin.coverage, hits as f64 / 30.0), "bin {b}");
        let hits = chunk
            .iter()
            .filter(|&&i| (y[i] - mean[i]).abs() <= q * std[i])
            .count();
        assert!(close(
            c.conditional_conformal.bins[b].coverage,
            hits as f64 / 30.0
        ));
    }
    Ok(())
}

#[test]
fn regression_sections_are_written_with_what_they_were_fitted_on() -> Result<()> {
    let (builder, _) = regression_report(0.8);
    let root = tempfile::tempdir()?;
    let files = builder.write(root.path().join("rep"))?;
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&files.report_json)?)?;
    let c = &report.regression_calibration[0];
    let md = std::fs::read_to_string(&files.markdown)?;
    let html = std::fs::read_to_string(&files.html)?;
    for text in [&md, &html] {
        assert!(text.contains("Conformal and Gaussian intervals at 80%"));
        assert!(text.contains("Recalibration of regression quantiles"));
        assert!(text.contains("fitted on the toy hold-out, 80 rows"));
    }
    // The table shows the report's own numbers.
    assert!(md.contains(&format!("{:.4}", c.conformal_evaluation.coverage)));
    assert!(md.contains(&format!("{:.4}", c.sigma_scaling.scale)));
    assert!(files
        .plots
        .iter()
        .any(|p| p.files.name == "conditional_coverage" && p.files.png.exists()));
    // metrics.json: the same numbers under the columns' keys.
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&files.metrics_json)?)?;
    assert_eq!(
        m["conformal_coverage"].as_f64().unwrap(),
        c.conformal_evaluation.coverage
    );
    assert_eq!(m["gaussian_coverage"].as_f64().unwrap(), c.gaussian.picp);
    assert_eq!(m["isotonic_coverage"].as_f64().unwrap(), c.isotonic.picp);
    assert_eq!(
        m["mace_sigma_scaled"].as_f64().unwrap(),
        c.mace_sigma_scaled
    );
    assert_eq!(m["n_calibration"], 80);
    assert_eq!(m["target_coverage"].as_f64().unwrap(), 0.8);
    Ok(())
}

#[test]
fn classification_numbers_equal_the_metrics_computed_directly() -> Result<()> {
    let (probs, labels) = classification_data(300, 3);
    let (cp, cl) = classification_data(200, 4);
    let setup =
        CalibrationSetup::new(0.9, "the toy hold-out")?.with_set_score(SetScore::raps(0.05, 1)?)?;
    let opts = ClassificationParams::with_bins(10).check()?;
    let report = ReportBuilder::with_config("toy", opts.clone(), RegressionConfig::default())
        .with_calibration(setup)?
        .classification_method_calibrated("SWAG", &probs, 3, &labels, &cp, &cl)?
        .report();
    let c = &report.classification_calibration[0];
    assert_eq!(c.n_calibration, 200);

    // Sets, fitted on the calibration rows only.
    let config = ConformalParams::with_coverage(0.9).check()?;
    let score = SetScore::raps(0.05, 1)?;
    let sets = ConformalClassifier::fit(&config, score, &cp, 3, &cl)?;
    assert_eq!(c.sets, sets);
    let predicted = sets.sets(&probs)?;
    let covered = (0..300)
        .filter(|&i| predicted[i].contains(&(labels[i] as usize)))
        .count();
    assert!(close(c.set_evaluation.coverage, covered as f64 / 300.0));
    let size = predicted.iter().map(Vec::len).sum::<usize>() as f64 / 300.0;
    assert!(close(c.set_evaluation.mean_size, size));

    // Raw ECE is the report's own.
    assert_eq!(c.ece, report.classification[0].metrics.ece);

    // Temperature on ln p of the calibration rows; its ECE through the classification metrics.
    let logits = |p: &[f64]| -> Vec<f64> { p.iter().map(|v| v.max(opts.nll_eps()).ln()).collect() };
    let t = fit_temperature(&logits(&cp), 3, &cl)?;
    assert_eq!(c.temperature, t);
    let scaled = metrics::apply_temperature(&logits(&probs), 3, t.temperature)?;
    let m = metrics::classification_metrics(&scaled, 3, &labels, &opts)?;
    assert!(
        close(c.ece_temperature, m.ece),
        "{} {}",
        c.ece_temperature,
        m.ece
    );
    // Over-confident data: T > 1, and the ECE falls.
    assert!(t.temperature > 1.0);
    assert!(c.ece_temperature < c.ece);

    // Isotonic and histogram binning of the top-label confidence.
    let (cal_conf, cal_ok) = metrics::top_label(&cp, 3, &cl)?;
    let (conf, ok) = metrics::top_label(&probs, 3, &labels)?;
    let iso = fit_isotonic_confidence(&cal_conf, &cal_ok)?;
    let iso_conf: Vec<f64> = conf.iter().map(|&v| iso.predict(v)).collect();
    assert!(close(
        c.ece_isotonic,
        calibration_bins(&iso_conf, &ok, 10)?.ece
    ));
    let hist = HistogramBinning::fit(&cal_conf, &cal_ok, 10)?;
    let hist_conf = hist.apply(&conf)?;
    assert!(close(
        c.ece_histogram,
        calibration_bins(&hist_conf, &ok, 10)?.ece
    ));

    // Written: the two classification sections, with what they were fitted on.
    let root = tempfile::tempdir()?;
    let files = ReportBuilder::with_config("toy", opts, RegressionConfig::default())
        .with_calibration(CalibrationSetup::new(0.9, "the toy hold-out")?.with_set_score(score)?)?
        .classification_method_calibrated("SWAG", &probs, 3, &labels, &cp, &cl)?
        .write(root.path().join("rep"))?;
    let md = std::fs::read_to_string(&files.markdown)?;
    assert!(md.contains("Conformal prediction sets at 90% (RAPS, λ = 0.05, k_reg = 1)"));
    assert!(md.contains("Recalibration of confidence"));
    assert!(md.contains("fitted on the toy hold-out, 200 rows"));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&files.metrics_json)?)?;
    assert_eq!(
        m["set_coverage"].as_f64().unwrap(),
        c.set_evaluation.coverage
    );
    assert_eq!(m["ece_histogram"].as_f64().unwrap(), c.ece_histogram);
    // No σ for classification: no conditional-coverage plot.
    assert!(files
        .plots
        .iter()
        .all(|p| p.files.name != "conditional_coverage"));
    Ok(())
}

#[test]
fn without_calibration_data_the_report_says_nothing_about_it() -> Result<()> {
    let (mean, std, y) = regression_data(50, 5);
    let (probs, labels) = classification_data(50, 6);
    let root = tempfile::tempdir()?;
    // A setup alone (no calibration predictions) adds nothing either.
    for with_setup in [false, true] {
        let mut b = ReportBuilder::new("toy");
        if with_setup {
            b = b.with_calibration(CalibrationSetup::new(0.9, "unused")?)?;
        }
        let dir = root.path().join(format!("rep{with_setup}"));
        let files = b
            .regression_method("SWAG", &mean, &std, &y)?
            .classification_method("SWAG", &probs, 3, &labels)?
            .write(&dir)?;
        let report: Report = serde_json::from_str(&std::fs::read_to_string(&files.report_json)?)?;
        assert!(report.calibration.is_none());
        assert!(report.regression_calibration.is_empty());
        assert!(report.classification_calibration.is_empty());
        let md = std::fs::read_to_string(&files.markdown)?;
        let html = std::fs::read_to_string(&files.html)?;
        let json = std::fs::read_to_string(&files.metrics_json)?
            + &std::fs::read_to_string(&files.report_json)?;
        for text in [&md, &html, &json] {
            for word in [
                "onformal",
                "ecalibration",
                "calibration_coverage",
                "n_calibration",
            ] {
                assert!(
                    !text.contains(word),
                    "`{word}` in a report without calibration data"
                );
            }
        }
        assert!(files
            .plots
            .iter()
            .all(|p| p.files.name != "conditional_coverage"));
    }
    Ok(())
}

#[test]
fn bad_calibration_input_names_the_parameter() -> Result<()> {
    for level in [0.0, 1.0, 1.5, -0.1, f64::NAN] {
        let e = CalibrationSetup::new(level, "hold-out").unwrap_err();
        assert!(e.to_string().contains("coverage"), "{e}");
    }
    let e = CalibrationSetup::new(0.9, " ").unwrap_err();
    assert!(e.to_string().contains("calibration part"), "{e}");
    let e = CalibrationSetup::new(0.9, "x")?
        .with_sigma_bins(0)
        .unwrap_err();
    assert!(e.to_string().contains("sigma_bins"), "{e}");
    let e = CalibrationSetup::new(0.9, "x")?
        .with_set_score(SetScore::Raps {
            lambda: -1.0,
            k_reg: 1,
        })
        .unwrap_err();
    assert!(e.to_string().contains("lambda"), "{e}");

    let (mean, std, y) = regression_data(60, 7);
    let (cm, cs, cy) = regression_data(40, 8);
    let setup = CalibrationSetup::new(0.9, "hold-out")?;
    let calibrated = |cal: GaussianPredictions| {
        ReportBuilder::new("toy")
            .with_calibration(setup.clone())
            .unwrap()
            .regression_method_calibrated("SWAG", &mean, &std, &y, cal)
            .err()
            .expect("refused")
            .to_string()
    };
    // Calibration arrays of the wrong length: the calibration input is named.
    let e = calibrated(GaussianPredictions {
        mean: &cm,
        std: &cs[..39],
        targets: &cy,
    });
    assert!(e.contains("calibration std"), "{e}");
    let e = calibrated(GaussianPredictions {
        mean: &cm,
        std: &cs,
        targets: &cy[..30],
    });
    assert!(e.contains("calibration targets"), "{e}");
    // Too few calibration rows for split-conformal.
    let e = calibrated(GaussianPredictions {
        mean: &cm[..10],
        std: &cs[..10],
        targets: &cy[..10],
    });
    assert!(e.contains("calibration set"), "{e}");

    let (probs, labels) = classification_data(60, 9);
    let (cp, cl) = classification_data(40, 10);
    let e = ReportBuilder::new("toy")
        .with_calibration(setup.clone())?
        .classification_method_calibrated("SWAG", &probs, 3, &labels, &cp[..119], &cl)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("calibration probabilities"), "{e}");
    let e = ReportBuilder::new("toy")
        .with_calibration(setup.clone())?
        .classification_method_calibrated("SWAG", &probs, 3, &labels, &cp, &cl[..39])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("calibration labels"), "{e}");

    // Calibration predictions need a setup, fixed before any method.
    let e = ReportBuilder::new("toy")
        .classification_method_calibrated("SWAG", &probs, 3, &labels, &cp, &cl)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("calibration"), "{e}");
    let e = ReportBuilder::new("toy")
        .regression_method("SGD", &mean, &std, &y)?
        .with_calibration(setup)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("calibration"), "{e}");
    Ok(())
}
