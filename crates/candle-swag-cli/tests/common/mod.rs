//! Helpers shared by the CLI crate's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The name of the argument an `InvalidArgument` error refers to; panics on anything else.
pub fn invalid_name<T: std::fmt::Debug>(r: candle_swag::Result<T>) -> String {
    match r {
        Err(candle_swag::Error::InvalidArgument { name, .. }) => name,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// The workspace root, where `data/` and `README.md` live.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
