//! `swag bench`: time the SWAG primitives against the memory-bandwidth floor, in one run; with
//! `--store disk`, a disk posterior collected from snapshot files and sampled, against one
//! sequential read of its columns.

use std::path::PathBuf;

use candle_swag::Result;
use candle_swag_cli::perf;

use crate::store::{DtypeArg, StoreArg};

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
    /// Storage dtype of the deviation columns.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// `disk`: collect K + 1 snapshot files into a disk posterior and sample from it, reporting
    /// time and peak memory of each phase and the ratio to the storage floor.
    #[arg(long, value_enum, default_value_t = StoreArg::Device)]
    store: StoreArg,
    /// Scratch directory of `--store disk` (snapshots and posterior, removed afterwards).
    #[arg(long, default_value = "target/bench-disk")]
    dir: PathBuf,
    /// Print one JSON object per operation instead of a table.
    #[arg(long)]
    json: bool,
    /// Device to measure: auto (a GPU if present, else the CPU), cpu, cuda, cuda:N, metal.
    /// On a GPU the floor is a device-to-device copy of the same bytes, timed in the same run.
    #[arg(long, default_value = "auto")]
    device: candle_swag::device::DeviceRequest,
}

pub fn run(args: Args) -> Result<()> {
    let dtype = args.dtype.dtype();
    if args.store == StoreArg::Disk {
        let r = perf::measure_disk(args.params, args.rank, args.repeats, dtype, &args.dir)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "disk posterior: d = {}, K = {}, {} columns ({:.0} MiB), {} snapshot files, median of {} runs",
            r.params, r.rank, r.dtype, mib(r.column_bytes), r.snapshots, args.repeats
        );
        println!(
            "collect + save  {:>8.2} s   peak RSS {:>7.1} MiB",
            r.collect_seconds,
            mib(r.collect_peak_rss_bytes)
        );
        println!("open (checksum) {:>8.2} s", r.open_seconds);
        println!(
            "one sample      {:>8.3} s   peak RSS {:>7.1} MiB (open + samples)",
            r.sample_seconds,
            mib(r.sample_peak_rss_bytes)
        );
        println!(
            "floor           {:>8.3} s   (one sequential read of the columns)   ratio {:.2}",
            r.floor_seconds, r.sample_ratio_to_floor
        );
        return Ok(());
    }
    let chosen = candle_swag::device::select(args.device)?;
    if let Some(notice) = &chosen.fallback {
        eprintln!("{notice}");
    }
    let device = chosen.device;
    let (ops, memory) = perf::measure(args.params, args.rank, args.repeats, dtype, &device)?;
    if args.json {
        for op in &ops {
            println!("{}", serde_json::to_string(op)?);
        }
        println!("{}", serde_json::to_string(&memory)?);
        return Ok(());
    }
    println!(
        "d = {}, K = {}, deviations {:?}, {}, {} threads, median of {} runs",
        args.params, args.rank, dtype, ops[0].device, ops[0].threads, args.repeats
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
        "posterior peak extra memory: {:.1} MiB (allowance (K+3)·4·d + 4·d = {:.1} MiB)",
        memory.posterior_peak_extra_bytes as f64 / 1048576.0,
        memory.allowance_bytes as f64 / 1048576.0
    );
    Ok(())
}
