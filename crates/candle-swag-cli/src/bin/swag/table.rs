//! The table arguments that `swag fit`, `swag bench-uci` and `swag bench-classify` share.

use std::path::PathBuf;

use candle_swag::Result;
use candle_swag_cli::data::{load_csv, CsvConfig, CsvParams, TabularData, TaskKind};

/// A CSV table and how its columns are read.
#[derive(clap::Args)]
pub struct TableArgs {
    /// The table: CSV with a header; every column but the target, the split column (fit) and
    /// the ignored ones is a feature (numeric, or one-hot with --categorical), standardised
    /// with the training rows' mean and std.
    #[arg(long)]
    pub data: PathBuf,
    /// Name of the target column.
    #[arg(long)]
    pub target: String,
    /// Columns to drop (identifiers, free text), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ignore: Vec<String>,
    /// Text feature columns to one-hot encode, comma-separated; `swag predict` refuses a
    /// category the training file did not have.
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
}

impl TableArgs {
    /// Checks the column options for `task` and reads the table: its path, the checked
    /// options and the data.
    pub fn read(self, task: TaskKind) -> Result<(PathBuf, CsvConfig, TabularData)> {
        let spec = CsvParams {
            ignore: self.ignore,
            categorical: self.categorical,
            ..CsvParams::new(self.target, task)
        }
        .check()?;
        let data = load_csv(&self.data, &spec)?;
        Ok((self.data, spec, data))
    }
}
