//! A small, strict CSV reader for numeric tables.
//!
//! The format is deliberately narrow: a header line of column names, then one row per line,
//! cells separated by commas, no quoting. Blank lines (including a trailing newline) are skipped.
//! Every problem is reported with the file, the 1-based data row (header not counted) and the
//! column name, so that a user can fix the file without reading this code.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};

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

/// A CSV file read into memory as text cells, checked to be rectangular.
#[derive(Debug, Clone)]
pub struct CsvTable {
    source: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl CsvTable {
    /// Reads and checks a CSV file (see the module docs for the accepted format).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses CSV text; `source` names the input in error messages (usually the file path).
    ///
    /// Errors: an empty input, an empty or duplicated column name, a row whose number of cells
    /// differs from the header's (a ragged row), or a header with no data rows.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header_line) = lines.next().ok_or_else(|| Error::BadData {
            file: source.to_string(),
            row: 0,
            column: "-".to_string(),
            reason: "the file is empty (a header line is required)".to_string(),
        })?;
        let header: Vec<String> = split_line(header_line);
        let mut seen = HashSet::new();
        for (i, name) in header.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::BadData {
                    file: source.to_string(),
                    row: 0,
                    column: format!("#{}", i + 1),
                    reason: "empty column name in the header".to_string(),
                });
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::BadData {
                    file: source.to_string(),
                    row: 0,
                    column: name.clone(),
                    reason: "column name appears twice in the header".to_string(),
                });
            }
        }
        let mut rows = Vec::new();
        for (data_row, (_, line)) in lines.enumerate() {
            let cells = split_line(line);
            if cells.len() != header.len() {
                let column = if cells.len() > header.len() {
                    format!("#{} (beyond the header)", header.len() + 1)
                } else {
                    header[cells.len()].clone()
                };
                return Err(Error::BadData {
                    file: source.to_string(),
                    row: data_row + 1,
                    column,
                    reason: format!(
                        "ragged row: {} cells where the header has {} columns",
                        cells.len(),
                        header.len()
                    ),
                });
            }
            rows.push(cells);
        }
        if rows.is_empty() {
            return Err(Error::BadData {
                file: source.to_string(),
                row: 0,
                column: "-".to_string(),
                reason: "the file has a header but no data rows".to_string(),
            });
        }
        Ok(Self {
            source: source.to_string(),
            header,
            rows,
        })
    }

    /// The name of the input, as used in error messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Column names in file order.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// Number of data rows.
    pub fn num_rows(&self) -> usize {
        self.rows.len()
    }

    /// The position of a column, or an error naming the missing column and the file.
    pub fn column_index(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::BadData {
                file: self.source.clone(),
                row: 0,
                column: name.to_string(),
                reason: format!(
                    "no such column in the header (columns: {})",
                    self.header.join(", ")
                ),
            })
    }

    /// The text cells of one column.
    pub fn text_column(&self, name: &str) -> Result<Vec<&str>> {
        let j = self.column_index(name)?;
        Ok(self.rows.iter().map(|r| r[j].as_str()).collect())
    }

    /// The cells of one column parsed as finite numbers; a non-numeric, empty, NaN or infinite
    /// cell gives an error naming its row and column.
    pub fn numeric_column(&self, name: &str) -> Result<Vec<f64>> {
        let j = self.column_index(name)?;
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| parse_number(&r[j], &self.source, i + 1, name))
            .collect()
    }

    /// The named columns as a row-major matrix (`num_rows × names.len()`).
    pub fn numeric_matrix(&self, names: &[String]) -> Result<Vec<f64>> {
        let idx = names
            .iter()
            .map(|n| self.column_index(n))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(self.rows.len() * idx.len());
        for (i, r) in self.rows.iter().enumerate() {
            for (&j, name) in idx.iter().zip(names) {
                out.push(parse_number(&r[j], &self.source, i + 1, name)?);
            }
        }
        Ok(out)
    }
}

fn split_line(line: &str) -> Vec<String> {
    line.trim_end_matches('\r')
        .split(',')
        .map(|c| c.trim().to_string())
        .collect()
}

fn parse_number(cell: &str, file: &str, row: usize, column: &str) -> Result<f64> {
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(Error::BadData {
            file: file.to_string(),
            row,
            column: column.to_string(),
            reason: format!("value {v} is not finite"),
        }),
        Err(_) => Err(Error::BadData {
            file: file.to_string(),
            row,
            column: column.to_string(),
            reason: if cell.is_empty() {
                "empty cell where a number is expected".to_string()
            } else {
                format!("`{cell}` is not a number")
            },
        }),
    }
}

/// What to read from a CSV file: the target column, an optional split column, and the task.
#[derive(Debug, Clone)]
pub struct CsvSpec {
    /// Name of the target column. Every other column except `split_column` is a feature.
    pub target: String,
    /// Name of a column holding `train` / `test` per row; `None` makes every row a training row.
    /// When `Some`, a missing column is an error.
    pub split_column: Option<String>,
    /// How to read the target column.
    pub task: TaskKind,
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
    /// Feature column names, in file order.
    pub feature_names: Vec<String>,
    /// Row-major features, `num_rows × feature_names.len()`, as written in the file.
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
pub fn load_csv(path: impl AsRef<Path>, spec: &CsvSpec) -> Result<TabularData> {
    load_table(&CsvTable::read(path)?, spec)
}

/// Extracts features, targets and splits from a table.
///
/// Errors (each naming file, row and column): a missing target or split column, a split value
/// other than `train`/`test`, a non-numeric feature (or regression target), no feature column,
/// no training row, and, for classification, fewer than two distinct classes among the training
/// rows.
pub fn load_table(table: &CsvTable, spec: &CsvSpec) -> Result<TabularData> {
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
    let feature_names: Vec<String> = table
        .header()
        .iter()
        .filter(|h| **h != spec.target && Some(*h) != spec.split_column.as_ref())
        .cloned()
        .collect();
    if feature_names.is_empty() {
        return Err(Error::BadData {
            file,
            row: 0,
            column: "-".to_string(),
            reason: "no feature columns besides the target and split columns".to_string(),
        });
    }
    let features = table.numeric_matrix(&feature_names)?;
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
        feature_names,
        features,
        targets,
        splits,
    })
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
    fn labels_sort_numerically_when_numeric() {
        let l = sorted_labels(["10", "9", "2", "9"].into_iter());
        assert_eq!(l, vec!["2", "9", "10"]);
        let l = sorted_labels(["b", "a", "10"].into_iter());
        assert_eq!(l, vec!["10", "a", "b"]);
    }
}
