//! Fuzz targets for every reader of outside bytes in candle-swag (see `README.md`).
//!
//! The bodies live in `targets.rs` and `transformers_targets.rs`, which the main crate's and
//! the transformers crate's `tests/fuzz_replay.rs` also include, so that the committed corpora are replayed on stable with no fuzzing tools.

mod targets;
mod transformers_targets;

pub use targets::*;
pub use transformers_targets::*;
