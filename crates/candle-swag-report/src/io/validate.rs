//! Checks of input arrays, each failing with the file, the row and the column at fault.
//!
//! Rows are reported 1-based (row `i + 1` is index `i`); columns by CSV header name or by
//! 0-based index. A row-level problem (a row sum) is reported in column `sum`.

use super::array::{Array, Precision};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::validate::{
    label_problem, not_finite_problem, probability_problem, row_sum_problem, std_problem,
};

/// Appended to a probability error: the usual cause is scores passed as probabilities.
const LOGITS_HINT: &str = "; pass --logits if these are scores";

fn bad(a: &Array, row: usize, column: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadData {
        file: a.source.clone(),
        row,
        column: column.into(),
        reason: reason.into(),
    }
}

/// Refuses an array with no rows or no columns.
pub fn check_has_rows(a: &Array) -> Result<()> {
    if a.rows == 0 || a.cols == 0 {
        return Err(bad(a, 0, "-", "input is empty (no rows of data)"));
    }
    Ok(())
}

/// Refuses NaN and ±Inf, naming the first one found (row-major order).
pub fn check_finite(a: &Array) -> Result<()> {
    match a.values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(bad(
            a,
            i / a.cols + 1,
            a.column_name(i % a.cols),
            not_finite_problem(a.values[i]),
        )),
        None => Ok(()),
    }
}

/// Checks class probabilities: non-empty, finite, every value in `[0, 1]`, and, when there are
/// several columns, every row summing to 1 within [`ROW_SUM_TOLERANCE`](candle_swag::metrics::ROW_SUM_TOLERANCE). A single column is a
/// binary task's P(y = 1) and needs no sum check.
pub fn check_probabilities(a: &Array) -> Result<()> {
    check_has_rows(a)?;
    check_finite(a)?;
    for i in 0..a.rows {
        let row = a.row(i);
        if let Some((j, reason)) = row
            .iter()
            .enumerate()
            .find_map(|(j, &p)| probability_problem(p).map(|r| (j, r)))
        {
            return Err(bad(
                a,
                i + 1,
                a.column_name(j),
                format!("{reason}{LOGITS_HINT}"),
            ));
        }
        if a.cols > 1 {
            if let Some(reason) = row_sum_problem(row.iter().sum()) {
                return Err(bad(a, i + 1, "sum", format!("{reason}{LOGITS_HINT}")));
            }
        }
    }
    Ok(())
}

/// Requires every value to be a valid standard deviation: finite and strictly positive.
pub fn check_positive(a: &Array) -> Result<()> {
    check_has_rows(a)?;
    check_finite(a)?;
    match a
        .values
        .iter()
        .enumerate()
        .find_map(|(i, &v)| std_problem(v).map(|r| (i, r)))
    {
        Some((i, reason)) => Err(bad(a, i / a.cols + 1, a.column_name(i % a.cols), reason)),
        None => Ok(()),
    }
}

/// Requires `b` to have as many rows as `a`; the error names `b` and the first row where they
/// part (the first missing or the first extra row).
pub fn check_same_rows(a: &Array, b: &Array) -> Result<()> {
    if a.rows != b.rows {
        return Err(bad(
            b,
            a.rows.min(b.rows) + 1,
            "-",
            format!(
                "has {} rows but {} has {}: lengths must match",
                b.rows, a.source, a.rows
            ),
        ));
    }
    Ok(())
}

/// Turns a label array into class indices in `0..n_classes`: finite, integer-valued, in range.
pub fn labels_to_classes(a: &Array, n_classes: usize) -> Result<Vec<u32>> {
    check_has_rows(a)?;
    check_finite(a)?;
    if a.cols != 1 {
        return Err(bad(
            a,
            0,
            "-",
            format!(
                "labels must be one column, found {} (pick one with FILE:NAME)",
                a.cols
            ),
        ));
    }
    a.values
        .iter()
        .enumerate()
        .map(|(i, &v)| match label_problem(v, n_classes) {
            Some(reason) => Err(bad(
                a,
                i + 1,
                a.column_name(0),
                format!("{reason} (the predictions have {n_classes} classes)"),
            )),
            None => Ok(v as u32),
        })
        .collect()
}

/// Applies a numerically stable softmax to every row (`exp(x − max) / Σ exp(x − max)`, the
/// metrics' [`candle_swag::metrics::softmax_rows`], rounded to `f32` as a model's output would be),
/// after checking the scores are finite. A single column is a binary logit and becomes the
/// two-column `[1 − σ(x), σ(x)]`. The result has [`Precision::Single`].
pub fn probabilities_from_logits(a: &Array) -> Result<Array> {
    check_has_rows(a)?;
    check_finite(a)?;
    if a.cols == 1 {
        let v = a
            .values
            .iter()
            .flat_map(|&x| {
                let p = (1.0 / (1.0 + (-x).exp())) as f32;
                [f64::from(1.0 - p), f64::from(p)]
            })
            .collect::<Vec<_>>();
        let mut out = Array::new(a.source.clone(), a.rows, 2, v)?;
        out.precision = Precision::Single;
        return Ok(out);
    }
    let values = candle_swag::metrics::softmax_rows(&a.values, a.cols)
        .map_err(|e| candle_swag::metrics::attribute_to_file(e, "logits", &a.source))?
        .into_iter()
        .map(f64::from)
        .collect();
    let cols = a.cols;
    let mut out = Array::new(a.source.clone(), a.rows, cols, values)?;
    out.column_names = a.column_names.clone();
    out.precision = Precision::Single;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(rows: usize, cols: usize, v: &[f64]) -> Array {
        Array::new("t.npy", rows, cols, v.to_vec()).unwrap()
    }

    #[test]
    fn softmax_matches_hand_values() -> anyhow::Result<()> {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let s = probabilities_from_logits(&arr(1, 2, &[0.0, 3f64.ln()]))?;
        assert!((s.values[0] - 0.25).abs() < 1e-7 && (s.values[1] - 0.75).abs() < 1e-7);
        // Large logits do not overflow.
        let s = probabilities_from_logits(&arr(1, 2, &[1000.0, 1000.0]))?;
        assert_eq!(s.values, vec![0.5, 0.5]);
        // One column: sigmoid.
        let s = probabilities_from_logits(&arr(1, 1, &[0.0]))?;
        assert_eq!(s.values, vec![0.5, 0.5]);
        Ok(())
    }

    #[test]
    fn row_sum_error_names_row() -> anyhow::Result<()> {
        let e = check_probabilities(&arr(2, 2, &[0.5, 0.5, 0.5, 0.6])).unwrap_err();
        assert!(matches!(e, Error::BadData { row: 2, ref column, .. } if column == "sum"));
        // Within tolerance passes.
        check_probabilities(&arr(1, 2, &[0.5, 0.50005]))?;
        Ok(())
    }

    #[test]
    fn label_checks() -> anyhow::Result<()> {
        assert_eq!(
            labels_to_classes(&arr(3, 1, &[0.0, 2.0, 1.0]), 3)?,
            vec![0, 2, 1]
        );
        let e = labels_to_classes(&arr(3, 1, &[0.0, 3.0, 1.0]), 3).unwrap_err();
        assert!(matches!(e, Error::BadData { row: 2, .. }));
        assert!(labels_to_classes(&arr(1, 1, &[0.5]), 3).is_err());
        Ok(())
    }
}
