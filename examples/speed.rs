//! Speed and memory of the SWAG primitives against the memory-bandwidth floor.
//!
//! ```text
//! cargo run --release --example speed -- --params 9009000 --rank 20
//! ```
//! prints, for collect, low-rank sample, diagonal sample, flatten and write-back, the median
//! time, the floor (a parallel copy of the same bytes, plus the normals for sampling, timed in
//! the same run) and their ratio; then the posterior's peak extra memory against its
//! allowance `(K + 3)·4·d + 4·d`. The figures in BENCHMARKS.md come from this example.

use candle_swag_cli::perf;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a non-negative integer")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (|| -> Result<(usize, usize, usize), String> {
        Ok((
            arg(&args, "--params", 9_009_000)?,
            arg(&args, "--rank", 20)?,
            arg(&args, "--repeats", 7)?,
        ))
    })();
    let (d, k, repeats) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let dtype = if args.iter().any(|a| a == "--bf16") {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    };
    match perf::measure(d, k, repeats, dtype, &candle_core::Device::Cpu) {
        Ok((ops, mem)) => {
            println!("| op | d | K | time (ms) | floor (ms) | ratio to floor |");
            println!("|---|---|---|---|---|---|");
            for op in ops {
                println!(
                    "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    op.op,
                    op.params,
                    op.rank,
                    op.seconds * 1e3,
                    op.floor_seconds * 1e3,
                    op.ratio_to_floor
                );
            }
            println!(
                "\nposterior peak extra memory {:.1} MiB, allowance {:.1} MiB",
                mem.posterior_peak_extra_bytes as f64 / 1048576.0,
                mem.allowance_bytes as f64 / 1048576.0
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
