//! Reading prediction, label and target arrays written by any framework.
//!
//! `swag report` and the report builder take predictions as plain numeric arrays. This module
//! reads them from the formats people actually have on disk and checks them, so that every
//! mistake in an input file is reported with the file, the row and the column that hold it.
//!
//! # Formats
//!
//! | extension | content | picking one array |
//! |---|---|---|
//! | `.npy` | one array, 1-D `[N]` or 2-D `[N, C]`, any numeric dtype candle reads | — |
//! | `.npz` | several named arrays | `FILE.npz:NAME`, or the role's default names (below), or the only array |
//! | `.safetensors` | several named tensors | as for `.npz` |
//! | `.csv` (anything else is read as CSV) | comma-separated numbers, optional header row | `FILE.csv:COLUMN`, or role defaults |
//!
//! CSV files are read by [`CsvTable`] (its quoting rules are documented there) and have a
//! header when any cell of their first line is not a number ([`Header::Detect`]). Rows are numbered
//! from 1, not counting the header, and columns are named by their header or by their 0-based
//! index; array files use the same numbering (row `i + 1` is index `i` of the first axis).
//!
//! # Roles
//!
//! Each input has a [`Role`] that decides its default array or columns and how it is checked:
//! probabilities (`probs`, or CSV columns named `prob_*` as `swag predict` writes them),
//! logits, labels, predictive means, standard deviations, and regression targets.

mod array;
mod csv;
mod formats;
mod npy;
mod validate;

pub use array::{Array, InputSource, Precision, Role};
pub use csv::{CsvTable, Header};
pub use formats::read_input;
pub use validate::{
    check_finite, check_has_rows, check_positive, check_probabilities, check_same_rows,
    labels_to_classes, probabilities_from_logits,
};
