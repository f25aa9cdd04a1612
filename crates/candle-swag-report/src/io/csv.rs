//! The crate's one CSV reader, for data tables (`swag fit`, the bundled data) and prediction
//! files (`swag report`) alike.
//!
//! Parsing is the `csv` crate's (RFC 4180), read record by record from the file: UTF-8 text (a
//! leading byte-order mark is skipped); records end with `\n` or `\r\n`; empty and blank lines
//! are skipped; cells are separated by commas and trimmed of surrounding whitespace; a cell in
//! double quotes may hold commas and line breaks, with `""` for a literal quote (a quote opens a
//! quoted cell only as the cell's first character; elsewhere it is text); every row has as many
//! cells as the header. Errors name the file, the 1-based data row (the header is not counted)
//! and the column.

use std::collections::HashSet;
use std::io::Read;
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
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_reader(
            std::io::BufReader::new(file),
            &path.display().to_string(),
            header,
        )
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
        Self::from_reader(text.as_bytes(), source, header_rule)
    }

    /// Reads CSV records from `reader` one at a time (errors as for [`parse`](Self::parse)).
    fn from_reader(reader: impl Read, source: &str, header_rule: Header) -> Result<Self> {
        let bad = |row: usize, column: String, reason: String| Error::BadData {
            file: source.to_string(),
            row,
            column,
            reason,
        };
        let mut records = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(reader)
            .into_records()
            .filter(|r| !matches!(r, Ok(rec) if rec.iter().all(str::is_empty)));
        // The position of a record counts data rows from 1 once the header is known.
        let cells_of = |r: std::result::Result<csv::StringRecord, csv::Error>, row: usize| {
            r.map(|rec| rec.iter().map(str::to_string).collect::<Vec<_>>())
                .map_err(|e| match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => bad(
                        row,
                        "-".to_string(),
                        "not UTF-8 text (a CSV file must be UTF-8)".to_string(),
                    ),
                    _ => bad(row, "-".to_string(), format!("unreadable CSV: {e}")),
                })
        };
        let mut first = match records.next() {
            Some(r) => cells_of(r, 1)?,
            None => {
                return Err(bad(
                    0,
                    "-".to_string(),
                    "the file is empty (no header, no rows)".to_string(),
                ))
            }
        };
        if let Some(c) = first.first_mut() {
            if let Some(rest) = c.strip_prefix('\u{feff}') {
                *c = rest.trim_start().to_string();
            }
        }
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
                return Err(bad(
                    0,
                    format!("#{}", i + 1),
                    "empty column name in the header".to_string(),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(bad(
                    0,
                    name.clone(),
                    "column name appears twice in the header".to_string(),
                ));
            }
        }
        for record in records {
            let data_row = rows.len() + 1;
            let cells = cells_of(record, data_row)?;
            if cells.len() != header.len() {
                let column = if cells.len() > header.len() {
                    format!("#{} (beyond the header)", header.len() + 1)
                } else {
                    header[cells.len()].clone()
                };
                return Err(bad(
                    data_row,
                    column,
                    format!(
                        "ragged row: {} cells where the {} has {}",
                        cells.len(),
                        if has_header { "header" } else { "first row" },
                        header.len()
                    ),
                ));
            }
            rows.push(cells);
        }
        if rows.is_empty() {
            return Err(bad(
                0,
                "-".to_string(),
                "the file is empty: a header but no data rows".to_string(),
            ));
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

    fn cells(text: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let t = CsvTable::parse_with(text, "t.csv", Header::Required)?;
        Ok(t.rows)
    }

    #[test]
    fn cells_split_with_quotes_as_rfc_4180_says() -> anyhow::Result<()> {
        let text = "a,b,c\n1,\"x,y\",\"q\"\"r\"\r\n2 , 5 \"in\" ,\n";
        assert_eq!(
            cells(text)?,
            vec![vec!["1", "x,y", "q\"r"], vec!["2", "5 \"in\"", ""]]
        );
        // A quoted cell spans lines; blank lines between records are skipped.
        let text = "a,b\n\"line 1\nline 2\",3\n\n   \n4,5\n";
        assert_eq!(
            cells(text)?,
            vec![vec!["line 1\nline 2", "3"], vec!["4", "5"]]
        );
        Ok(())
    }

    #[test]
    fn invalid_utf8_is_named_with_its_row() -> anyhow::Result<()> {
        let bytes: &[u8] = b"a,b\n1,2\n3,\xff\n";
        match CsvTable::from_reader(bytes, "u.csv", Header::Required).unwrap_err() {
            Error::BadData {
                file, row, reason, ..
            } => {
                assert_eq!((file.as_str(), row), ("u.csv", 2));
                assert!(reason.contains("UTF-8"), "{reason}");
            }
            other => panic!("expected BadData, got {other:?}"),
        }
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
