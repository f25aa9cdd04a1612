//! `swag report` end to end: inputs as .npy (written by hand here), .npz, .safetensors and CSV;
//! metrics checked against hand-computed values; every documented bad input gives a one-line
//! error naming the file, row and column, and leaves no output directory.

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Writes a version-1.0 `.npy` file: magic, header dict padded to a multiple of 64 bytes.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn npy_f64(path: &Path, shape: &[usize], values: &[f64]) {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f8", shape, &data);
}

fn npy_f32(path: &Path, shape: &[usize], values: &[f32]) {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", shape, &data);
}

fn npy_i64(path: &Path, values: &[i64]) {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<i8", &[values.len()], &data);
}

/// Four rows, two classes (same hand values as tests/report.rs): accuracy 0.5, Brier 0.45,
/// ECE 0.4, MCE 0.7 with 15 bins.
const PROBS: [f64; 8] = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7];
const LABELS: [i64; 4] = [0, 1, 1, 0];

fn swag(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swag"))
        .arg("report")
        .args(args)
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

fn metrics(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn npy_round_trip_single_method() -> Result<()> {
    let t = tempfile::tempdir()?;
    let probs = t.path().join("probs.npy");
    let labels = t.path().join("labels.npy");
    npy_f64(&probs, &[4, 2], &PROBS);
    npy_i64(&labels, &LABELS);
    let out = t.path().join("report");
    let o = swag(&[
        "--probs",
        p(&probs),
        "--labels",
        p(&labels),
        "--method",
        "SWAG",
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    assert!(close(&m["accuracy"], 0.5));
    assert!(close(&m["brier"], 0.45));
    assert!(close(&m["ece"], 0.4));
    assert!(close(&m["mce"], 0.7));
    let nll = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln() + 0.3f64.ln()) / 4.0;
    assert!(close(&m["nll"], nll));
    assert_eq!(m["method"], "SWAG");
    for f in [
        "report.md",
        "report.html",
        "report.json",
        "reliability.png",
        "reliability.svg",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    Ok(())
}

#[test]
fn several_methods_from_npz_safetensors_and_csv() -> Result<()> {
    use candle_core::{Device, Tensor};
    let t = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let a = Tensor::from_vec(PROBS.to_vec(), (4, 2), &dev)?;
    // Method B: confidences 0.6, 0.6, 0.55, 0.55 -> with --bins 10, ECE 0.075.
    let b_values = vec![0.6f32, 0.4, 0.4, 0.6, 0.55, 0.45, 0.45, 0.55];
    let b = Tensor::from_vec(b_values, (4, 2), &dev)?;
    let npz = t.path().join("preds.npz");
    Tensor::write_npz(&[("other", &b), ("probs", &a)], &npz)?;
    let st = t.path().join("preds.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("swag", b.clone())]), &st)?;
    let labels = t.path().join("labels.csv");
    std::fs::write(&labels, "id,label\n10,0\n11,1\n12,1\n13,0\n")?;
    let out = t.path().join("report");
    let o = swag(&[
        "--probs",
        p(&npz),
        "--method",
        "SGD",
        "--probs",
        p(&st),
        "--method",
        "SWAG",
        "--labels",
        &format!("{}:label", p(&labels)),
        "--bins",
        "10",
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    // The npz's `probs` array was chosen by the role's default name.
    assert!(close(&m["SGD"]["ece"], 0.4));
    // f32 input: 0.6f32 is compared with the edge 0.6 in f32 and stays in (0.5, 0.6] (read as
    // the widened f64 0.60000002 it would move to the next bin and give ECE 0.475); the mean
    // confidence carries f32 rounding, hence the 1e-6 tolerance.
    assert!((m["SWAG"]["ece"].as_f64().unwrap() - 0.075).abs() < 1e-6);
    assert_eq!(m["SWAG"]["n_bins"], 10);
    assert!(out.join("reliability_overlay.svg").exists());
    Ok(())
}

#[test]
fn logits_and_regression_from_csv() -> Result<()> {
    let t = tempfile::tempdir()?;
    // Logits [0, ln 4] -> probabilities [0.2, 0.8]; [ln 3, 0] -> [0.75, 0.25].
    let logits = t.path().join("logits.csv");
    std::fs::write(
        &logits,
        format!("{},{}\n{},{}\n", 0.0, 4f64.ln(), 3f64.ln(), 0.0),
    )?;
    let labels = t.path().join("y.csv");
    std::fs::write(&labels, "1\n1\n")?;
    let preds = t.path().join("reg.csv");
    std::fs::write(&preds, "mean,std,target\n0,1,0.5\n1,1,1\n2,2,1\n3,0.5,4\n")?;
    let out = t.path().join("report");
    let o = swag(&[
        "--probs",
        p(&logits),
        "--logits",
        "--labels",
        p(&labels),
        "--mean",
        &format!("{}:mean", p(&preds)),
        "--std",
        &format!("{}:std", p(&preds)),
        "--targets",
        &format!("{}:target", p(&preds)),
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    let cls = &m["classification"];
    assert!(close(&cls["accuracy"], 0.5));
    assert!((cls["nll"].as_f64().unwrap() - (-(0.8f64.ln() + 0.25f64.ln()) / 2.0)).abs() < 1e-6);
    // RMSE = sqrt((0.25 + 0 + 1 + 1) / 4) = 0.75; MAE = (0.5 + 0 + 1 + 1) / 4.
    assert!(close(&m["regression"]["rmse"], 0.75));
    assert!(close(&m["regression"]["mae"], 0.625));
    assert!(out.join("calibration_curve.png").exists());
    assert!(out.join("sharpness.svg").exists());
    Ok(())
}

/// Runs a command expected to fail; checks the one-line error holds every `needle`, and that
/// no output directory (nor a temporary sibling) was left behind.
fn assert_fails(dir: &Path, args: &[&str], needles: &[&str]) {
    let out = dir.join("report");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--out", p(&out)]);
    let before: Vec<PathBuf> = listing(dir);
    let o = swag(&all);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {args:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
    assert!(!out.exists(), "output directory created for {args:?}");
    assert_eq!(listing(dir), before, "files left behind for {args:?}");
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_inputs_give_located_errors_and_no_directory() -> Result<()> {
    let t = tempfile::tempdir()?;
    let d = t.path();
    let labels = d.join("labels.npy");
    npy_i64(&labels, &LABELS);
    let good = d.join("good.npy");
    npy_f64(&good, &[4, 2], &PROBS);

    // Probability outside [0, 1] (row 2, column 0).
    let f = d.join("outside.npy");
    npy_f64(&f, &[4, 2], &[0.9, 0.1, 1.5, -0.5, 0.6, 0.4, 0.3, 0.7]);
    assert_fails(
        d,
        &["--probs", p(&f), "--labels", p(&labels)],
        &["outside.npy", "row 2", "column `0`", "outside [0, 1]"],
    );

    // Row not summing to 1 (CSV with header: row 3, the row sum).
    let f = d.join("sum.csv");
    std::fs::write(&f, "p0,p1\n0.9,0.1\n0.2,0.8\n0.5,0.6\n0.3,0.7\n")?;
    assert_fails(
        d,
        &["--probs", p(&f), "--labels", p(&labels)],
        &["sum.csv", "row 3", "column `sum`", "sum to"],
    );

    // Within ±1e-4 is accepted (f32 rounding), beyond is not.
    let f = d.join("nearly.csv");
    std::fs::write(&f, "0.9,0.10005\n0.2,0.8\n0.6,0.4\n0.3,0.7\n")?;
    let out = d.join("ok");
    let o = swag(&["--probs", p(&f), "--labels", p(&labels), "--out", p(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&out)?;

    // NaN (row 2, column 1), and infinity in a regression input.
    let f = d.join("nan.npy");
    npy_f32(&f, &[4, 2], &[0.9, 0.1, 0.2, f32::NAN, 0.6, 0.4, 0.3, 0.7]);
    assert_fails(
        d,
        &["--probs", p(&f), "--labels", p(&labels)],
        &["nan.npy", "row 2", "column `1`", "NaN"],
    );
    let f = d.join("reg.csv");
    std::fs::write(&f, "mean,std,target\n0,1,0\n1,inf,1\n")?;
    let (m, s, y) = (
        format!("{}:mean", p(&f)),
        format!("{}:std", p(&f)),
        format!("{}:target", p(&f)),
    );
    assert_fails(
        d,
        &["--mean", &m, "--std", &s, "--targets", &y],
        &["reg.csv", "row 2", "column `std`", "not finite"],
    );
    // A standard deviation of zero.
    std::fs::write(&f, "mean,std,target\n0,1,0\n1,0,1\n")?;
    assert_fails(
        d,
        &["--mean", &m, "--std", &s, "--targets", &y],
        &["reg.csv:std", "row 2", "column `std`", "is not positive"],
    );

    // Labels out of range (row 3 holds class 2 of a 2-class problem), and not integers.
    let bad_labels = d.join("bad_labels.npy");
    npy_i64(&bad_labels, &[0, 1, 2, 0]);
    assert_fails(
        d,
        &["--probs", p(&good), "--labels", p(&bad_labels)],
        &[
            "bad_labels.npy",
            "row 3",
            "column `0`",
            "not a class index in 0..2",
        ],
    );
    let frac = d.join("frac.csv");
    std::fs::write(&frac, "y\n0\n1\n0.5\n0\n")?;
    assert_fails(
        d,
        &["--probs", p(&good), "--labels", p(&frac)],
        &["frac.csv", "row 3", "column `y`"],
    );

    // Lengths that do not match: 3 labels for 4 rows (the first missing row is 4).
    let short = d.join("short.npy");
    npy_i64(&short, &[0, 1, 1]);
    assert_fails(
        d,
        &["--probs", p(&good), "--labels", p(&short)],
        &["short.npy", "row 4", "lengths must match"],
    );

    // Empty input: a CSV with a header only, and a zero-row npy.
    let empty = d.join("empty.csv");
    std::fs::write(&empty, "p0,p1\n")?;
    assert_fails(
        d,
        &["--probs", p(&empty), "--labels", p(&labels)],
        &["empty.csv", "empty"],
    );
    let empty_npy = d.join("empty.npy");
    npy_f64(&empty_npy, &[0, 2], &[]);
    assert_fails(
        d,
        &["--probs", p(&empty_npy), "--labels", p(&labels)],
        &["empty.npy", "empty"],
    );

    // Unreadable files: missing, not a .npy, a non-numeric CSV cell, a ragged CSV row.
    let missing = d.join("missing.npy");
    assert_fails(
        d,
        &["--probs", p(&missing), "--labels", p(&labels)],
        &["missing.npy"],
    );
    let garbage = d.join("garbage.npy");
    std::fs::write(&garbage, b"not numpy at all")?;
    assert_fails(
        d,
        &["--probs", p(&garbage), "--labels", p(&labels)],
        &["garbage.npy", "not a readable .npy file"],
    );
    let text = d.join("text.csv");
    std::fs::write(&text, "p0,p1\n0.9,0.1\n0.2,abc\n")?;
    assert_fails(
        d,
        &["--probs", p(&text), "--labels", p(&labels)],
        &["text.csv", "row 2", "column `p1`", "`abc` is not a number"],
    );
    let ragged = d.join("ragged.csv");
    std::fs::write(&ragged, "0.9,0.1\n0.2\n")?;
    assert_fails(
        d,
        &["--probs", p(&ragged), "--labels", p(&labels)],
        &[
            "ragged.csv",
            "row 2",
            "ragged row: 1 cells where the first row has 2",
        ],
    );

    // Usage errors are one line too.
    assert_fails(d, &["--probs", p(&good)], &["--labels"]);
    assert_fails(
        d,
        &["--probs", p(&good), "--labels", p(&labels), "--bins", "0"],
        &["--bins"],
    );
    Ok(())
}

#[test]
fn failed_run_keeps_a_previous_report() -> Result<()> {
    let t = tempfile::tempdir()?;
    let d = t.path();
    let labels = d.join("labels.npy");
    npy_i64(&labels, &LABELS);
    let good = d.join("good.npy");
    npy_f64(&good, &[4, 2], &PROBS);
    let out = d.join("report");
    let o = swag(&[
        "--probs",
        p(&good),
        "--labels",
        p(&labels),
        "--out",
        p(&out),
    ]);
    assert!(o.status.success());
    let before = std::fs::read(out.join("metrics.json"))?;
    let bad = d.join("bad.npy");
    npy_f64(&bad, &[4, 2], &[0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 7.0]);
    let o = swag(&["--probs", p(&bad), "--labels", p(&labels), "--out", p(&out)]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(out.join("metrics.json"))?, before);
    Ok(())
}
