//! The `swag` command-line tool: each subcommand lives in its own file and only parses
//! arguments before calling the library.

use std::path::Path;

use candle_swag::crash_safe::{LockWait, WriteLock};
use clap::{Parser, Subcommand};

mod bench;
mod bench_classify;
mod bench_uci;
mod collect;
mod demo;
mod device;
mod fit;
mod inspect;
mod predict;
mod report;
mod sample;
mod store;
mod table;

/// SWAG posteriors, Bayesian model averaging and calibration reports.
#[derive(Parser)]
#[command(name = "swag", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// When another process is writing the same output, wait for it to finish instead of
    /// stopping at once.
    #[arg(long, global = true)]
    wait: bool,
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
    /// Time the SWAG primitives against a memory copy of the same bytes.
    Bench(bench::Args),
    /// The UCI regression protocol (random 90/10 splits, SGD/SWA/SWAG, both noise models).
    BenchUci(bench_uci::Args),
    /// `swag fit`'s defaults against a scaled logistic regression on a classification table
    /// (random stratified 75/25 splits).
    BenchClassify(bench_classify::Args),
}

/// Makes candle's CPU kernels single-threaded for this process unless the user chose a thread
/// count (`RAYON_NUM_THREADS` unset): for the small matrices of the built-in MLPs (batch 32,
/// widths of a few hundred) a second thread costs more than it saves (the digits recipe ran 3×
/// slower with two threads on a 2-core machine). Called by the subcommands that train or predict
/// with the MLP, before any other thread exists; the library itself sets no variable.
pub(crate) fn prefer_single_threaded_kernels() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

impl Command {
    /// The file or directory the command writes, if any.
    fn destination(&self) -> Option<&Path> {
        match self {
            Command::Collect(a) => Some(a.destination()),
            Command::Sample(a) => Some(a.destination()),
            Command::Fit(a) => Some(a.destination()),
            Command::Predict(a) => Some(a.destination()),
            Command::Report(a) => Some(a.destination()),
            Command::Demo(a) => Some(a.destination()),
            Command::BenchUci(a) => a.destination(),
            Command::BenchClassify(a) => a.destination(),
            Command::Inspect(_) | Command::Bench(_) => None,
        }
    }
}

/// Takes the write lock of `output` (creating its parent directory, where the lock file
/// lives; see `crash_safe::lock_destination`).
fn lock_output(output: &Path, wait: LockWait) -> candle_swag::Result<WriteLock> {
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| candle_swag::Error::io(parent, e))?;
    }
    candle_swag::crash_safe::lock_destination(output, wait)
}

/// On SIGINT or SIGTERM: remove this process's temporary files and lock files, then exit with
/// the conventional status 128 + signal (130, 143). The output is left as it was before the
/// command (or complete, if the signal came after its last rename).
#[cfg(unix)]
fn exit_cleanly_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return; // no handler: the default action (exit, temporaries left for the next writer)
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let removed = candle_swag::crash_safe::remove_temporaries_before_exit();
            eprintln!("interrupted by signal {signal}: removed {removed} temporary file(s); the output is unchanged");
            std::process::exit(128 + signal);
        }
    });
}

#[cfg(not(unix))]
fn exit_cleanly_on_signals() {}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, as every other error of this tool; `--help` has the usage.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{} (see --help)", first.trim_end());
            std::process::exit(2);
        }
    };
    exit_cleanly_on_signals();
    let wait = if cli.wait {
        LockWait::Wait
    } else {
        LockWait::Refuse
    };
    // The output's write lock is taken before any work: a second writer of the same output is
    // refused at once (or waits with --wait), not after computing everything.
    let lock = match cli.command.destination().map(|d| lock_output(d, wait)) {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Some(Ok(lock)) => Some(lock),
        None => None,
    };
    let result = match cli.command {
        Command::Collect(a) => collect::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Report(a) => report::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchUci(a) => bench_uci::run(a),
        Command::BenchClassify(a) => bench_classify::run(a),
    };
    // Released (its lock file removed) before `exit`, which runs no destructor.
    drop(lock);
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
