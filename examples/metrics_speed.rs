//! One-shot timing of all classification metrics (accuracy, NLL, Brier, ECE/MCE, signed,
//! equal-mass and classwise ECE, L2 errors) on N × C synthetic probabilities.
//!
//! `cargo run --release --example metrics_speed [-- N C RUNS]` (default 1,000,000 × 100, 5 runs).

use candle_swag::metrics::{evaluate_classification, ClassificationConfig};
use std::time::Instant;

#[path = "../benches/support/synthetic.rs"]
mod synthetic;

fn main() -> candle_swag::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize, default: usize| -> candle_swag::Result<usize> {
        match args.get(i) {
            None => Ok(default),
            Some(s) => s.parse().map_err(|_| {
                candle_swag::Error::invalid(["N", "C"][i], format!("`{s}` is not a count"))
            }),
        }
    };
    let (n, c, runs) = (parse(0, 1_000_000)?, parse(1, 100)?, parse(2, 5)?);
    let (probs, labels) = synthetic::synthetic_predictions(n, c, 42);
    let options = ClassificationConfig::default();
    // First run warms the thread pool and the page cache; report each of a few runs.
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let eval = evaluate_classification(&probs, c, &labels, &options)?;
        times.push(start.elapsed().as_secs_f64());
        last = Some(eval.metrics);
    }
    println!(
        "all classification metrics, {n} rows × {c} classes (f32), {} threads:",
        rayon::current_num_threads()
    );
    for (i, t) in times.iter().enumerate() {
        println!("  run {}: {t:.3} s", i + 1);
    }
    if let Some(first) = times.first() {
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        println!("  best: {best:.3} s (first, cold: {first:.3} s)");
    }
    if let Some(m) = last {
        println!(
            "  accuracy {:.4}, nll {:.4}, brier {:.4}, ece {:.4}, classwise ece {:.5}",
            m.accuracy, m.nll, m.brier, m.ece, m.classwise_ece
        );
    }
    Ok(())
}
