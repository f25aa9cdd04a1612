//! `--device`, shared by the subcommands that train or predict.

use candle_core::Device;
use candle_swag::device::{select, DeviceRequest};

/// Where a subcommand trains and predicts.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Device to train and predict on: cpu (the default: the built-in MLPs are small, and the
    /// README's figures are CPU figures), auto (a GPU if this build supports one and one is
    /// present, else the CPU), cuda, cuda:N, metal, metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceRequest,
}

impl DeviceArgs {
    /// Opens the device; with `auto` in a GPU build that found no GPU, says so on stderr.
    pub fn open(&self) -> candle_swag::Result<Device> {
        let chosen = select(self.device)?;
        if let Some(notice) = &chosen.fallback {
            eprintln!("{notice}");
        }
        Ok(chosen.device)
    }
}
