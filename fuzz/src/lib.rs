//! Fuzz targets for every reader of outside bytes in candle-swag (see `README.md`).
//!
//! The bodies live in `targets.rs`, which the main crate's `tests/fuzz_replay.rs` also
//! includes, so that the committed corpora are replayed on stable with no fuzzing tools.

mod targets;

pub use targets::*;
