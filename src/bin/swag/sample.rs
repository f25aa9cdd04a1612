//! `swag sample` (in progress).

/// Arguments of `swag sample`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> candle_swag::Result<()> {
    Err(candle_swag::Error::invalid("sample", "not available yet"))
}
