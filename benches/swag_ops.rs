//! Criterion benchmarks of the SWAG primitives next to a plain copy of the same bytes.
//!
//! `cargo bench --bench swag_ops` (d = 1,001,000, K = 20). The ratio to the memory floor is what
//! matters on a shared machine; `swag bench --params D --rank K` prints it directly.

use candle_core::{Device, Tensor, Var};
use candle_swag::layout::ParamSet;
use candle_swag::swag::{SampleConfig, SampleParams, SwagParams, SwagPosterior};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 1_001_000;
const K: usize = 20;

fn params(rng: &mut StdRng) -> ParamSet {
    let v: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let t = Tensor::from_vec(v, D, &Device::Cpu).expect("tensor");
    ParamSet::from_named_vars(vec![("w".into(), Var::from_tensor(&t).expect("var"))])
        .expect("params")
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let params = params(&mut rng);
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: K,
            ..Default::default()
        }
        .check()
        .expect("config"),
    )
    .expect("posterior");
    for _ in 0..=K {
        posterior.collect(&params).expect("collect");
    }
    let mut g = c.benchmark_group("swag_ops");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(2));

    g.throughput(Throughput::Bytes((24 * D) as u64));
    g.bench_function("collect", |b| {
        b.iter(|| posterior.collect(&params).expect("collect"))
    });
    let src = vec![1f32; 3 * D];
    let mut dst = vec![0f32; 3 * D];
    g.bench_function("memcpy_same_bytes_as_collect", |b| {
        b.iter(|| dst.copy_from_slice(&src))
    });

    g.throughput(Throughput::Bytes(((K + 3) * 4 * D) as u64));
    let opts = SampleConfig::default();
    g.bench_function("sample_lowrank", |b| {
        b.iter(|| {
            posterior
                .sample_into(&params, &opts, &mut rng)
                .expect("sample")
        })
    });
    let diag = SampleParams {
        scale: 0.5,
        diag_only: true,
        ..Default::default()
    }
    .check()
    .unwrap();
    g.throughput(Throughput::Bytes((12 * D) as u64));
    g.bench_function("sample_diag", |b| {
        b.iter(|| {
            posterior
                .sample_into(&params, &diag, &mut rng)
                .expect("sample")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
