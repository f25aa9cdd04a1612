//! `swag report` (in progress).

/// Arguments of `swag report`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("report", "not available yet"))
}
