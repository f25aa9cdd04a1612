//! Tabular data from a CSV table (read by [`CsvTable`], the crate's one CSV reader): which
//! column is the target, which are features, which rows are train or test.
//!
//! Every problem is reported with the file, the 1-based data row (header not counted) and the
//! column name, so that a user can fix the file without reading this code.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_swag::error::{Error, Result};
use candle_swag_report::io::CsvTable;

/// Which part of the data a row belongs to, read from an optional split column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// A training row (split value `train`, case-insensitive).
    Train,
    /// A held-out test row (split value `test`, case-insensitive).
    Test,
}

/// Whether the target column holds class labels or real values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Class labels: any distinct text values, mapped to indices in sorted order.
    Classification,
    /// Real-valued targets.
    Regression,
}

/// What to read from a CSV file: the target column, an optional split column, and the task;
/// unchecked (the crate's config shape, see [`candle_swag::swag::config`]).
/// [`CsvParams::new`] gives the defaults for a target.
#[derive(Debug, Clone)]
pub struct CsvParams {
    /// Name of the target column. Every other column except `split_column` is a feature.
    pub target: String,
    /// Name of a column holding `train` / `test` per row; `None` makes every row a training row.
    /// When `Some`, a missing column is an error.
    pub split_column: Option<String>,
    /// How to read the target column.
    pub task: TaskKind,
    /// Columns that are neither target nor feature (identifiers, free text): dropped.
    pub ignore: Vec<String>,
    /// Text feature columns to one-hot encode ([`FeatureColumn::Categorical`]).
    pub categorical: Vec<String>,
}

impl CsvParams {
    /// Target and task; no split column, nothing ignored, every feature numeric.
    pub fn new(target: impl Into<String>, task: TaskKind) -> Self {
        Self {
            target: target.into(),
            split_column: None,
            task,
            ignore: Vec::new(),
            categorical: Vec::new(),
        }
    }

    /// The checked config: no column in two roles (target, split, ignored, categorical); the
    /// error names the option. Whether the columns exist is checked against each file.
    pub fn check(&self) -> Result<CsvConfig> {
        for (flag, names) in [("ignore", &self.ignore), ("categorical", &self.categorical)] {
            if let Some(name) = names
                .iter()
                .find(|n| **n == self.target || Some(*n) == self.split_column.as_ref())
            {
                return Err(Error::invalid(
                    flag,
                    format!("`{name}` is the target or split column"),
                ));
            }
        }
        if let Some(name) = self.categorical.iter().find(|c| self.ignore.contains(c)) {
            return Err(Error::invalid(
                "categorical",
                format!("`{name}` is also in --ignore"),
            ));
        }
        Ok(CsvConfig(self.clone()))
    }
}

/// What to read from a CSV file (from [`CsvParams::check`]); read it through `Deref`.
#[derive(Debug, Clone)]
pub struct CsvConfig(CsvParams);

impl std::ops::Deref for CsvConfig {
    type Target = CsvParams;
    fn deref(&self) -> &CsvParams {
        &self.0
    }
}

/// How one feature column of a table becomes model inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureColumn {
    /// A numeric column, one input, as written in the file.
    Numeric {
        /// Column name.
        name: String,
    },
    /// A text column, one-hot encoded: one input per category (1 for the row's category, 0
    /// for the others), in this order. The categories are the distinct non-empty values of the
    /// table it was fitted on, sorted as class labels are ([`sorted_labels`]).
    Categorical {
        /// Column name.
        name: String,
        /// Known categories, one input each.
        categories: Vec<String>,
    },
}

impl FeatureColumn {
    /// The column's name in the file.
    pub fn name(&self) -> &str {
        match self {
            FeatureColumn::Numeric { name } | FeatureColumn::Categorical { name, .. } => name,
        }
    }

    /// The model inputs it gives: `name`, or `name=category` per category.
    pub fn input_names(&self) -> Vec<String> {
        match self {
            FeatureColumn::Numeric { name } => vec![name.clone()],
            FeatureColumn::Categorical { name, categories } => {
                categories.iter().map(|c| format!("{name}={c}")).collect()
            }
        }
    }
}

/// The model inputs of `columns`, in order ([`FeatureColumn::input_names`]).
pub fn input_names(columns: &[FeatureColumn]) -> Vec<String> {
    columns
        .iter()
        .flat_map(FeatureColumn::input_names)
        .collect()
}

/// The rows of `table` as model inputs (row-major, `num_rows × input_names(columns).len()`).
///
/// Errors name the file, row and column: a missing column, a non-numeric cell in a numeric
/// column (with the hint to declare it categorical or ignore it), an empty cell or a category
/// not among the known ones in a categorical column.
pub fn encode_features(table: &CsvTable, columns: &[FeatureColumn]) -> Result<Vec<f64>> {
    let width = input_names(columns).len();
    let mut out = vec![0.0; table.num_rows() * width];
    let mut offset = 0;
    for column in columns {
        match column {
            FeatureColumn::Numeric { name } => {
                let values = table
                    .numeric_column(name)
                    .map_err(|e| text_column_hint(e, name))?;
                for (i, v) in values.into_iter().enumerate() {
                    out[i * width + offset] = v;
                }
                offset += 1;
            }
            FeatureColumn::Categorical { name, categories } => {
                for (i, cell) in table.text_column(name)?.into_iter().enumerate() {
                    let k = categories.iter().position(|c| c == cell).ok_or_else(|| {
                        Error::BadData {
                            file: table.source().to_string(),
                            row: i + 1,
                            column: name.clone(),
                            reason: if cell.is_empty() {
                                "empty cell in a categorical column".to_string()
                            } else {
                                format!(
                                    "category `{cell}` is not one of the {} known when the model was fitted ({})",
                                    categories.len(),
                                    categories.join(", ")
                                )
                            },
                        }
                    })?;
                    out[i * width + offset + k] = 1.0;
                }
                offset += categories.len();
            }
        }
    }
    Ok(out)
}

/// Adds to a "not a number" error in a numeric feature column how to use a text column.
fn text_column_hint(err: Error, name: &str) -> Error {
    err.map_bad_data(|_, _, reason| {
        if reason.ends_with("is not a number") {
            reason.push_str(&format!(
                " (a text column: pass --categorical {name} to one-hot encode it, or --ignore {name})"
            ));
        }
    })
}

/// Targets read from the target column.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class indices into `labels`; `labels` are the distinct target texts, sorted numerically
    /// when every label parses as a number, otherwise lexicographically (so `"1"` and `"1.0"` are
    /// distinct labels).
    Classes {
        /// Class index per row.
        indices: Vec<u32>,
        /// Class label per class index.
        labels: Vec<String>,
    },
    /// Real-valued target per row, in the file's units.
    Values(Vec<f64>),
}

/// A numeric table read from CSV: features (row-major, raw units), targets and splits.
#[derive(Debug, Clone)]
pub struct TabularData {
    /// The feature columns, in file order, and how each is encoded.
    pub columns: Vec<FeatureColumn>,
    /// Model input names ([`input_names`] of `columns`).
    pub feature_names: Vec<String>,
    /// Row-major features, `num_rows × feature_names.len()`, as written in the file (one-hot
    /// 0/1 for categorical columns).
    pub features: Vec<f64>,
    /// Targets per row.
    pub targets: Targets,
    /// The split of each row (all [`Split::Train`] when the spec has no split column).
    pub splits: Vec<Split>,
}

impl TabularData {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.splits.len()
    }

    /// Number of feature columns.
    pub fn num_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Indices of the rows of a split, in file order.
    pub fn rows_of(&self, split: Split) -> Vec<usize> {
        (0..self.num_rows())
            .filter(|&i| self.splits[i] == split)
            .collect()
    }
}

/// Reads a CSV file as described by `spec` (see [`load_table`]).
pub fn load_csv(path: impl AsRef<Path>, spec: &CsvConfig) -> Result<TabularData> {
    load_table(&CsvTable::read(path)?, spec)
}

/// Extracts features, targets and splits from a table.
///
/// Errors (each naming file, row and column): a missing target or split column, a split value
/// other than `train`/`test`, a non-numeric feature (or regression target), an `ignore` or
/// `categorical` name that is not a column (naming the option), no feature column,
/// no training row, and, for classification, fewer than two distinct classes among the training
/// rows.
pub fn load_table(table: &CsvTable, spec: &CsvConfig) -> Result<TabularData> {
    let file = table.source().to_string();
    table.column_index(&spec.target)?;
    let splits = match &spec.split_column {
        None => vec![Split::Train; table.num_rows()],
        Some(col) => table
            .text_column(col)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v.to_ascii_lowercase().as_str() {
                "train" => Ok(Split::Train),
                "test" => Ok(Split::Test),
                _ => Err(Error::BadData {
                    file: file.clone(),
                    row: i + 1,
                    column: col.clone(),
                    reason: format!("split value `{v}` is neither `train` nor `test`"),
                }),
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if !splits.contains(&Split::Train) {
        return Err(Error::BadData {
            file,
            row: 0,
            column: spec.split_column.clone().unwrap_or_default(),
            reason: "no training rows".to_string(),
        });
    }
    let columns = feature_columns(table, spec)?;
    let feature_names = input_names(&columns);
    let features = encode_features(table, &columns)?;
    let targets = match spec.task {
        TaskKind::Regression => Targets::Values(table.numeric_column(&spec.target)?),
        TaskKind::Classification => {
            let texts = table.text_column(&spec.target)?;
            let labels = sorted_labels(texts.iter().copied());
            let index: BTreeMap<&str, u32> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.as_str(), i as u32))
                .collect();
            let mut indices = Vec::with_capacity(texts.len());
            for (i, t) in texts.iter().enumerate() {
                if t.is_empty() {
                    return Err(Error::BadData {
                        file,
                        row: i + 1,
                        column: spec.target.clone(),
                        reason: "empty class label".to_string(),
                    });
                }
                indices.push(index[t]);
            }
            let train_classes: HashSet<u32> = indices
                .iter()
                .zip(&splits)
                .filter(|(_, s)| **s == Split::Train)
                .map(|(c, _)| *c)
                .collect();
            if train_classes.len() < 2 {
                return Err(Error::BadData {
                    file,
                    row: 0,
                    column: spec.target.clone(),
                    reason: format!(
                        "classification needs at least two classes among the training rows; found {}",
                        train_classes.len()
                    ),
                });
            }
            Targets::Classes { indices, labels }
        }
    };
    Ok(TabularData {
        columns,
        feature_names,
        features,
        targets,
        splits,
    })
}

/// The feature columns of `table` under `spec`: every column but the target, the split
/// column and the ignored ones, categorical where the spec says so.
fn feature_columns(table: &CsvTable, spec: &CsvConfig) -> Result<Vec<FeatureColumn>> {
    for (flag, names) in [("ignore", &spec.ignore), ("categorical", &spec.categorical)] {
        for name in names {
            table.column_index(name).map_err(|e| match e {
                Error::BadData { reason, .. } => {
                    Error::invalid(flag, format!("`{name}`: {reason} of {}", table.source()))
                }
                other => other,
            })?;
        }
    }
    let mut columns = Vec::new();
    for name in table.header() {
        if *name == spec.target
            || Some(name) == spec.split_column.as_ref()
            || spec.ignore.contains(name)
        {
            continue;
        }
        if spec.categorical.contains(name) {
            let cells = table.text_column(name)?;
            if let Some(i) = cells.iter().position(|c| c.is_empty()) {
                return Err(Error::BadData {
                    file: table.source().to_string(),
                    row: i + 1,
                    column: name.clone(),
                    reason: "empty cell in a categorical column".to_string(),
                });
            }
            columns.push(FeatureColumn::Categorical {
                name: name.clone(),
                categories: sorted_labels(cells.into_iter()),
            });
        } else {
            columns.push(FeatureColumn::Numeric { name: name.clone() });
        }
    }
    if columns.is_empty() {
        return Err(Error::BadData {
            file: table.source().to_string(),
            row: 0,
            column: "-".to_string(),
            reason: "no feature columns besides the target, split and ignored columns".to_string(),
        });
    }
    Ok(columns)
}

/// Distinct labels in sorted order: numeric order when all parse as finite numbers, otherwise
/// lexicographic (byte) order.
pub fn sorted_labels<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut labels: Vec<String> = values
        .filter(|v| !v.is_empty())
        .collect::<HashSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    let numeric: Option<Vec<f64>> = labels
        .iter()
        .map(|l| l.parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect();
    if numeric.is_some() {
        labels.sort_by(|a, b| {
            let (x, y) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            x.total_cmp(&y).then_with(|| a.cmp(b))
        });
    } else {
        labels.sort();
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sort_numerically_when_numeric() -> anyhow::Result<()> {
        let l = sorted_labels(["10", "9", "2", "9"].into_iter());
        assert_eq!(l, vec!["2", "9", "10"]);
        let l = sorted_labels(["b", "a", "10"].into_iter());
        assert_eq!(l, vec!["10", "a", "b"]);
        Ok(())
    }
}
