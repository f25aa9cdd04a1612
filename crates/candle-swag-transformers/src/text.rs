//! Labelled text tables and unlabelled text files: what a text classifier trains on, is
//! tested on, and screens for out-of-distribution inputs.
//!
//! # Formats
//! - **Labelled** ([`LabelledText::read_csv`]): CSV (RFC 4180: fields with commas, quotes or
//!   newlines are quoted, `""` inside quotes is one quote) with a header row holding a `text`
//!   and a `label` column, in any order, other columns ignored. Labels are strings (`positive`,
//!   `2`, ...). Rows are numbered from 1 after the header in every error.
//! - **Unlabelled** ([`read_text_lines`]): UTF-8, one text a line; blank lines are skipped
//!   (a trailing newline or a blank separator line is not a text).
//!
//! # Classes
//! A training table defines the classes: its distinct labels, sorted, so that class `i` is the
//! `i`-th label in byte order whatever the row order. A test table is read against the
//! training classes ([`LabelledText::read_csv_with_classes`]): a label the training table does
//! not have is an error naming the file and row, never a silently new class.

use std::path::Path;

use candle_swag::{Error, Result};

/// Texts with their class indices, and the class names (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledText {
    /// One text per row, as read (no trimming).
    pub texts: Vec<String>,
    /// The class index of each row, into [`LabelledText::classes`].
    pub labels: Vec<u32>,
    /// The class names, sorted.
    pub classes: Vec<String>,
}

impl LabelledText {
    /// Reads a training table: its classes are its distinct labels, sorted. At least two
    /// classes and one row are required.
    pub fn read_csv(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let rows = read_rows(path)?;
        let mut classes: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
        classes.sort();
        classes.dedup();
        if classes.len() < 2 {
            return Err(Error::bad_file(
                path,
                format!(
                    "a training table needs at least two distinct labels, found {:?}",
                    classes
                ),
            ));
        }
        Self::index(path, rows, classes)
    }

    /// Reads a table whose labels must all be among `classes` (those of the training table).
    pub fn read_csv_with_classes(path: impl AsRef<Path>, classes: &[String]) -> Result<Self> {
        let path = path.as_ref();
        let rows = read_rows(path)?;
        Self::index(path, rows, classes.to_vec())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// True when the table has no row (never, for a table read from a file).
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    fn index(path: &Path, rows: Vec<(String, String)>, classes: Vec<String>) -> Result<Self> {
        let mut texts = Vec::with_capacity(rows.len());
        let mut labels = Vec::with_capacity(rows.len());
        for (i, (text, label)) in rows.into_iter().enumerate() {
            let class = classes.iter().position(|c| *c == label).ok_or_else(|| {
                bad_row(
                    path,
                    i + 1,
                    "label",
                    format!("label `{label}` is not one of the training labels {classes:?}"),
                )
            })?;
            texts.push(text);
            labels.push(class as u32);
        }
        Ok(Self {
            texts,
            labels,
            classes,
        })
    }
}

fn bad_row(path: &Path, row: usize, column: &str, reason: impl Into<String>) -> Error {
    Error::BadData {
        file: path.display().to_string(),
        row,
        column: column.to_string(),
        reason: reason.into(),
    }
}

/// The `(text, label)` of every row, checked: both present and non-empty.
fn read_rows(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .map_err(|e| Error::bad_file(path, format!("header row: {}", csv_reason(&e))))?
        .clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!(
                        "no `{name}` column in the header (columns: {:?}); a labelled text table has `text` and `label` columns",
                        header.iter().collect::<Vec<_>>()
                    ),
                )
            })
    };
    let (text_col, label_col) = (column("text")?, column("label")?);
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        let record = record.map_err(|e| bad_row(path, row, "", csv_reason(&e)))?;
        let field = |col: usize, name: &str| -> Result<String> {
            match record.get(col) {
                Some(v) if !v.trim().is_empty() => Ok(v.to_string()),
                Some(_) => Err(bad_row(path, row, name, format!("empty {name}"))),
                None => Err(bad_row(
                    path,
                    row,
                    name,
                    format!("missing {name} (the row has {} fields)", record.len()),
                )),
            }
        };
        let text = field(text_col, "text")?;
        let label = field(label_col, "label")?.trim().to_string();
        rows.push((text, label));
    }
    if rows.is_empty() {
        return Err(Error::bad_file(path, "no data row after the header"));
    }
    Ok(rows)
}

/// The csv crate's message, on one line and without its own position (ours is given).
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Reads one text a line (UTF-8), skipping blank lines; at least one text is required.
pub fn read_text_lines(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Error::bad_file(path, format!("line {line}: not valid UTF-8"))
    })?;
    let texts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if texts.is_empty() {
        return Err(Error::bad_file(
            path,
            "no text in the file (every line is blank)",
        ));
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        p
    }

    #[test]
    fn labels_become_sorted_class_indices_and_quoted_fields_survive() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let train = write(
            dir.path(),
            "train.csv",
            "id,label,text\n1,positive,\"great, really \"\"great\"\"\"\n2,negative,bad\n3,neutral,\"two\nlines\"\n4,positive,ok\n",
        );
        let t = LabelledText::read_csv(&train)?;
        assert_eq!(t.classes, ["negative", "neutral", "positive"]);
        assert_eq!(t.labels, [2, 0, 1, 2]);
        assert_eq!(t.texts[0], "great, really \"great\"");
        assert_eq!(t.texts[2], "two\nlines");
        let test = write(dir.path(), "test.csv", "text,label\nmeh,neutral\n");
        let u = LabelledText::read_csv_with_classes(&test, &t.classes)?;
        assert_eq!(u.labels, [1]);
        Ok(())
    }

    #[test]
    fn bad_tables_name_the_file_row_and_column() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let classes = vec!["neg".to_string(), "pos".to_string()];
        let cases = [
            (
                "text,label\na,pos\n,neg\n",
                "row 2, column `text`: empty text",
            ),
            (
                "text,label\na,pos\nb,\n",
                "row 2, column `label`: empty label",
            ),
            (
                "text,label\na,pos\nb\n",
                "row 2, column `label`: missing label",
            ),
            (
                "text,label\na,pos\nb,maybe\n",
                "row 2, column `label`: label `maybe` is not one of",
            ),
            ("words,label\na,pos\n", "no `text` column"),
            ("text,label\n", "no data row"),
        ];
        for (i, (body, needle)) in cases.iter().enumerate() {
            let p = write(dir.path(), &format!("t{i}.csv"), body);
            let err = LabelledText::read_csv_with_classes(&p, &classes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "case {i}: `{err}` lacks `{needle}`");
            assert!(err.contains(&format!("t{i}.csv")), "case {i}: {err}");
        }
        let one = write(dir.path(), "one.csv", "text,label\na,pos\nb,pos\n");
        let err = LabelledText::read_csv(&one).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("at least two distinct labels")));
        Ok(())
    }

    #[test]
    fn text_lines_skip_blank_lines_and_refuse_an_empty_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = write(
            dir.path(),
            "ood.txt",
            "first text\n\n  \nsecond, with a comma\n",
        );
        assert_eq!(read_text_lines(&p)?, ["first text", "second, with a comma"]);
        let empty = write(dir.path(), "empty.txt", "\n\n");
        assert!(read_text_lines(&empty).is_err());
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"ok\n\xff\n")?;
        let err = read_text_lines(&bad).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("line 2: not valid UTF-8")));
        Ok(())
    }
}
