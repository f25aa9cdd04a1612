//! `swag predict` (in progress).

/// Arguments of `swag predict`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("predict", "not available yet"))
}
