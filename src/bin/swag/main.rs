//! The `swag` command-line tool: each subcommand lives in its own file and only parses
//! arguments before calling the library.

use clap::{Parser, Subcommand};

mod collect;
mod demo;
mod fit;
mod inspect;
mod predict;
mod report;
mod sample;

/// SWAG posteriors, Bayesian model averaging and calibration reports.
#[derive(Parser)]
#[command(name = "swag", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a SWAG posterior from weight checkpoints (safetensors), in the order given.
    Collect(collect::Args),
    /// Draw one weight sample from a posterior and write it under the original names.
    Sample(sample::Args),
    /// Print a posterior's layout and summary statistics.
    Inspect(inspect::Args),
    /// Train an MLP on a CSV file and fit SWAG along the way.
    Fit(fit::Args),
    /// Predict with uncertainty (Bayesian model averaging) from a fitted run.
    Predict(predict::Args),
    /// Write a calibration report from prediction files of any framework.
    Report(report::Args),
    /// Run the bundled digits and diabetes recipes and write a report.
    Demo(demo::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Collect(a) => collect::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Report(a) => report::run(a),
        Command::Demo(a) => demo::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
