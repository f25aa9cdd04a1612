//! One error type for the whole crate.
//!
//! Every variant names *what* went wrong and *where* (parameter, file, row, column), so that a
//! message printed by the CLI is enough to fix the input without reading the source.

use std::path::PathBuf;

/// Result alias used throughout candle-swag.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors returned by candle-swag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised by candle itself (device, dtype, shape, kernel).
    #[error("candle: {}", candle_message(.0))]
    Candle(#[from] candle_core::Error),

    /// A function argument or option has a value that cannot be used.
    #[error("invalid value for `{name}`: {reason}")]
    InvalidArgument {
        /// The argument or option name, as the user spells it.
        name: String,
        /// Why the value was refused.
        reason: String,
    },

    /// A weight snapshot holds NaN or infinity; the posterior (or average) it was offered to
    /// was left untouched.
    #[error("snapshot holds a non-finite value ({value}) in parameter `{parameter}` at index {index} (row-major); nothing was updated")]
    NonFinite {
        /// Name of the offending parameter.
        parameter: String,
        /// Index of the first non-finite element inside that parameter (row-major).
        index: usize,
        /// The offending value, printed.
        value: String,
    },

    /// A parameter layout does not match what was expected (names, shapes or count).
    #[error("parameter layout mismatch: {0}")]
    LayoutMismatch(String),

    /// The posterior holds too few snapshots for the requested operation.
    #[error("posterior is empty or too small: {0}")]
    NotEnoughSnapshots(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// Another process is writing the same destination (see
    /// [`crate::crash_safe::WriteLock`]); nothing was written.
    #[error("{}: is being written by {}; a second writer is refused (wait for it to end)", .path.display(), holder_text(*.holder))]
    Locked {
        /// The destination.
        path: PathBuf,
        /// The process id recorded by the holder (`None` if it had not recorded it yet).
        holder: Option<u32>,
    },

    /// A file was read but its content is not valid for this use.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A value in tabular input data is not acceptable.
    #[error("{file}: {}{reason}", data_location(*.row, .column))]
    BadData {
        /// The file (or input name) holding the value.
        file: String,
        /// 1-based data row (header not counted); 0 when the whole file is concerned.
        row: usize,
        /// Column name (or index as text).
        column: String,
        /// What is wrong.
        reason: String,
    },

    /// Training diverged: the mean loss of an epoch is not finite.
    #[error("training diverged at epoch {epoch} (mean loss {loss}); lower the learning rate")]
    Diverged {
        /// The epoch (counted from 0) whose loss is not finite.
        epoch: usize,
        /// That epoch's mean loss.
        loss: f64,
    },

    /// Drawing a plot failed (the `candle-swag-report` crate).
    #[error("plot `{plot}`: {reason}")]
    Plot {
        /// Which plot.
        plot: String,
        /// The backend's message.
        reason: String,
    },

    /// JSON (de)serialisation failed: a posterior header, a shard index, a report or a run
    /// directory.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Edits the file, column or reason of a [`Error::BadData`] in place, so that a caller can
    /// say more about where the data came from; other errors pass unchanged.
    pub fn map_bad_data(
        mut self,
        edit: impl FnOnce(&mut String, &mut String, &mut String),
    ) -> Self {
        if let Error::BadData {
            file,
            column,
            reason,
            ..
        } = &mut self
        {
            edit(file, column, reason);
        }
        self
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::BadFile`].
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// candle's message without the backtrace it attaches when `RUST_BACKTRACE` is set, so that
/// errors stay one line.
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

/// `row R, column `C`: ` for a [`Error::BadData`], leaving out a row of 0 (the whole file) and
/// an empty column (the whole row), so that a message never names an empty column.
fn data_location(row: usize, column: &str) -> String {
    match (row, column.is_empty()) {
        (0, true) => String::new(),
        (0, false) => format!("column `{column}`: "),
        (r, true) => format!("row {r}: "),
        (r, false) => format!("row {r}, column `{column}`: "),
    }
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_display_without_backtrace() -> anyhow::Result<()> {
        let inner = candle_core::Error::Msg("shape mismatch".into());
        let e = Error::from(candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        });
        assert_eq!(e.to_string(), "candle: shape mismatch");
        Ok(())
    }

    #[test]
    fn bad_data_names_only_the_row_and_column_it_has() {
        let at = |row: usize, column: &str| Error::BadData {
            file: "probs.csv".into(),
            row,
            column: column.into(),
            reason: "bad".into(),
        };
        assert_eq!(
            at(3, "p1").to_string(),
            "probs.csv: row 3, column `p1`: bad"
        );
        assert_eq!(at(148, "").to_string(), "probs.csv: row 148: bad");
        assert_eq!(at(0, "label").to_string(), "probs.csv: column `label`: bad");
        assert_eq!(at(0, "").to_string(), "probs.csv: bad");
    }
}
