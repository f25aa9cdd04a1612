//! `swag collect` (in progress).

/// Arguments of `swag collect`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("collect", "not available yet"))
}
