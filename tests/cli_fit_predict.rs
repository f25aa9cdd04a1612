//! `swag fit` → `swag predict` → `swag report` on small subsets of the bundled data, through
//! the real binary: the predictions file has one row per input row and the documented columns,
//! its numbers are consistent with each other, and bad input gives a one-line error.

use std::path::Path;
use std::process::Command;

fn swag(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swag"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run swag")
}

fn ok(args: &[&str]) -> String {
    let out = swag(args);
    assert!(
        out.status.success(),
        "swag {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first `rows` data rows of a bundled file, header included.
fn subset(src: &str, rows: usize, dst: &Path) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(src)).unwrap();
    let lines: Vec<&str> = text.lines().take(rows + 1).collect();
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn classification_fit_predict_columns_and_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits.csv");
    subset("data/digits.csv", 150, &data);
    let run = dir.path().join("run");
    let d = data.to_str().unwrap();
    let stdout = ok(&[
        "fit",
        "--data",
        d,
        "--target",
        "label",
        "--task",
        "classification",
        "--split-column",
        "split",
        "--hidden",
        "16",
        "--epochs",
        "4",
        "--rank",
        "3",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(stdout.contains("2 SWAG snapshots"), "{stdout}");
    for f in [
        "config.json",
        "weights.safetensors",
        "posterior.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    let preds = dir.path().join("preds.csv");
    ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        d,
        "--samples",
        "5",
        "--out",
        preds.to_str().unwrap(),
    ]);
    let (header, rows) = read_csv(&preds);
    let mut expected: Vec<String> = (0..10).map(|k| format!("prob_{k}")).collect();
    expected.extend(["pred", "entropy", "expected_entropy", "mutual_info"].map(String::from));
    assert_eq!(header, expected);
    // One row per input row (train and test rows alike), in order.
    assert_eq!(rows.len(), 150);
    for row in &rows {
        let p: Vec<f64> = row[..10].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let best = (0..10).fold(0, |b, k| if p[k] > p[b] { k } else { b });
        assert_eq!(row[10], best.to_string());
        let h: f64 = -p
            .iter()
            .filter(|&&x| x > 0.0)
            .map(|x| x * x.ln())
            .sum::<f64>();
        let entropy: f64 = row[11].parse().unwrap();
        let expected_entropy: f64 = row[12].parse().unwrap();
        let mi: f64 = row[13].parse().unwrap();
        assert!((h - entropy).abs() < 1e-9, "{h} vs {entropy}");
        assert!(mi >= 0.0 && (mi - (entropy - expected_entropy).max(0.0)).abs() < 1e-12);
    }
    // Same seed, same predictions; the file is rewritten in place.
    let before = std::fs::read(&preds).unwrap();
    ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        d,
        "--samples",
        "5",
        "--out",
        preds.to_str().unwrap(),
    ]);
    assert_eq!(before, std::fs::read(&preds).unwrap());
}

#[test]
fn regression_fit_predict_report_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("diabetes.csv");
    subset("data/diabetes.csv", 120, &data);
    let d = data.to_str().unwrap();
    let run = dir.path().join("run");
    ok(&[
        "fit",
        "--data",
        d,
        "--target",
        "target",
        "--task",
        "regression",
        "--split-column",
        "split",
        "--hidden",
        "8",
        "--epochs",
        "6",
        "--rank",
        "3",
        "--lr",
        "0.01",
        "--tune-scale",
        "--out",
        run.to_str().unwrap(),
    ]);
    // Predict on a file without the target and split columns.
    let (header, rows) = read_csv(&data);
    let keep: Vec<usize> = (0..header.len())
        .filter(|&j| header[j] != "target" && header[j] != "split")
        .collect();
    let features_only = dir.path().join("x.csv");
    let mut text = keep
        .iter()
        .map(|&j| header[j].clone())
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for r in &rows {
        text += &(keep
            .iter()
            .map(|&j| r[j].clone())
            .collect::<Vec<_>>()
            .join(",")
            + "\n");
    }
    std::fs::write(&features_only, text).unwrap();
    let preds = dir.path().join("preds.csv");
    ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        features_only.to_str().unwrap(),
        "--samples",
        "6",
        "--scale",
        "0.5",
        "--out",
        preds.to_str().unwrap(),
    ]);
    let (pheader, prows) = read_csv(&preds);
    assert_eq!(pheader, ["mean", "std", "std_epistemic", "std_aleatoric"]);
    assert_eq!(prows.len(), 120);
    let num = |r: &Vec<String>, j: usize| -> f64 { r[j].parse().unwrap() };
    for r in &prows {
        let (s, e, a) = (num(r, 1), num(r, 2), num(r, 3));
        assert!(a > 0.0 && e >= 0.0);
        assert!((s * s - (e * e + a * a)).abs() < 1e-9 * s * s);
    }
    // The report of these predictions: its RMSE is the RMSE of the mean column.
    let report = dir.path().join("report");
    let mean_arg = format!("{}:mean", preds.display());
    let std_arg = format!("{}:std", preds.display());
    let targets_arg = format!("{}:target", data.display());
    ok(&[
        "report",
        "--mean",
        &mean_arg,
        "--std",
        &std_arg,
        "--targets",
        &targets_arg,
        "--out",
        report.to_str().unwrap(),
    ]);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("metrics.json")).unwrap()).unwrap();
    let ty = header.iter().position(|h| h == "target").unwrap();
    let mse = prows
        .iter()
        .zip(&rows)
        .map(|(p, r)| (num(p, 0) - r[ty].parse::<f64>().unwrap()).powi(2))
        .sum::<f64>()
        / 120.0;
    let rmse = metrics["rmse"]
        .as_f64()
        .or_else(|| {
            metrics
                .as_object()
                .and_then(|m| m.values().find_map(|v| v["rmse"].as_f64()))
        })
        .expect("rmse in metrics.json");
    assert!(
        (rmse - mse.sqrt()).abs() < 1e-9 * rmse,
        "{rmse} vs {}",
        mse.sqrt()
    );
    assert!(report.join("report.html").exists());
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.csv");
    std::fs::write(&data, "a,b,y\n1,2,0\n3,oops,1\n4,5,0\n").unwrap();
    let d = data.to_str().unwrap();
    let run = dir.path().join("run");
    let out = swag(&[
        "fit",
        "--data",
        d,
        "--target",
        "y",
        "--task",
        "classification",
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("row 2") && err.contains("`b`") && err.contains("oops"),
        "{err}"
    );
    assert!(!run.exists(), "no run directory after a failed fit");

    let out = swag(&[
        "fit",
        "--data",
        d,
        "--target",
        "label",
        "--task",
        "classification",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`label`"));

    // A good run, then a prediction file lacking a feature column.
    std::fs::write(&data, "a,b,y\n1,2,0\n3,4,1\n4,5,0\n6,1,1\n").unwrap();
    ok(&[
        "fit",
        "--data",
        d,
        "--target",
        "y",
        "--task",
        "classification",
        "--hidden",
        "4",
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    let x = dir.path().join("x.csv");
    std::fs::write(&x, "a\n1\n").unwrap();
    let preds = dir.path().join("p.csv");
    let out = swag(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        x.to_str().unwrap(),
        "--out",
        preds.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`b`") && err.contains("x.csv"), "{err}");
    assert!(!preds.exists());
}
