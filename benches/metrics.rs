//! All classification metrics in one pass on N = 1,000,000 rows × C = 100 classes (the
//! issue's target: under 1 s on the 2-core machine). `cargo bench --bench metrics`.
//! For a one-shot figure: `cargo run --release --example metrics_speed`.

use candle_swag::metrics::{evaluate_classification, ClassificationConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;

#[path = "support/synthetic.rs"]
mod synthetic;

fn classification_1m_x_100(c: &mut Criterion) {
    let (probs, labels) = synthetic::synthetic_predictions(1_000_000, 100, 42);
    let options = ClassificationConfig::default();
    let mut group = c.benchmark_group("classification_metrics");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("1M_rows_x_100_classes_f32", |b| {
        b.iter(|| {
            evaluate_classification(black_box(&probs), 100, black_box(&labels), &options)
                .expect("valid synthetic data")
        })
    });
    group.finish();
}

criterion_group!(benches, classification_1m_x_100);
criterion_main!(benches);
