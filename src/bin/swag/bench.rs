//! `swag bench`: time the SWAG primitives against the memory-bandwidth floor, in one run.

use candle_swag::perf;
use candle_swag::Result;

/// Arguments of `swag bench`.
#[derive(clap::Args)]
pub struct Args {
    /// d, the number of parameters.
    #[arg(long, default_value_t = 1_001_000)]
    params: usize,
    /// K, the number of deviation columns.
    #[arg(long, default_value_t = 20)]
    rank: usize,
    /// Timed repetitions per operation (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Store deviations in bf16.
    #[arg(long)]
    bf16: bool,
    /// Print one JSON object per operation instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dtype = if args.bf16 {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    };
    let (ops, memory) = perf::measure(args.params, args.rank, args.repeats, dtype)?;
    if args.json {
        for op in &ops {
            println!("{}", serde_json::to_string(op)?);
        }
        println!("{}", serde_json::to_string(&memory)?);
        return Ok(());
    }
    println!(
        "d = {}, K = {}, deviations {:?}, {} threads, median of {} runs",
        args.params, args.rank, dtype, ops[0].threads, args.repeats
    );
    println!(
        "{:<16} {:>11} {:>11} {:>11} {:>11} {:>8}",
        "op", "time (ms)", "copy (ms)", "normals(ms)", "floor (ms)", "ratio"
    );
    for op in &ops {
        println!(
            "{:<16} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>8.2}",
            op.op,
            op.seconds * 1e3,
            op.copy_seconds * 1e3,
            op.normals_seconds * 1e3,
            op.floor_seconds * 1e3,
            op.ratio_to_floor
        );
    }
    println!(
        "posterior peak extra memory: {:.1} MiB (allowance (K+2)·4·d + 4·d = {:.1} MiB)",
        memory.posterior_peak_extra_bytes as f64 / 1048576.0,
        memory.allowance_bytes as f64 / 1048576.0
    );
    Ok(())
}
