//! The two datasets bundled with the crate (compiled into the binary, so `swag demo` runs from
//! any directory). They are the crate's own copies, `crates/candle-swag-cli/data/`, of the
//! repository's `data/digits.csv` and `data/diabetes.csv` (CI checks they are identical), so
//! that the published crate carries them. Sources and licences: `data/README.md`.
//!
//! Preprocessing follows `BENCHMARKS.md`: digits pixels divided by 16; diabetes features and
//! target standardised with the training rows' mean and population std.

use candle_core::Device;

use super::csv::{load_table, CsvParams, TabularData, TaskKind};
use super::{prepare, FeatureScaling, Prepared};
use candle_swag::error::Result;
use candle_swag_report::io::CsvTable;

/// `data/digits.csv` (the crate's copy): 1797 8×8 digits (1198 train, 599 test), columns split, label, p0..p63.
pub const DIGITS_CSV: &str = include_str!("../../data/digits.csv");
/// `data/diabetes.csv` (the crate's copy): 442 patients (354 train, 88 test), columns split, 10 features, target.
pub const DIABETES_CSV: &str = include_str!("../../data/diabetes.csv");

/// The digits table in raw units (pixels 0..16, labels "0".."9").
pub fn digits_table() -> Result<TabularData> {
    let table = CsvTable::parse(DIGITS_CSV, "data/digits.csv")?;
    load_table(
        &table,
        &CsvParams {
            split_column: Some("split".to_string()),
            ..CsvParams::new("label", TaskKind::Classification)
        }
        .check()?,
    )
}

/// The diabetes table in raw units.
pub fn diabetes_table() -> Result<TabularData> {
    let table = CsvTable::parse(DIABETES_CSV, "data/diabetes.csv")?;
    load_table(
        &table,
        &CsvParams {
            split_column: Some("split".to_string()),
            ..CsvParams::new("target", TaskKind::Regression)
        }
        .check()?,
    )
}

/// Digits prepared as in the benchmark recipe: pixels / 16, the file's train/test split.
pub fn digits(device: &Device) -> Result<Prepared> {
    prepare(&digits_table()?, FeatureScaling::Divide(16.0), device)
}

/// Diabetes prepared as in the benchmark recipe: features and target standardised with the
/// training rows' statistics.
pub fn diabetes(device: &Device) -> Result<Prepared> {
    prepare(&diabetes_table()?, FeatureScaling::Standardize, device)
}

/// The out-of-distribution variant of digits (BENCHMARKS.md §1): a model trained on labels 0-4
/// only, tested on test rows with labels 0-4 (in distribution) and 5-9 (out of distribution).
#[derive(Debug, Clone)]
pub struct DigitsOod {
    /// Training rows with labels 0-4 and test rows with labels 0-4; class labels "0".."4".
    pub in_distribution: Prepared,
    /// Test rows with labels 5-9 (their targets are the original class indices 5..9).
    pub out_of_distribution: super::Dataset,
}

/// Digits split for the OOD variant (pixels / 16, as in [`digits`]).
pub fn digits_ood(device: &Device) -> Result<DigitsOod> {
    let full = digits(device)?;
    let labels_of = |ds: &super::Dataset| -> Result<Vec<u32>> { Ok(ds.targets.to_vec1()?) };
    let pick = |labels: &[u32], keep: &dyn Fn(u32) -> bool| -> Vec<usize> {
        (0..labels.len()).filter(|&i| keep(labels[i])).collect()
    };
    let train_labels = labels_of(&full.train)?;
    let test_labels = labels_of(&full.test)?;
    let train_keep = pick(&train_labels, &|c| c < 5);
    let test_in = pick(&test_labels, &|c| c < 5);
    let test_out = pick(&test_labels, &|c| c >= 5);
    let mut prepared = full.clone();
    prepared.train = full.train.select(&train_keep)?;
    prepared.test = full.test.select(&test_in)?;
    prepared.train_rows = train_keep.iter().map(|&i| full.train_rows[i]).collect();
    prepared.test_rows = test_in.iter().map(|&i| full.test_rows[i]).collect();
    prepared.class_labels = full
        .class_labels
        .as_ref()
        .map(|l| l.iter().take(5).cloned().collect());
    Ok(DigitsOod {
        in_distribution: prepared,
        out_of_distribution: full.test.select(&test_out)?,
    })
}
