//! The report library: metrics.json layouts and hand-computed values, the Markdown and HTML
//! files (best values marked, plots inline, conventions), and atomic writing.

use anyhow::Result;
use candle_swag::metrics::{ClassificationParams, RegressionConfig};
use candle_swag_report::plot::PredictiveBand;
use candle_swag_report::report::{Report, ReportBuilder};
use serde_json::Value;

/// Four rows, two classes, computed by hand:
/// confidences 0.9 (correct), 0.8 (correct), 0.6 (wrong), 0.7 (wrong).
const PROBS: [f64; 8] = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7];
const LABELS: [u32; 4] = [0, 1, 1, 0];

/// A second method, better calibrated: confidences 0.6 (correct), 0.6 (correct), 0.55
/// (wrong), 0.55 (wrong).
const PROBS_B: [f64; 8] = [0.6, 0.4, 0.4, 0.6, 0.55, 0.45, 0.45, 0.55];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// The metric cells (`<td>...</td>`, method cell excluded) of `method`'s row in table `id`.
fn table_row(html: &str, id: &str, method: &str) -> Vec<String> {
    let table = &html[html.find(&format!("id=\"{id}\"")).unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let start = table.find(&format!("<tr><td>{method}</td>")).unwrap();
    let row = &table[start..];
    let row = &row[..row.find("</tr>").unwrap()];
    row.split("<td")
        .skip(2)
        .map(|c| format!("<td{c}"))
        .collect()
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn single_classification_method_has_top_level_metrics() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("rep");
    let files = ReportBuilder::new("toy")
        .classification_method("SWAG", &PROBS, 2, &LABELS)?
        .write(&dir)?;
    let m = read_json(&files.metrics_json);
    let get = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("key {k}"));
    assert!(close(get("accuracy"), 0.5));
    let nll = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln() + 0.3f64.ln()) / 4.0;
    assert!(close(get("nll"), nll));
    // Brier: (0.02 + 0.08 + 0.72 + 0.98) / 4.
    assert!(close(get("brier"), 0.45));
    // Each confidence sits alone in one of 15 bins: gaps 0.1, 0.2, 0.6, 0.7.
    assert!(close(get("ece"), 0.4));
    assert!(close(get("mce"), 0.7));
    assert_eq!(m["method"], "SWAG");
    assert_eq!(m["n"], 4);
    assert_eq!(m["n_bins"], 15);
    // AURC (mean risk): order 0.9 ok, 0.8 ok, 0.7 wrong, 0.6 wrong -> risks 0, 0, 1/3, 1/2.
    assert!(close(get("aurc"), (1.0 / 3.0 + 0.5) / 4.0));

    for f in [&files.report_json, &files.markdown, &files.html] {
        assert!(f.exists(), "{} missing", f.display());
    }
    let names: Vec<&str> = files.plots.iter().map(|p| p.files.name.as_str()).collect();
    assert_eq!(names, vec!["reliability", "risk_coverage"]);
    for p in &files.plots {
        assert!(p.files.png.exists() && p.files.svg.exists());
        assert_eq!(p.files.png.parent().unwrap(), dir);
    }
    // report.json round-trips into a Report.
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&files.report_json)?)?;
    assert_eq!(report.dataset, "toy");
    assert_eq!(report.classification.len(), 1);
    assert_eq!(report.classification[0].reliability.bins.len(), 15);
    // Nothing but the report directory was created next to it.
    assert_eq!(std::fs::read_dir(root.path())?.count(), 1);
    Ok(())
}

#[test]
fn several_methods_are_keyed_and_best_values_marked() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("rep");
    let mean = [0.0, 1.0, 2.0, 3.0];
    let std = [1.0, 1.0, 2.0, 0.5];
    let y = [0.5, 1.0, 1.0, 4.0];
    let files = ReportBuilder::with_config(
        "toy <data>",
        ClassificationParams::with_bins(10).check()?,
        RegressionConfig::default(),
    )
    .classification_method("SGD", &PROBS, 2, &LABELS)?
    .classification_method("SWAG", &PROBS_B, 2, &LABELS)?
    .regression_method("SWAG", &mean, &std, &y)?
    .write(&dir)?;
    let m = read_json(&files.metrics_json);
    let cls = &m["classification"];
    assert!(close(cls["SGD"]["ece"].as_f64().unwrap(), 0.4));
    // SWAG: bins of width 0.1 -> 0.55 and 0.6 share bin (0.5, 0.6]: confidence 0.575,
    // accuracy 0.5 -> ECE 0.075.
    assert!(close(cls["SWAG"]["ece"].as_f64().unwrap(), 0.075));
    assert_eq!(cls["SWAG"]["n_bins"], 10);
    // Regression: RMSE = sqrt((0.25 + 0 + 1 + 1) / 4) = 0.75.
    assert!(close(m["regression"]["rmse"].as_f64().unwrap(), 0.75));
    assert_eq!(m["regression"]["method"], "SWAG");

    let html = std::fs::read_to_string(&files.html)?;
    // Self-contained: every plot inline as SVG, nothing loaded from elsewhere.
    assert_eq!(html.matches("<svg").count(), files.plots.len());
    assert!(files.plots.len() >= 6);
    assert!(
        !html.contains("<img")
            && !html.contains("src=")
            && !html.contains("http://www.w3.org/1999/xlink\" href")
    );
    assert!(!html.contains("<link"));
    // The dataset name is escaped.
    assert!(html.contains("toy &lt;data&gt;"));
    // ECE column (the fourth metric): SWAG (0.0750) is best, SGD (0.4000) is not.
    let sgd = table_row(&html, "table-classification", "SGD");
    let swag = table_row(&html, "table-classification", "SWAG");
    assert_eq!(sgd[3], "<td>0.4000</td>");
    assert_eq!(swag[3], "<td class=\"best\" title=\"best\">0.0750</td>");
    // Accuracy ties (0.5 each): both marked.
    assert!(sgd[0].contains("best") && swag[0].contains("best"));
    assert!(html.contains("id=\"conventions\""));
    assert!(html.contains("right-closed"));

    let md = std::fs::read_to_string(&files.markdown)?;
    assert!(md.contains("| **0.0750** |"));
    assert!(md.contains("| 0.4000 |"));
    assert!(md.contains("![reliability](reliability.png)"));
    assert!(md.contains("## Conventions"));
    // Both the side-by-side and the overlaid reliability plots exist for several methods.
    assert!(dir.join("reliability_overlay.svg").exists());
    assert!(dir.join("intervals_swag.png").exists());
    Ok(())
}

#[test]
fn ood_and_band_plots_and_tensor_inputs() -> Result<()> {
    use candle_core::{Device, Tensor};
    let root = tempfile::tempdir()?;
    let dir = root.path().join("rep");
    let probs = Tensor::from_vec(PROBS.map(|p| p as f32).to_vec(), (4, 2), &Device::Cpu)?;
    let labels = Tensor::from_vec(vec![0i64, 1, 1, 0], 4, &Device::Cpu)?;
    let x = [0.0, 0.5, 1.0];
    let files = ReportBuilder::new("toy")
        .classification_tensor("SWAG", &probs, &labels)?
        .ood_method("SWAG", "Entropy (nats)", &[0.1, 0.2, 0.3], &[0.25, 0.4])?
        .predictive_band(
            "SWAG",
            PredictiveBand {
                x: x.to_vec(),
                mean: x.to_vec(),
                std: vec![0.1; 3],
                data_x: x.to_vec(),
                data_y: x.to_vec(),
            },
        )?
        .write(&dir)?;
    let m = read_json(&files.metrics_json);
    // In a single-method report the OOD results join the method's metrics.
    assert!(close(m["accuracy"].as_f64().unwrap(), 0.5));
    // AUROC: pairs (out > in): 0.25 beats 0.1, 0.2 (2 of 3); 0.4 beats all 3 -> 5/6.
    assert!(close(m["ood_auroc"].as_f64().unwrap(), 5.0 / 6.0));
    for name in ["ood_scores_swag", "roc", "band_swag"] {
        assert!(dir.join(format!("{name}.png")).exists(), "{name}");
    }
    Ok(())
}

#[test]
fn errors_leave_nothing_behind() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("rep");
    // No methods: nothing to write.
    assert!(ReportBuilder::new("x").write(&dir).is_err());
    assert!(!dir.exists());
    // Duplicate names and bad predictions are refused when added.
    let b = ReportBuilder::new("x").classification_method("A", &PROBS, 2, &LABELS)?;
    assert!(b.classification_method("A", &PROBS, 2, &LABELS).is_err());
    let bad = [0.9, 0.2, 0.5, 0.5];
    let err = ReportBuilder::new("x")
        .classification_method("A", &bad, 2, &[0u32, 1])
        .err()
        .unwrap();
    assert!(err.to_string().contains("row 1"), "{err}");
    assert!(ReportBuilder::new("x")
        .regression_method("A", &[1.0], &[0.0], &[1.0])
        .is_err());
    // A band whose data columns differ in length is refused when added.
    let ragged = PredictiveBand {
        x: vec![0.0],
        mean: vec![0.0],
        std: vec![1.0],
        data_x: vec![0.0, 1.0],
        data_y: vec![0.0],
    };
    let err = ReportBuilder::new("x")
        .predictive_band("A", ragged)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("2 data x values but 1 data y"),
        "{err}"
    );

    // An existing report is replaced only by a complete one.
    ReportBuilder::new("x")
        .classification_method("A", &PROBS, 2, &LABELS)?
        .write(&dir)?;
    let before = std::fs::read(dir.join("metrics.json"))?;
    assert!(ReportBuilder::new("x").write(&dir).is_err());
    assert_eq!(std::fs::read(dir.join("metrics.json"))?, before);
    assert_eq!(std::fs::read_dir(root.path())?.count(), 1);
    Ok(())
}
