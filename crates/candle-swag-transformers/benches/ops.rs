//! The fused ops of `candle_swag_transformers::ops` against the same functions composed of
//! candle's tensor ops (`ops::composed`), forward and forward + backward, in f32.
//!
//! `cargo bench -p candle-swag-transformers --bench ops`. Shapes are MiniLM's at batch 32 ×
//! 128 tokens: norms and softmax over `[32·128, 384]`, rotary embeddings over
//! `[32, 12, 128, 32]`, dropout (p = 0.1) over MiniLM's attention probabilities
//! `[32, 12, 128, 128]`, where `composed` is candle-nn's `ops::dropout` (an unseeded mask
//! tensor). The backward is seeded by `Tensor::backward` on the output itself (a
//! gradient of ones), so the timing is the op's and nothing else's. Each group holds `fused`
//! and `composed`; the ratio of their times is the number to read.

use std::time::Duration;

use candle_core::{Device, Result, Tensor, Var};
use candle_swag_transformers::ops::{self, composed};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};

const ROWS: usize = 32 * 128;
const WIDTH: usize = 384;
const EPS: f64 = 1e-12;

fn randn(shape: &[usize], dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, dev).expect("randn")
}

/// `fused` and `composed` of one op, forward (`…_fwd`) and forward + backward (`…_fwd_bwd`).
fn pair(
    c: &mut Criterion,
    name: &str,
    inputs: &[Var],
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    composed: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) {
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().detach()).collect();
    let vars: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let configure = |g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>| {
        g.sample_size(20);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
    };

    let mut g = c.benchmark_group(format!("{name}_fwd"));
    configure(&mut g);
    g.bench_function("fused", |b| b.iter(|| fused(&tensors).expect("fused")));
    g.bench_function("composed", |b| {
        b.iter(|| composed(&tensors).expect("composed"))
    });
    g.finish();

    let mut g = c.benchmark_group(format!("{name}_fwd_bwd"));
    configure(&mut g);
    g.bench_function("fused", |b| {
        b.iter(|| fused(&vars).and_then(|y| y.backward()).expect("fused"))
    });
    g.bench_function("composed", |b| {
        b.iter(|| {
            composed(&vars)
                .and_then(|y| y.backward())
                .expect("composed")
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let var = |t: Tensor| Var::from_tensor(&t).expect("var");
    let x = var(randn(&[ROWS, WIDTH], &dev));
    let gamma = var(randn(&[WIDTH], &dev).affine(0.1, 1.0).expect("gamma"));
    let beta = var(randn(&[WIDTH], &dev));

    pair(
        c,
        "layer_norm",
        &[x.clone(), gamma.clone(), beta],
        &|t| ops::layer_norm(&t[0], &t[1], &t[2], EPS),
        &|t| composed::layer_norm(&t[0], &t[1], &t[2], EPS),
    );
    pair(
        c,
        "rms_norm",
        &[x.clone(), gamma],
        &|t| ops::rms_norm(&t[0], &t[1], EPS),
        &|t| composed::rms_norm(&t[0], &t[1], EPS),
    );
    pair(
        c,
        "softmax_last_dim",
        &[x],
        &|t| ops::softmax_last_dim(&t[0]),
        &|t| composed::softmax_last_dim(&t[0]),
    );

    let (b, h, t, d) = (32, 12, 128, 32);
    let probs = var(randn(&[b, h, t, t], &dev));
    pair(
        c,
        "dropout",
        &[probs],
        &|v| ops::dropout(&v[0], 0.1, 0, 0),
        &|v| candle_nn::ops::dropout(&v[0], 0.1),
    );

    let q = var(randn(&[b, h, t, d], &dev));
    let angles: Vec<f32> = (0..t)
        .flat_map(|p| (0..d / 2).map(move |i| p as f32 / 10_000f32.powf(2.0 * i as f32 / d as f32)))
        .collect();
    let angles = Tensor::from_vec(angles, (t, d / 2), &dev).expect("angles");
    // The tables are constants, as in a model (no gradient for them).
    let cos = var(angles.cos().expect("cos"));
    let sin = var(angles.sin().expect("sin"));
    pair(
        c,
        "rope",
        &[q, cos, sin],
        &|v| ops::rope(&v[0], &v[1].detach(), &v[2].detach()),
        &|v| composed::rope(&v[0], &v[1].detach(), &v[2].detach()),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
