//! `swag inspect` (in progress).

/// Arguments of `swag inspect`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("inspect", "not available yet"))
}
