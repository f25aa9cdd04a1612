//! Every value of tests/fixtures/calibration.json (hand-checked values and uncertainty-toolbox's
//! published ones), checked against the metrics module.

use anyhow::Result;
use candle_swag::metrics::{
    auroc, average_precision, calibration_bins, calibration_bins_equal_mass,
    calibration_bins_positive_class, calibration_bins_top_label_binary, calibration_curve,
    check_score, crps_gaussian, crps_samples, evaluate_classification, fpr_at_tpr, gaussian_nll,
    interval_score, mean_absolute_calibration_error, ood_metrics, regression_metrics,
    risk_coverage, root_mean_squared_calibration_error, sharpness, ClassificationParams,
    CrpsEstimator, CurveKind, RegressionConfig,
};
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/calibration.json"
    ))
    .expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("0/1") == 1)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// The fixture's hand values are printed with 10 decimals.
const HAND_TOL: f64 = 1e-9;
/// uncertainty-toolbox values are printed with 6 decimals.
const TOOLBOX_TOL: f64 = 1e-5;

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (tolerance {tol})"
    );
}

fn case<'a>(fx: &'a Value, name_part: &str) -> &'a Value {
    fx["classification"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"].as_str().expect("name").contains(name_part))
        .unwrap_or_else(|| panic!("no case named like {name_part}"))
}

#[test]
fn every_equal_width_case_matches_in_f64_and_f32() -> Result<()> {
    let fx = fixture();
    let mut checked = 0;
    for c in fx["classification"].as_array().expect("cases") {
        if c.get("confidence").is_none() {
            continue;
        }
        let name = c["name"].as_str().expect("name");
        let conf = f64s(&c["confidence"]);
        let correct = bools(&c["correct"]);
        let nb = c["bins"].as_u64().expect("bins") as usize;
        let bins = calibration_bins(&conf, &correct, nb).expect("valid");
        close(bins.ece, c["ece"].as_f64().expect("ece"), HAND_TOL, name);
        close(bins.mce, c["mce"].as_f64().expect("mce"), HAND_TOL, name);
        // The same literals read as f32 must land in the same bins (edges compared in f32).
        let conf32: Vec<f32> = conf.iter().map(|&x| x as f32).collect();
        let bins32 = calibration_bins(&conf32, &correct, nb).expect("valid");
        let counts: Vec<usize> = bins.bins.iter().map(|b| b.count).collect();
        let counts32: Vec<usize> = bins32.bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, counts32, "{name}: f32 binning differs");
        close(bins32.ece, c["ece"].as_f64().expect("ece"), 1e-6, name);
        checked += 1;
    }
    assert_eq!(checked, 5);
    Ok(())
}

#[test]
fn edge_values_land_in_the_bin_they_close() -> Result<()> {
    let fx = fixture();
    let c = case(&fx, "decimal edge 0.3");
    let bins = calibration_bins(&f64s(&c["confidence"]), &bools(&c["correct"]), 10)?;
    // 0.25 and 0.3 both belong to (0.2, 0.3], bin index 2.
    assert_eq!(bins.bins[2].count, 2);
    let c = case(&fx, "exactly 1.0");
    let bins = calibration_bins(&f64s(&c["confidence"]), &bools(&c["correct"]), 10)?;
    assert_eq!(bins.bins.len(), 10);
    assert_eq!(bins.bins[9].count, 2);
    Ok(())
}

#[test]
fn bin_edges_as_probability_matrix() -> Result<()> {
    let fx = fixture();
    let c = case(&fx, "values on bin edges");
    let rows: Vec<f64> = c["as_probabilities"]["probs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f64s)
        .collect();
    let labels = usizes(&c["as_probabilities"]["labels"]);
    let options = ClassificationParams {
        n_bins: 4,
        ..Default::default()
    }
    .check()?;
    let eval = evaluate_classification(&rows, 3, &labels, &options)?;
    close(
        eval.metrics.ece,
        c["ece"].as_f64().unwrap(),
        HAND_TOL,
        "ece",
    );
    close(
        eval.metrics.mce,
        c["mce"].as_f64().unwrap(),
        HAND_TOL,
        "mce",
    );
    close(eval.metrics.accuracy, 2.0 / 3.0, 1e-15, "accuracy");
    // Hand values: NLL = −(ln 0.3 + ln 0.6 + ln 0.75)/3.
    let nll = -((0.3f64).ln() + (0.6f64).ln() + (0.75f64).ln()) / 3.0;
    close(eval.metrics.nll, nll, 1e-12, "nll");
    // Brier: row 1 (label 1): .25 + .49 + .04; row 2 (label 2): .04 + .04 + .16;
    // row 3 (label 0): .0625 + .015625 + .015625.
    let brier = (0.78 + 0.24 + 0.09375) / 3.0;
    close(eval.metrics.brier, brier, 1e-12, "brier");
    // The same rows as f32.
    let rows32: Vec<f32> = rows.iter().map(|&x| x as f32).collect();
    let m32 = evaluate_classification(&rows32, 3, &labels, &options)?;
    close(m32.metrics.ece, c["ece"].as_f64().unwrap(), 1e-6, "ece f32");
    Ok(())
}

#[test]
fn equal_mass_case() -> Result<()> {
    let fx = fixture();
    let c = case(&fx, "equal-width vs equal-mass");
    let nb = c["equal_mass_bins"].as_u64().unwrap() as usize;
    let bins = calibration_bins_equal_mass(&f64s(&c["confidence"]), &bools(&c["correct"]), nb)?;
    close(
        bins.ece,
        c["ece_equal_mass"].as_f64().unwrap(),
        HAND_TOL,
        "ece_equal_mass",
    );
    assert_eq!(bins.bins.len(), 2);
    assert_eq!((bins.bins[0].lower, bins.bins[0].upper), (0.6, 0.8));
    Ok(())
}

#[test]
fn binary_positive_class_and_top_label() -> Result<()> {
    let fx = fixture();
    let c = case(&fx, "binary");
    let p = f64s(&c["p_positive"]);
    let y = usizes(&c["labels"]);
    let nb = c["bins"].as_u64().unwrap() as usize;
    let pos = calibration_bins_positive_class(&p, &y, nb)?;
    close(
        pos.ece,
        c["ece_positive_class"].as_f64().unwrap(),
        HAND_TOL,
        "positive class",
    );
    let top = calibration_bins_top_label_binary(&p, &y, nb)?;
    close(
        top.ece,
        c["ece_top_label"].as_f64().unwrap(),
        HAND_TOL,
        "top label",
    );
    Ok(())
}

#[test]
fn kumar_debiased_l2_one_bin() -> Result<()> {
    let fx = fixture();
    let c = case(&fx, "debiased L2");
    let p = f64s(&c["p_positive"]);
    let y = usizes(&c["labels"]);
    let bins = calibration_bins_positive_class(&p, &y, 1)?;
    close(
        bins.l2_calibration_error(false),
        c["l2_plugin"].as_f64().unwrap(),
        HAND_TOL,
        "plugin",
    );
    close(
        bins.l2_calibration_error(true),
        c["l2_debiased"].as_f64().unwrap(),
        HAND_TOL,
        "debiased",
    );
    let mass = calibration_bins_equal_mass(&p, &y.iter().map(|&k| k == 1).collect::<Vec<_>>(), 1)?;
    close(
        mass.l2_calibration_error(true),
        c["l2_debiased"].as_f64().unwrap(),
        HAND_TOL,
        "mass",
    );
    Ok(())
}

#[test]
fn ood_values() -> Result<()> {
    let fx = fixture();
    let o = &fx["ood"];
    let s = f64s(&o["scores"]);
    let y = bools(&o["is_ood"]);
    close(
        auroc(&s, &y)?,
        o["auroc"].as_f64().unwrap(),
        HAND_TOL,
        "auroc",
    );
    close(
        average_precision(&s, &y)?,
        o["average_precision"].as_f64().unwrap(),
        HAND_TOL,
        "ap",
    );
    close(
        fpr_at_tpr(&s, &y, 0.95)?,
        o["fpr_at_95_tpr"].as_f64().unwrap(),
        HAND_TOL,
        "fpr95",
    );
    let all = ood_metrics(&s, &y)?;
    assert_eq!((all.n_in, all.n_out), (4, 3));
    close(all.auroc, o["auroc"].as_f64().unwrap(), HAND_TOL, "auroc");
    Ok(())
}

#[test]
fn selective_values() -> Result<()> {
    let fx = fixture();
    let sel = &fx["selective"];
    let conf = f64s(&sel["confidence"]);
    let err = bools(&sel["error"]);
    let curve = risk_coverage(&conf, &err)?;
    close(
        curve.aurc,
        sel["aurc_mean_risk"].as_f64().unwrap(),
        HAND_TOL,
        "aurc",
    );
    close(
        curve.aurc_trapezoid(),
        sel["aurc_trapezoid_over_1_minus_1_over_n"]
            .as_f64()
            .unwrap(),
        HAND_TOL,
        "trapezoid",
    );
    assert_eq!(curve.risk, vec![0.0, 0.5, 1.0 / 3.0, 0.5]);
    Ok(())
}

#[test]
fn uncertainty_toolbox_gaussian_values() -> Result<()> {
    let fx = fixture();
    let r = &fx["regression_gaussian"];
    let (m, s, y) = (f64s(&r["mean"]), f64s(&r["std"]), f64s(&r["y"]));
    let want = |k: &str| r[k].as_f64().unwrap();
    close(sharpness(&s)?, want("sharpness"), TOOLBOX_TOL, "sharpness");
    close(gaussian_nll(&m, &s, &y)?, want("nll"), TOOLBOX_TOL, "nll");
    close(
        crps_gaussian(&m, &s, &y)?,
        want("crps"),
        TOOLBOX_TOL,
        "crps",
    );
    close(
        check_score(&m, &s, &y, &RegressionConfig::default())?,
        want("check_score"),
        TOOLBOX_TOL,
        "check",
    );
    close(
        interval_score(&m, &s, &y, &RegressionConfig::default())?,
        want("interval_score"),
        TOOLBOX_TOL,
        "interval score",
    );
    let curve = calibration_curve(&m, &s, &y, 100, CurveKind::Interval)?;
    close(
        mean_absolute_calibration_error(&curve),
        want("mace_interval"),
        TOOLBOX_TOL,
        "mace",
    );
    close(
        root_mean_squared_calibration_error(&curve),
        want("rmsce_interval"),
        TOOLBOX_TOL,
        "rmsce",
    );
    close(
        curve.miscalibration_area(),
        want("miscalibration_area_interval"),
        TOOLBOX_TOL,
        "area",
    );
    // The collected struct reports the same numbers.
    let all = regression_metrics(&m, &s, &y, &RegressionConfig::default())?;
    close(all.nll, want("nll"), TOOLBOX_TOL, "nll");
    close(all.crps, want("crps"), TOOLBOX_TOL, "crps");
    close(all.mace, want("mace_interval"), TOOLBOX_TOL, "mace");
    close(all.rmsce, want("rmsce_interval"), TOOLBOX_TOL, "rmsce");
    close(
        all.miscalibration_area,
        want("miscalibration_area_interval"),
        TOOLBOX_TOL,
        "area",
    );
    close(all.check_score, want("check_score"), TOOLBOX_TOL, "check");
    close(
        all.interval_score,
        want("interval_score"),
        TOOLBOX_TOL,
        "interval",
    );
    close(all.sharpness, want("sharpness"), TOOLBOX_TOL, "sharpness");
    Ok(())
}

#[test]
fn crps_sample_estimators() -> Result<()> {
    let fx = fixture();
    let c = &fx["crps_samples"];
    let samples = f64s(&c["samples"]);
    let y = [c["y"].as_f64().unwrap()];
    // Samples are [S, N] = [2, 1].
    let fair = crps_samples(&samples, samples.len(), &y, CrpsEstimator::Fair)?;
    let plugin = crps_samples(&samples, samples.len(), &y, CrpsEstimator::PlugIn)?;
    close(fair, c["fair"].as_f64().unwrap(), HAND_TOL, "fair");
    close(plugin, c["plugin"].as_f64().unwrap(), HAND_TOL, "plugin");
    Ok(())
}
