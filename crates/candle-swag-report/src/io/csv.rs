//! The crate's one CSV reader, for data tables (`swag fit`, the bundled data) and prediction
//! files (`swag report`) alike.
//!
//! Rules: UTF-8 text (a leading byte-order mark is skipped); lines end with `\n` or `\r\n`;
//! blank lines are skipped; cells are separated by commas and trimmed of surrounding
//! whitespace; a cell in double quotes may hold commas, with `""` for a literal quote (a quoted
//! cell cannot span lines, and quotes inside an unquoted cell are kept as text); every row has
//! as many cells as the header. Errors name the file, the 1-based data row (the header is not
//! counted) and the column.

use std::collections::HashSet;
use std::path::Path;

use candle_swag::error::{Error, Result};
use candle_swag::metrics::validate::not_finite_problem;

/// Whether the first line is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The first line names the columns (data tables).
    Required,
    /// The first line is a header when any of its cells is not a number, otherwise the first
    /// data row (prediction files, which frameworks often write without one).
    Detect,
}

/// A CSV file read into memory as text cells, checked to be rectangular.
#[derive(Debug, Clone)]
pub struct CsvTable {
    source: String,
    header: Vec<String>,
    has_header: bool,
    rows: Vec<Vec<String>>,
}

impl CsvTable {
    /// Reads and checks a CSV file whose first line is a header (module docs: the format).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_with(path, Header::Required)
    }

    /// Reads a CSV file with the given header rule.
    pub fn read_with(path: impl AsRef<Path>, header: Header) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::bad_file(path, "not a UTF-8 text (CSV) file"))?;
        Self::parse_with(&text, &path.display().to_string(), header)
    }

    /// Parses CSV text whose first line is a header; `source` names the input in error
    /// messages (usually the file path).
    ///
    /// Errors: an empty input, an empty or duplicated column name, a row whose number of cells
    /// differs from the header's (a ragged row), or a header with no data rows.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        Self::parse_with(text, source, Header::Required)
    }

    /// Parses CSV text with the given header rule (errors as for [`parse`](Self::parse)).
    pub fn parse_with(text: &str, source: &str, header_rule: Header) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first_line = lines.next().ok_or_else(|| Error::BadData {
            file: source.to_string(),
            row: 0,
            column: "-".to_string(),
            reason: "the file is empty (no header, no rows)".to_string(),
        })?;
        let first = split_line(first_line);
        let has_header = match header_rule {
            Header::Required => true,
            Header::Detect => first.iter().any(|c| c.parse::<f64>().is_err()),
        };
        let mut rows = Vec::new();
        let header: Vec<String> = if has_header {
            first
        } else {
            let names = (0..first.len()).map(|j| j.to_string()).collect();
            rows.push(first);
            names
        };
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
        for line in lines {
            let data_row = rows.len();
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
                        "ragged row: {} cells where the {} has {}",
                        cells.len(),
                        if has_header { "header" } else { "first row" },
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
                reason: "the file is empty: a header but no data rows".to_string(),
            });
        }
        Ok(Self {
            source: source.to_string(),
            header,
            has_header,
            rows,
        })
    }

    /// The name of the input, as used in error messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the first line was a header ([`Header::Detect`] may find none; the columns
    /// are then named `0`, `1`, ... by position).
    pub fn has_header(&self) -> bool {
        self.has_header
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

/// Splits one line into trimmed cells at the commas outside double quotes (module docs).
fn split_line(line: &str) -> Vec<String> {
    let line = line.trim_end_matches('\r');
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut at_cell_start = true;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if at_cell_start || cell.trim().is_empty() => quoted = true,
            ',' if !quoted => {
                cells.push(std::mem::take(&mut cell).trim().to_string());
                at_cell_start = true;
                continue;
            }
            _ => cell.push(c),
        }
        at_cell_start = false;
    }
    cells.push(cell.trim().to_string());
    cells
}

fn parse_number(cell: &str, file: &str, row: usize, column: &str) -> Result<f64> {
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(Error::BadData {
            file: file.to_string(),
            row,
            column: column.to_string(),
            reason: not_finite_problem(v),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_split_with_quotes() -> anyhow::Result<()> {
        assert_eq!(split_line(r#"1, "a,b" ,"x""y""#), vec!["1", "a,b", "x\"y"]);
        assert_eq!(split_line("a,b\r"), vec!["a", "b"]);
        assert_eq!(split_line(r#"5 "in",x"#), vec![r#"5 "in""#, "x"]);
        assert_eq!(split_line(",,"), vec!["", "", ""]);
        Ok(())
    }

    #[test]
    fn header_detection_and_bom() -> anyhow::Result<()> {
        let t = CsvTable::parse_with("\u{feff}0.5,0.5\n1,0\n", "p.csv", Header::Detect)?;
        assert!(!t.has_header());
        assert_eq!(t.header(), ["0", "1"]);
        assert_eq!(t.num_rows(), 2);
        let t = CsvTable::parse_with("\u{feff}p0,p1\n1,0\n", "p.csv", Header::Detect)?;
        assert!(t.has_header());
        assert_eq!(t.header(), ["p0", "p1"]);
        assert_eq!(t.numeric_column("p1")?, vec![0.0]);
        Ok(())
    }
}
