//! The in-memory form of one input array, where it came from, and what it is for.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_swag::error::{Error, Result};

/// What an input array is used for; decides its default names and its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Class probabilities `[N, C]` (rows sum to 1), or `[N]` read as P(y = 1) of a binary task.
    Probabilities,
    /// Unnormalised class scores `[N, C]`; a softmax turns them into probabilities.
    Logits,
    /// Integer class labels `[N]` in `0..C`.
    Labels,
    /// Gaussian predictive means `[N]` of a regression model.
    Mean,
    /// Gaussian predictive standard deviations `[N]`, all > 0.
    Std,
    /// Regression targets `[N]`.
    Targets,
}

impl Role {
    /// Array names (in `.npz`/`.safetensors`) or CSV column names tried, in order, when the
    /// user names none.
    pub fn default_names(self) -> &'static [&'static str] {
        match self {
            Role::Probabilities => &["probs", "probabilities", "prob", "p"],
            Role::Logits => &["logits", "scores"],
            Role::Labels => &["labels", "label", "y", "target", "targets"],
            Role::Mean => &["mean", "mu", "pred_mean"],
            Role::Std => &["std", "sigma", "pred_std", "stddev"],
            Role::Targets => &["targets", "target", "y", "labels"],
        }
    }

    /// Whether the role takes several columns (one per class).
    pub fn is_matrix(self) -> bool {
        matches!(self, Role::Probabilities | Role::Logits)
    }

    /// The name used in messages, as the CLI option spells it.
    pub fn option_name(self) -> &'static str {
        match self {
            Role::Probabilities => "--probs",
            Role::Logits => "--probs (with --logits)",
            Role::Labels => "--labels",
            Role::Mean => "--mean",
            Role::Std => "--std",
            Role::Targets => "--targets",
        }
    }
}

/// Where to read an array: a file, and optionally the array (or CSV column) inside it.
///
/// Parsed from `PATH` or `PATH:NAME`. The `:NAME` suffix is split off only when `PATH:NAME`
/// itself is not an existing file, so paths containing colons keep working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSource {
    /// The file to read.
    pub path: PathBuf,
    /// The array (`.npz`, `.safetensors`) or column (`.csv`) to take; `None` picks by role.
    pub key: Option<String>,
}

impl InputSource {
    /// An input reading the whole of `path` (or the array its role names by default).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        InputSource {
            path: path.into(),
            key: None,
        }
    }

    /// Parses `PATH` or `PATH:NAME` as described on [`InputSource`].
    pub fn parse(text: &str) -> Self {
        if !Path::new(text).exists() {
            if let Some((path, key)) = text.rsplit_once(':') {
                if !path.is_empty() && !key.is_empty() && !key.contains('/') {
                    return InputSource {
                        path: PathBuf::from(path),
                        key: Some(key.to_string()),
                    };
                }
            }
        }
        InputSource::new(text)
    }
}

impl fmt::Display for InputSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}:{}", self.path.display(), k),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// The floating-point precision an array was stored in.
///
/// Values are held as `f64` either way, but calibration bins compare a confidence with the bin
/// edges *in the input's precision* (see [`candle_swag::metrics`]): an `f32` file's `0.3` must be
/// compared as `0.3f32`, not as its widened `f64` value `0.30000001192…`, or it lands in the
/// next bin. Callers pass [`Array::to_f32`] to the metrics for [`Precision::Single`] arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `f16`, `bf16` or `f32` storage (every value exact in `f32`).
    Single,
    /// `f64` storage, integers, or decimal text (CSV).
    Double,
}

/// A numeric array of `rows × cols` values in row-major order, read from a file.
///
/// A 1-D input `[N]` is stored with `cols == 1`. Values are `f64` whatever the file's dtype, so
/// that checks see exactly what was written (an `f16` file is widened, never rounded).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Where the values came from, as shown in error messages (`path` or `path:name`).
    pub source: String,
    /// Number of rows (first axis).
    pub rows: usize,
    /// Number of columns (second axis; 1 for a 1-D array).
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub values: Vec<f64>,
    /// Column names from a CSV header, when there was one.
    pub column_names: Option<Vec<String>>,
    /// The precision the values were stored in.
    pub precision: Precision,
}

impl Array {
    /// Builds an array of [`Precision::Double`] values, checking that `values` holds exactly
    /// `rows * cols` numbers.
    pub fn new(
        source: impl Into<String>,
        rows: usize,
        cols: usize,
        values: Vec<f64>,
    ) -> Result<Self> {
        let source = source.into();
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(Error::invalid(
                "values",
                format!(
                    "{source}: {} values do not fill {rows} rows × {cols} columns",
                    values.len()
                ),
            ));
        }
        Ok(Array {
            source,
            rows,
            cols,
            values,
            column_names: None,
            precision: Precision::Double,
        })
    }

    /// Row `i` (0-based).
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// The name of column `j` (0-based) as error messages show it: the CSV header if any,
    /// otherwise the index.
    pub fn column_name(&self, j: usize) -> String {
        match &self.column_names {
            Some(names) if j < names.len() => names[j].clone(),
            _ => j.to_string(),
        }
    }

    /// The values of a single-column array; an error naming the file if it has several columns.
    pub fn into_vector(self) -> Result<Vec<f64>> {
        if self.cols != 1 {
            return Err(Error::BadData {
                file: self.source,
                row: 0,
                column: "-".into(),
                reason: format!(
                    "expected one value per row, found {} columns (pick one column with FILE:NAME)",
                    self.cols
                ),
            });
        }
        Ok(self.values)
    }

    /// The values as `f32`, the dtype of candle models' outputs.
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}
