//! `swag fit` (in progress).

/// Arguments of `swag fit`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("fit", "not available yet"))
}
