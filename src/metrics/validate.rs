//! The checks of metric inputs, in one place and one wording: probabilities and their rows,
//! labels, confidences, Gaussian predictions (mean, std, targets). The metrics call them on
//! slices; the prediction-file readers (`io`) and the plots reuse the wording functions
//! (`*_problem`) with their own location (file and column, or plot name).
//!
//! A bad value gives [`Error::BadData`] whose `file` is the input name (`"probabilities"`,
//! `"labels"`, `"mean"`, ...), `row` is 1-based and `column` names the class or quantity.

use super::{ClassLabel, Probability, ROW_SUM_TOLERANCE};
use crate::{Error, Result};

/// A [`Error::BadData`] for input `input` at 0-based `row_index`.
pub(crate) fn bad_data(
    input: &str,
    row_index: usize,
    column: impl Into<String>,
    reason: impl Into<String>,
) -> Error {
    Error::BadData {
        file: input.to_string(),
        row: row_index + 1,
        column: column.into(),
        reason: reason.into(),
    }
}

/// Checks that `input` is not empty.
pub(crate) fn check_non_empty(input: &str, len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::BadData {
            file: input.to_string(),
            row: 0,
            column: String::new(),
            reason: "input is empty".to_string(),
        });
    }
    Ok(())
}

/// Checks that two inputs have the same number of rows.
pub(crate) fn check_same_len(a: &str, a_len: usize, b: &str, b_len: usize) -> Result<()> {
    if a_len != b_len {
        return Err(Error::BadData {
            file: b.to_string(),
            row: 0,
            column: String::new(),
            reason: format!("has {b_len} rows but `{a}` has {a_len}"),
        });
    }
    Ok(())
}

/// Number of rows of a row-major `[rows, n_cols]` matrix, checking the shape.
pub(crate) fn matrix_rows(input: &str, len: usize, n_cols: usize) -> Result<usize> {
    if n_cols == 0 {
        return Err(Error::invalid("n_classes", "must be at least 1"));
    }
    check_non_empty(input, len)?;
    if !len.is_multiple_of(n_cols) {
        return Err(Error::BadData {
            file: input.to_string(),
            row: len / n_cols + 1,
            column: String::new(),
            reason: format!("{len} values do not form whole rows of {n_cols} columns"),
        });
    }
    Ok(len / n_cols)
}

/// The reason a probability value is refused, or `None` when it is a valid probability.
#[inline]
pub fn probability_problem(p: f64) -> Option<String> {
    if p.is_nan() {
        Some("value is NaN".to_string())
    } else if p.is_infinite() {
        Some(format!("value {p} is infinite"))
    } else if !(0.0..=1.0).contains(&p) {
        Some(format!("probability {p} is outside [0, 1]"))
    } else {
        None
    }
}

/// Converts a slice of labels to class indices, checking the range `0..n_classes`.
pub(crate) fn label_indices<L: ClassLabel>(labels: &[L], n_classes: usize) -> Result<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| match l.class_index() {
            Some(k) if k < n_classes => Ok(k),
            Some(k) => Err(bad_data(
                "labels",
                i,
                "label",
                format!("label {k} is out of range 0..{n_classes}"),
            )),
            None => Err(bad_data("labels", i, "label", "label is negative")),
        })
        .collect()
}

/// Checks one probability row (values in `[0, 1]`, sum 1 within the tolerance).
pub(crate) fn check_probability_row<T: Probability>(row_index: usize, row: &[T]) -> Result<()> {
    let mut sum = 0.0;
    for (k, p) in row.iter().enumerate() {
        let v = p.to_f64();
        if let Some(reason) = probability_problem(v) {
            return Err(bad_data(
                "probabilities",
                row_index,
                format!("class {k}"),
                reason,
            ));
        }
        sum += v;
    }
    if let Some(reason) = row_sum_problem(sum) {
        return Err(bad_data("probabilities", row_index, "row sum", reason));
    }
    Ok(())
}

/// Validates a 1-D finite input named `name`.
pub(crate) fn check_values(name: &str, values: &[f64]) -> Result<()> {
    check_non_empty(name, values.len())?;
    for (i, v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(bad_data(name, i, name, not_finite_problem(*v)));
        }
    }
    Ok(())
}

/// Validates means and targets (same length, finite).
pub(crate) fn check_mean_targets(mean: &[f64], y: &[f64]) -> Result<()> {
    check_values("mean", mean)?;
    check_values("targets", y)?;
    check_same_len("mean", mean.len(), "targets", y.len())
}

/// Validates standard deviations (finite, > 0), and their length against `n`.
pub(crate) fn check_std(std: &[f64], n: usize) -> Result<()> {
    check_values("std", std)?;
    check_same_len("mean", n, "std", std.len())?;
    for (i, s) in std.iter().enumerate() {
        if let Some(reason) = std_problem(*s) {
            return Err(bad_data("std", i, "std", reason));
        }
    }
    Ok(())
}

pub fn check_gaussian(mean: &[f64], std: &[f64], y: &[f64]) -> Result<()> {
    check_mean_targets(mean, y)?;
    check_std(std, mean.len())
}

/// Validates (confidence, correct) pairs: same length, non-empty, confidences in `[0, 1]`.
pub(crate) fn check_confidences<T: Probability>(confidence: &[T], correct: &[bool]) -> Result<()> {
    check_non_empty("confidence", confidence.len())?;
    check_same_len("confidence", confidence.len(), "correct", correct.len())?;
    for (i, c) in confidence.iter().enumerate() {
        if let Some(reason) = super::probability_problem(c.to_f64()) {
            return Err(bad_data("confidence", i, "confidence", reason));
        }
    }
    Ok(())
}

/// The wording for a value that must be finite.
pub fn not_finite_problem(v: f64) -> String {
    format!("value {v} is not finite")
}

/// The reason a row of probabilities summing to `sum` is refused (`|sum − 1|` above
/// [`ROW_SUM_TOLERANCE`]), or `None`.
pub fn row_sum_problem(sum: f64) -> Option<String> {
    ((sum - 1.0).abs() > ROW_SUM_TOLERANCE)
        .then(|| format!("probabilities sum to {sum}, not 1 (tolerance {ROW_SUM_TOLERANCE:e})"))
}

/// The reason a standard deviation is refused (not finite, or not strictly positive: a
/// Gaussian with σ = 0 has no density), or `None`.
pub fn std_problem(s: f64) -> Option<String> {
    if !s.is_finite() {
        Some(not_finite_problem(s))
    } else if s <= 0.0 {
        Some(format!("standard deviation {s} is not positive"))
    } else {
        None
    }
}

/// The reason a value is refused as a class index in `0..n_classes`, or `None`. Labels read
/// as numbers (prediction files, tensors) are checked with it, in the report crate.
pub fn label_problem(v: f64, n_classes: usize) -> Option<String> {
    if v.is_nan() || v < 0.0 || v.fract() != 0.0 || v >= n_classes as f64 {
        Some(format!("label {v} is not a class index in 0..{n_classes}"))
    } else {
        None
    }
}
