//! `swag demo` (in progress).

/// Arguments of `swag demo`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("demo", "not available yet"))
}
