//! `swag demo`: the bundled digits and diabetes recipes, a metric table and a report.

use std::path::{Path, PathBuf};

use crate::device::DeviceArgs;
use candle_swag_cli::train::demo::run_demo;
use candle_swag_cli::train::recipes::RecipeParams;

/// Arguments of `swag demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Output directory of the reports (written atomically).
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Seed of the runs and samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override the recipes' epochs (collection starts at half of them); for a quick look.
    #[arg(long)]
    epochs: Option<usize>,
    /// Number of BMA samples.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs `swag demo`.
impl Args {
    /// The file or directory this command writes.
    pub fn destination(&self) -> &Path {
        &self.out
    }
}

pub fn run(args: Args) -> candle_swag::Result<()> {
    crate::prefer_single_threaded_kernels();
    let opts = RecipeParams {
        epochs: args.epochs,
        samples: args.samples,
        ..RecipeParams::default()
    }
    .check()?;
    let summary = run_demo(args.seed, &opts, &args.out, &args.device.open()?)?;
    print!("{}", summary.text);
    println!(
        "\nreports written to {}/ (digits/report.html, diabetes/report.html) in {:.1} s",
        args.out.display(),
        summary.seconds
    );
    Ok(())
}
