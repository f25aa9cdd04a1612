//! # candle-swag-cli
//!
//! The library behind the `swag` binary and the examples: the CSV pipeline ([`train`]), the
//! built-in MLP ([`models`]), the CSV and IDX readers and the bundled data ([`data`]), and the
//! SWAG primitives timed against the memory-bandwidth floor ([`perf`]). A candle user fitting a
//! posterior on their own model needs only the core crate, `candle-swag`.

pub mod data;
pub mod models;
pub mod perf;
pub mod train;
