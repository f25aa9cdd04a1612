//! `swag fit` → `swag predict` → `swag report` on small subsets of the bundled data, through
//! the real binary: the predictions file has one row per input row and the documented columns,
//! its numbers are consistent with each other, and bad input gives a one-line error.

use anyhow::Result;
use std::path::Path;
use std::process::Command;

fn swag(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swag"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run swag")
}

/// Runs `swag` with `args` followed by `extra` (the flags a test varies).
fn swag_with(args: &[&str], extra: &[&str]) -> std::process::Output {
    swag(&[args, extra].concat())
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
    let text =
        std::fs::read_to_string(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(src))
            .unwrap();
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
fn classification_fit_predict_columns_and_consistency() -> Result<()> {
    let dir = tempfile::tempdir()?;
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
        let entropy: f64 = row[11].parse()?;
        let expected_entropy: f64 = row[12].parse()?;
        let mi: f64 = row[13].parse()?;
        assert!((h - entropy).abs() < 1e-9, "{h} vs {entropy}");
        assert!(mi >= 0.0 && (mi - (entropy - expected_entropy).max(0.0)).abs() < 1e-12);
    }
    // Same seed, same predictions; the file is rewritten in place.
    let before = std::fs::read(&preds)?;
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
    assert_eq!(before, std::fs::read(&preds)?);
    Ok(())
}

#[test]
fn regression_fit_predict_report_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
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
    std::fs::write(&features_only, text)?;
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
        serde_json::from_slice(&std::fs::read(report.join("metrics.json"))?)?;
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
    Ok(())
}

#[test]
fn bad_input_gives_one_line_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("d.csv");
    std::fs::write(&data, "a,b,y\n1,2,0\n3,oops,1\n4,5,0\n")?;
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
    std::fs::write(&data, "a,b,y\n1,2,0\n3,4,1\n4,5,0\n6,1,1\n")?;
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
    std::fs::write(&x, "a\n1\n")?;
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
    Ok(())
}

/// `swag fit --calibrate-fraction` then `swag predict --coverage`: split-conformal intervals
/// are `mean ± q̂·std` with one `q̂` for every row, and cover the held-out test rows.
#[test]
fn conformal_intervals_from_calibration_rows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("data/diabetes.csv");
    let d = data.to_str().unwrap();
    let run = dir.path().join("run");
    let stdout = ok(&[
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
        "16",
        "--epochs",
        "20",
        "--rank",
        "5",
        "--lr",
        "0.01",
        "--calibrate-fraction",
        "0.3",
        "--out",
        run.to_str().unwrap(),
    ]);
    // 354 training rows, round(0.3 · 354) = 106 held out: 248 are fitted.
    assert!(stdout.contains("248"), "{stdout}");
    let preds = dir.path().join("preds.csv");
    ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        d,
        "--samples",
        "5",
        "--coverage",
        "0.9",
        "--out",
        preds.to_str().unwrap(),
    ]);
    let (header, rows) = read_csv(&preds);
    assert_eq!(
        header,
        [
            "mean",
            "std",
            "std_epistemic",
            "std_aleatoric",
            "lower",
            "upper"
        ]
    );
    let num = |r: &Vec<String>, j: usize| -> f64 { r[j].parse().unwrap() };
    let q = (num(&rows[0], 5) - num(&rows[0], 0)) / num(&rows[0], 1);
    assert!(q > 0.5 && q < 5.0, "q̂ = {q}");
    for r in &rows {
        let (m, s, lo, hi) = (num(r, 0), num(r, 1), num(r, 4), num(r, 5));
        assert!(((hi - m) / s - q).abs() < 1e-6 * q, "{r:?}");
        assert!(((m - lo) / s - q).abs() < 1e-6 * q, "{r:?}");
    }
    // Coverage of the 88 test rows (never fitted, never calibrated on): 0.9 in expectation;
    // a binomial(88, 0.9) falls below 0.78 with probability < 0.1%.
    let (dh, drows) = read_csv(&data);
    let (js, jt) = (
        dh.iter().position(|h| h == "split").unwrap(),
        dh.iter().position(|h| h == "target").unwrap(),
    );
    let (mut n, mut hit) = (0, 0);
    for (dr, pr) in drows.iter().zip(&rows) {
        if dr[js] == "test" {
            let y: f64 = dr[jt].parse()?;
            n += 1;
            hit += usize::from(num(pr, 4) <= y && y <= num(pr, 5));
        }
    }
    assert_eq!(n, 88);
    let coverage = hit as f64 / n as f64;
    assert!(coverage >= 0.78, "test coverage {coverage}");
    Ok(())
}

/// Classification sets: non-empty, most probable class first, and nested across levels.
#[test]
fn conformal_sets_are_nested_and_start_with_the_prediction() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("digits.csv");
    subset("data/digits.csv", 300, &data);
    let d = data.to_str().unwrap();
    let run = dir.path().join("run");
    ok(&[
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
        "10",
        "--rank",
        "3",
        "--calibrate-fraction",
        "0.25",
        "--out",
        run.to_str().unwrap(),
    ]);
    let mut sets = Vec::new();
    for cov in ["0.8", "0.95"] {
        let preds = dir.path().join(format!("p{cov}.csv"));
        ok(&[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--data",
            d,
            "--samples",
            "4",
            "--coverage",
            cov,
            "--out",
            preds.to_str().unwrap(),
        ]);
        let (header, rows) = read_csv(&preds);
        assert_eq!(header.last().unwrap(), "set");
        let jp = header.iter().position(|h| h == "pred").unwrap();
        let parsed: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| {
                let s: Vec<usize> = r
                    .last()
                    .unwrap()
                    .split(';')
                    .map(|v| v.parse().unwrap())
                    .collect();
                // Digits' labels are 0..9, so the label of `pred` is its class index.
                assert_eq!(s[0].to_string(), r[jp], "{r:?}");
                let mut u = s.clone();
                u.sort_unstable();
                u.dedup();
                assert!(u.len() == s.len() && s.iter().all(|&k| k < 10), "{s:?}");
                s
            })
            .collect();
        sets.push(parsed);
    }
    let mut larger = 0;
    for (a, b) in sets[0].iter().zip(&sets[1]) {
        assert!(
            a.len() <= b.len() && b[..a.len()] == a[..],
            "{a:?} vs {b:?}"
        );
        larger += usize::from(b.len() > a.len());
    }
    assert!(larger > 0, "a higher coverage must enlarge some sets");

    // RAPS: the same ranked sets, from a penalised score; bad penalties are named.
    let preds = dir.path().join("raps.csv");
    let raps = |extra: &[&str]| {
        let out = preds.to_str().unwrap();
        let base = ["predict", "--run", run.to_str().unwrap(), "--data", d];
        swag_with(
            &base,
            &[&["--samples", "4", "--out", out][..], extra].concat(),
        )
    };
    let out = raps(&["--coverage", "0.95", "--raps-lambda", "0.05"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, rows) = read_csv(&preds);
    let jp = header.iter().position(|h| h == "pred").unwrap();
    for r in &rows {
        let first = r.last().unwrap().split(';').next().unwrap();
        assert_eq!(first, r[jp], "{r:?}");
    }
    std::fs::remove_file(&preds)?;
    for (extra, needle) in [
        (&["--coverage", "0.9", "--raps-lambda=-1"][..], "lambda"),
        (&["--raps-lambda", "0.1"][..], "--coverage"),
    ] {
        let out = raps(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{err}"
        );
        assert!(!preds.exists());
    }
    Ok(())
}

#[test]
fn conformal_bad_input_gives_one_line_errors_and_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("diabetes.csv");
    subset("data/diabetes.csv", 120, &data);
    let d = data.to_str().unwrap();
    let run = dir.path().join("run");
    let fit = |fraction: &str| {
        swag(&[
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
            "4",
            "--epochs",
            "2",
            "--calibrate-fraction",
            fraction,
            "--out",
            run.to_str().unwrap(),
        ])
    };
    let one_line = |out: &std::process::Output, needle: &str| {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    };
    for f in ["0", "1", "1.5", "NaN"] {
        one_line(&fit(f), "calibrate-fraction");
        assert!(!run.exists());
    }
    // 0.1 of the 96 training rows is 10 calibration rows: fewer than 20.
    let out = fit("0.1");
    one_line(&out, "10 calibration rows");
    assert!(!run.exists());
    // A run without calibration rows, then --coverage outside (0, 1) or without calibration.
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
        "4",
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    let preds = dir.path().join("p.csv");
    let predict = |cov: &str| {
        swag(&[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--data",
            d,
            "--samples",
            "2",
            "--coverage",
            cov,
            "--out",
            preds.to_str().unwrap(),
        ])
    };
    for c in ["0", "1", "1.2"] {
        one_line(&predict(c), "coverage");
        assert!(!preds.exists());
    }
    one_line(&predict("0.9"), "--calibrate-fraction");
    assert!(!preds.exists());
    Ok(())
}

/// `--noise heteroscedastic`: recorded in the run, an aleatoric std per row, and a predict
/// that expects the other noise model (either way) is refused with one line, writing nothing.
#[test]
fn heteroscedastic_noise_is_recorded_and_checked_at_predict() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("diabetes.csv");
    subset("data/diabetes.csv", 150, &data);
    let d = data.to_str().unwrap();
    let fit = |noise: &str, task: &str, target: &str, out: &Path| {
        swag(&[
            "fit",
            "--data",
            d,
            "--target",
            target,
            "--task",
            task,
            "--split-column",
            "split",
            "--hidden",
            "8",
            "--epochs",
            "8",
            "--rank",
            "3",
            "--lr",
            "0.01",
            "--noise",
            noise,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let hetero = dir.path().join("hetero");
    let homo = dir.path().join("homo");
    assert!(fit("heteroscedastic", "regression", "target", &hetero)
        .status
        .success());
    assert!(fit("homoscedastic", "regression", "target", &homo)
        .status
        .success());
    let config = std::fs::read_to_string(hetero.join("config.json"))?;
    assert!(
        config.contains("\"noise\": \"heteroscedastic\""),
        "{config}"
    );
    let preds = dir.path().join("p.csv");
    ok(&[
        "predict",
        "--run",
        hetero.to_str().unwrap(),
        "--data",
        d,
        "--samples",
        "3",
        "--noise",
        "heteroscedastic",
        "--out",
        preds.to_str().unwrap(),
    ]);
    let (header, rows) = read_csv(&preds);
    assert_eq!(header, ["mean", "std", "std_epistemic", "std_aleatoric"]);
    let alea: Vec<f64> = rows.iter().map(|r| r[3].parse().unwrap()).collect();
    let (lo, hi) = alea
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(
        lo > 0.0 && hi > lo * 1.01,
        "aleatoric std should vary per row: {lo}..{hi}"
    );
    std::fs::remove_file(&preds)?;
    for (run, want) in [(&hetero, "homoscedastic"), (&homo, "heteroscedastic")] {
        let out = swag(&[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--data",
            d,
            "--noise",
            want,
            "--out",
            preds.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want) && err.contains("fitted with"), "{err}");
        assert!(!preds.exists());
    }
    // Heteroscedastic noise is a regression model.
    let cls = dir.path().join("cls");
    let out = fit("heteroscedastic", "classification", "sex", &cls);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`noise`"));
    assert!(!cls.exists());
    Ok(())
}

/// A table with an identifier and a text column: `--ignore` drops one, `--categorical`
/// one-hot encodes the other, and `swag predict` refuses a category the fit never saw,
/// naming file, row and column, and writes nothing.
#[test]
fn text_columns_are_ignored_or_one_hot_and_unknown_categories_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cars.csv");
    let mut text = String::from("name,origin,weight,mpg\n");
    for i in 0..40 {
        let origin = ["usa", "europe", "japan"][i % 3];
        let w = 2.0 + (i as f64) / 20.0;
        text.push_str(&format!(
            "\"car {i}, model\",{origin},{w},{}\n",
            40.0 - 8.0 * w
        ));
    }
    std::fs::write(&data, text)?;
    let run = dir.path().join("run");
    let fit = |extra: &[&str]| {
        let args = [
            "fit",
            "--data",
            data.to_str().unwrap(),
            "--target",
            "mpg",
            "--task",
            "regression",
            "--hidden",
            "4",
            "--epochs",
            "2",
            "--rank",
            "2",
            "--out",
            run.to_str().unwrap(),
        ];
        swag_with(&args, extra)
    };
    let out = fit(&["--ignore", "name"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`origin`") && err.contains("--categorical origin"),
        "{err}"
    );
    assert!(!run.exists());

    let out = fit(&["--ignore", "name", "--categorical", "origin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(run.join("config.json"))?;
    for name in ["origin=europe", "origin=japan", "origin=usa", "weight"] {
        assert!(config.contains(name), "{name} missing from config.json");
    }

    let x = dir.path().join("x.csv");
    std::fs::write(&x, "origin,weight\njapan,2.5\nmars,3\n")?;
    let preds = dir.path().join("p.csv");
    let predict = || {
        swag(&[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--data",
            x.to_str().unwrap(),
            "--samples",
            "2",
            "--out",
            preds.to_str().unwrap(),
        ])
    };
    let out = predict();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("x.csv")
            && err.contains("row 2")
            && err.contains("`origin`")
            && err.contains("`mars`"),
        "{err}"
    );
    assert!(!preds.exists());
    std::fs::write(&x, "origin,weight\njapan,2.5\nusa,3\n")?;
    let out = predict();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rows) = read_csv(&preds);
    assert_eq!(rows.len(), 2);
    Ok(())
}

/// `swag fit --calibrate-fraction` then `swag report --run`: the report's conformal numbers
/// for SWAG are those of `swag predict --coverage` on the same test rows (the same BMA, the
/// same calibration rows); a run without calibration rows gives a report without them; a bad
/// coverage is refused, naming it, and writes nothing.
#[test]
fn report_from_a_run_shows_the_conformal_numbers_of_predict() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("data/diabetes.csv");
    let d = data.to_str().unwrap();
    // The 88 test rows alone, for `swag predict` (which predicts every row of its file).
    let text = std::fs::read_to_string(&data)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let test_rows: Vec<&str> = lines.filter(|l| l.starts_with("test,")).collect();
    assert_eq!(test_rows.len(), 88);
    let test_csv = dir.path().join("test.csv");
    std::fs::write(&test_csv, format!("{header}\n{}\n", test_rows.join("\n")))?;
    let targets: Vec<f64> = test_rows
        .iter()
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();

    let fit = |run: &Path, extra: &[&str]| {
        let base = [
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
            "16",
            "--epochs",
            "20",
            "--rank",
            "5",
            "--lr",
            "0.01",
            "--out",
            run.to_str().unwrap(),
        ];
        ok(&[&base[..], extra].concat());
    };
    let run = dir.path().join("run");
    fit(&run, &["--calibrate-fraction", "0.2"]);
    let preds = dir.path().join("preds.csv");
    ok(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        test_csv.to_str().unwrap(),
        "--samples",
        "5",
        "--coverage",
        "0.9",
        "--out",
        preds.to_str().unwrap(),
    ]);
    let rep = dir.path().join("rep");
    let report = |run: &Path, extra: &[&str]| {
        let base = [
            "report",
            "--run",
            run.to_str().unwrap(),
            "--data",
            d,
            "--split-column",
            "split",
            "--samples",
            "5",
            "--out",
            rep.to_str().unwrap(),
        ];
        swag(&[&base[..], extra].concat())
    };
    let out = report(&run, &["--coverage", "0.9"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("metrics.json"))?)?;
    let swag_m = &m["SWAG"];
    let get = |k: &str| {
        swag_m[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {swag_m}"))
    };
    // round(0.2 · 354) = 71 calibration rows.
    assert_eq!(swag_m["n_calibration"], 71);
    let (_, rows) = read_csv(&preds);
    let num = |r: &Vec<String>, j: usize| -> f64 { r[j].parse().unwrap() };
    let hits = rows
        .iter()
        .zip(&targets)
        .filter(|(r, y)| num(r, 4) <= **y && **y <= num(r, 5))
        .count();
    assert_eq!(get("conformal_coverage"), hits as f64 / 88.0);
    let width = rows.iter().map(|r| num(r, 5) - num(r, 4)).sum::<f64>() / 88.0;
    assert!((get("conformal_width") - width).abs() < 1e-6 * width);
    let q = (num(&rows[0], 5) - num(&rows[0], 0)) / num(&rows[0], 1);
    assert!((get("conformal_quantile") - q).abs() < 1e-6 * q);
    // The Gaussian intervals beside them are PICP at 90%.
    let picp_90 = swag_m["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["level"] == 0.9)
        .unwrap()["picp"]
        .as_f64()
        .unwrap();
    assert_eq!(get("gaussian_coverage"), picp_90);
    for method in ["SGD", "SWA", "SWAG"] {
        assert!(m[method]["conformal_coverage"].is_number(), "{method}");
    }
    let md = std::fs::read_to_string(rep.join("report.md"))?;
    assert!(
        md.contains("fitted on the 20% calibration hold-out of the run's training rows, 71 rows"),
        "{md}"
    );
    assert!(rep.join("conditional_coverage.png").exists());

    // A bad coverage is named, in one line, and the previous report stays as it was.
    let before = std::fs::read_to_string(rep.join("metrics.json"))?;
    for bad in ["1.5", "0", "-0.2"] {
        let out = report(&run, &[&format!("--coverage={bad}")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("coverage") && err.trim().lines().count() == 1,
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(rep.join("metrics.json"))?, before);
    }

    // A run without calibration rows: the same report without any calibration section.
    let plain = dir.path().join("plain");
    fit(&plain, &[]);
    let out = report(&plain, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(rep.join("report.md"))?;
    let json = std::fs::read_to_string(rep.join("metrics.json"))?;
    assert!(
        !md.contains("onformal") && !md.contains("ecalibration"),
        "{md}"
    );
    assert!(!json.contains("conformal") && !json.contains("n_calibration"));
    assert!(!rep.join("conditional_coverage.png").exists());
    Ok(())
}

/// `swag fit` tunes by default and says what it chose, in its summary and in config.json: the
/// noise model by cross-validation (both NLLs recorded; heteroscedastic only when lower by more
/// than their difference's standard error), tuned on every fold, where a fixed model tunes on
/// one 20% split;
/// `--tune-scale` and `--noise auto` are the default (the same run, byte for byte), `--no-tune`
/// keeps scale 0.5, the training residual and homoscedastic noise, and `--noise auto
/// --no-tune` is refused with one line naming `noise`.
#[test]
fn default_fit_tunes_and_says_what_it_chose() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("diabetes.csv");
    subset("data/diabetes.csv", 150, &data);
    let d = data.to_str().unwrap();
    let fit = |out: &Path, extra: &[&str]| {
        swag_with(
            &[
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
                "--out",
                out.to_str().unwrap(),
            ],
            extra,
        )
    };
    let config = |run: &Path| -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            run.join("config.json"),
        )?)?)
    };
    let default = dir.path().join("default");
    let out = fit(&default, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 120 training rows of the first 150 (every fifth row is test), each validated once by
    // the 5-fold cross-validation of --noise auto.
    assert!(
        stdout.contains("tuned on 5 cross-validation folds of 120 training rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(chosen by --noise auto: 5-fold validation NLL"),
        "{stdout}"
    );
    let c = config(&default)?;
    assert_eq!(c["validation_rows"], 120);
    assert_eq!(
        c["fit"]["train"]["sgd"]["lr"], 0.01,
        "regression's default lr"
    );
    let best = &c["tuned"]["best"];
    assert_eq!(c["scale"], best["scale"]);
    assert_eq!(c["noise_variance"], best["noise_variance"]);
    let scale = best["scale"].as_f64().unwrap_or(f64::NAN);
    assert!(
        stdout.contains(&format!("default sample scale {scale}")),
        "{stdout}"
    );
    // The noise model is chosen by cross-validation (the default, `--noise auto`).
    let sel = &c["noise_selection"];
    let num = |key: &str| {
        sel[key]
            .as_f64()
            .ok_or_else(|| std::io::Error::other(format!("{key} in {sel}")))
    };
    let (homo, hetero, se) = (
        num("homoscedastic_nll")?,
        num("heteroscedastic_nll")?,
        num("difference_standard_error")?,
    );
    assert_eq!(sel["folds"], 5, "{sel}");
    assert!(homo.is_finite() && hetero.is_finite() && se > 0.0, "{sel}");
    // The one-standard-error rule: heteroscedastic only when lower by more than `se`.
    let chosen = if homo - hetero > se {
        "heteroscedastic"
    } else {
        "homoscedastic"
    };
    assert_eq!(c["noise"], chosen, "{sel}");

    for (name, flags) in [
        ("alias", &["--tune-scale"][..]),
        ("auto", &["--noise", "auto"]),
    ] {
        let run = dir.path().join(name);
        assert!(fit(&run, flags).status.success());
        assert_eq!(
            std::fs::read(default.join("config.json"))?,
            std::fs::read(run.join("config.json"))?,
            "{flags:?} is the default"
        );
    }

    // A fixed noise model tunes on one split of 20% (24 rows), without a selection.
    let fixed = dir.path().join("fixed");
    let out = fit(&fixed, &["--noise", chosen]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tuned on a validation split of 24 training rows"),
        "{stdout}"
    );
    let f = config(&fixed)?;
    assert_eq!(f["noise"], chosen);
    assert_eq!(f["validation_rows"], 24);
    assert!(f.get("noise_selection").is_none(), "{f}");

    // Without tuning the default noise is homoscedastic: nothing to choose on.
    let untuned = dir.path().join("untuned");
    let out = fit(&untuned, &["--no-tune"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(not tuned: --no-tune)"), "{stdout}");
    assert!(stdout.contains("noise model: homoscedastic\n"), "{stdout}");
    let c = config(&untuned)?;
    assert_eq!(c["scale"], 0.5);
    assert_eq!(c["noise"], "homoscedastic");
    assert!(
        c["tuned"].is_null() && c.get("validation_rows").is_none(),
        "{c}"
    );
    assert!(c["noise_variance"].as_f64().is_some_and(|v| v > 0.0));

    let refused = dir.path().join("refused");
    let out = fit(&refused, &["--noise", "auto", "--no-tune"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`noise`") && err.contains("--no-tune"),
        "{err}"
    );
    assert!(!refused.exists());
    // The opt-out and the old opt-in contradict each other: clap refuses the pair.
    assert_eq!(
        fit(&refused, &["--no-tune", "--tune-scale"]).status.code(),
        Some(2)
    );
    Ok(())
}
