//! The table arguments that `swag fit` and `swag bench-uci` share.

use std::path::PathBuf;

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
