//! SWAG properties checked against slow, obvious implementations: streaming moments against a
//! float64 two-pass computation, the covariance of many draws, log_prob against a dense
//! Gaussian, the fused sampler against the noise-given formula, and low-precision deviations.

use anyhow::Result;
mod common;

use candle_core::{DType, Device, Var};
use candle_swag::layout::{ParamLayout, ParamSet};
use candle_swag::swag::{Divisor, SampleConfig, SampleParams, SwagParams, SwagPosterior};
use candle_swag::Error;
use common::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn layout(d: usize) -> ParamLayout {
    // Two parameters so that offsets matter.
    let a = d / 2;
    ParamLayout::new(vec![("a".into(), vec![a]), ("b".into(), vec![d - a])]).unwrap()
}

fn posterior_from(snaps: &[Vec<f64>], rank: usize, dt: DType) -> SwagPosterior {
    let d = snaps[0].len();
    let mut p = SwagPosterior::new(
        layout(d),
        SwagParams {
            rank,
            deviation_dtype: dt,
            ..Default::default()
        }
        .check()
        .unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    for s in snaps {
        p.collect_flat(&tensor_f32(s)).unwrap();
    }
    p
}

fn random_snaps(rng: &mut StdRng, n: usize, d: usize, spread: &[f64]) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| {
            (0..d)
                .map(|i| 1.0 + spread[i % spread.len()] * rng.random_range(-1.0..1.0))
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn streaming_moments_match_two_pass_f64(
        d in 2usize..24, n in 1usize..15, rank in 1usize..6, seed in any::<u64>()
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let snaps: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..d).map(|_| rng.random_range(-5.0f32..5.0) as f64).collect())
            .collect();
        let p = posterior_from(&snaps, rank, DType::F32);
        // Two-pass float64 reference.
        let mean: Vec<f64> = (0..d).map(|i| snaps.iter().map(|s| s[i]).sum::<f64>() / n as f64).collect();
        let sq: Vec<f64> = (0..d).map(|i| snaps.iter().map(|s| s[i] * s[i]).sum::<f64>() / n as f64).collect();
        // Deviation j uses the mean of the first j+1 snapshots.
        let mut devs = Vec::new();
        for j in n.saturating_sub(rank)..n {
            for i in 0..d {
                let m_j = snaps[..=j].iter().map(|s| s[i]).sum::<f64>() / (j + 1) as f64;
                devs.push(snaps[j][i] - m_j);
            }
        }
        let tol = 2e-5 * 25.0;
        for (g, w) in to_f64(&p.mean().unwrap()).iter().zip(&mean) { prop_assert!((g - w).abs() < tol, "mean {g} vs {w}"); }
        for (g, w) in to_f64(&p.sq_mean().unwrap()).iter().zip(&sq) { prop_assert!((g - w).abs() < tol, "sq {g} vs {w}"); }
        let got_dev = to_f64(&p.deviations().unwrap());
        prop_assert_eq!(got_dev.len(), devs.len());
        for (g, w) in got_dev.iter().zip(&devs) { prop_assert!((g - w).abs() < tol, "dev {g} vs {w}"); }
    }
}

/// Empirical covariance of many draws against scale·(diag + DDᵀ/(rows−1)), with a bound that
/// the historical bug "z times the variance instead of the standard deviation" fails.
#[test]
fn sample_covariance_matches_swag_covariance() -> Result<()> {
    let d = 4;
    let mut rng = StdRng::seed_from_u64(7);
    // Coordinates with variances far from 1 (0.3² and 3²-ish) so var ≠ std.
    let snaps = random_snaps(&mut rng, 6, d, &[3.0, 0.3, 2.0, 0.5]);
    let p = posterior_from(&snaps, 4, DType::F32);
    let scale = 0.5;
    let var = to_f64(&p.variance(1e-30)?);
    let dev = to_f64(&p.deviations()?);
    let rows = p.rows();
    let div = (rows as f64 - 1.0).max(1.0);
    let mean = to_f64(&p.mean()?);
    let true_cov = |i: usize, j: usize, diag_power: f64| -> f64 {
        let lr: f64 = (0..rows)
            .map(|k| dev[k * d + i] * dev[k * d + j])
            .sum::<f64>()
            / div;
        scale * (if i == j { var[i].powf(diag_power) } else { 0.0 } + lr)
    };
    let vars: Vec<(String, Var)> = vec![
        ("a".into(), Var::zeros(d / 2, DType::F32, &Device::Cpu)?),
        ("b".into(), Var::zeros(d - d / 2, DType::F32, &Device::Cpu)?),
    ];
    let params = ParamSet::from_named_vars(vars)?;
    let n = 40_000;
    let mut sum = vec![0.0; d];
    let mut outer = vec![0.0; d * d];
    let mut draw_rng = StdRng::seed_from_u64(11);
    for _ in 0..n {
        p.sample_into(
            &params,
            &SampleParams {
                scale,
                ..Default::default()
            }
            .check()?,
            &mut draw_rng,
        )?;
        let x = to_f64(&params.flatten()?);
        for i in 0..d {
            sum[i] += x[i];
            for j in 0..d {
                outer[i * d + j] += (x[i] - mean[i]) * (x[j] - mean[j]);
            }
        }
    }
    for i in 0..d {
        // The sample mean is within 5 standard errors of the posterior mean.
        let se = (true_cov(i, i, 1.0) / n as f64).sqrt();
        assert!((sum[i] / n as f64 - mean[i]).abs() < 5.0 * se, "mean {i}");
        for j in 0..d {
            let emp = outer[i * d + j] / n as f64;
            let want = true_cov(i, j, 1.0);
            // Standard error of a covariance estimate: sqrt((σii σjj + σij²)/n).
            let se = ((true_cov(i, i, 1.0) * true_cov(j, j, 1.0) + want * want) / n as f64).sqrt();
            assert!(
                (emp - want).abs() < 5.0 * se,
                "cov[{i},{j}]: {emp} vs {want} (se {se})"
            );
            if i == j {
                // The buggy sampler (z·var) would give scale·(var² + lr) on the diagonal.
                let buggy = true_cov(i, j, 2.0);
                assert!(
                    (buggy - want).abs() > 20.0 * se,
                    "test cannot tell the bug apart at [{i}]"
                );
            }
        }
    }
    Ok(())
}

/// Dense reference: log N(x; m, Σ) with Σ built in full and factorised by Cholesky.
fn dense_log_prob(x: &[f64], m: &[f64], cov: &[f64], d: usize) -> f64 {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = cov[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            l[i * d + j] = if i == j { s.sqrt() } else { s / l[j * d + j] };
        }
    }
    let mut y = vec![0.0; d];
    for i in 0..d {
        let mut s = x[i] - m[i];
        for k in 0..i {
            s -= l[i * d + k] * y[k];
        }
        y[i] = s / l[i * d + i];
    }
    let logdet: f64 = 2.0 * (0..d).map(|i| l[i * d + i].ln()).sum::<f64>();
    -0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln()
        + logdet
        + y.iter().map(|v| v * v).sum::<f64>())
}

#[test]
fn log_prob_matches_dense_gaussian() -> Result<()> {
    let d = 6;
    let mut rng = StdRng::seed_from_u64(3);
    let snaps = random_snaps(&mut rng, 5, d, &[1.0, 0.2, 3.0]);
    for (rank, divisor, diag_only, scale) in [
        (3, Divisor::RowsMinusOne, false, 0.5),
        (5, Divisor::RankMinusOne, false, 1.0),
        (8, Divisor::RankMinusOne, false, 0.3),
        (3, Divisor::RowsMinusOne, true, 2.0),
    ] {
        let p = posterior_from(&snaps, rank, DType::F32);
        let opts = SampleParams {
            scale,
            divisor,
            diag_only,
            var_clamp: 1e-30,
        }
        .check()?;
        // log_prob uses the sampler's variance: the f32 numbers of `variance` (documented).
        let var = to_f64(&p.variance(1e-30)?);
        let dev = to_f64(&p.deviations()?);
        let rows = if diag_only { 0 } else { p.rows() };
        let div = p.divisor_value(divisor);
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                let lr: f64 = (0..rows)
                    .map(|k| dev[k * d + i] * dev[k * d + j])
                    .sum::<f64>()
                    / div;
                cov[i * d + j] = scale * (if i == j { var[i] } else { 0.0 } + lr);
            }
        }
        let mean = to_f64(&p.mean()?);
        let x: Vec<f64> = mean
            .iter()
            .map(|m| m + rng.random_range(-0.5..0.5))
            .collect();
        let x32: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
        let want = dense_log_prob(&x32, &mean, &cov, d);
        let got = p.log_prob(&tensor_f32(&x32), &opts)?;
        assert!(
            (got - want).abs() < 1e-9 * want.abs().max(1.0),
            "rank {rank}: {got} vs {want}"
        );
    }
    Ok(())
}

/// The fused sampler draws exactly the documented noise: it equals the formula applied to
/// `noise_for_seed`, and is bit-identical with 1 or 2 threads.
#[test]
fn fused_sampler_is_the_formula_and_thread_count_independent() -> Result<()> {
    let d = 150_001; // large enough for the parallel path, parameters split unevenly
    let mut rng = StdRng::seed_from_u64(5);
    let snaps = random_snaps(&mut rng, 4, d, &[1.0, 0.1]);
    let p = posterior_from(&snaps, 3, DType::F32);
    let params = zero_params(&layout(d));
    for opts in [
        SampleParams {
            scale: 0.5,
            ..Default::default()
        }
        .check()?,
        SampleParams {
            scale: 0.5,
            diag_only: true,
            ..Default::default()
        }
        .check()?,
    ] {
        let seed = 1234;
        let (z1, z2) = p.noise_for_seed(seed)?;
        let want = to_f64(&p.sample_with_noise(&z1, &z2, &opts)?);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| p.sample_into_seeded(&params, &opts, seed).unwrap());
            to_f64(&params.flatten().unwrap())
        };
        let one = run(1);
        let two = run(2);
        assert_eq!(one, two, "thread count changed the sample");
        assert_close("fused vs formula", &one, &want, 1e-6, 1e-6);
    }
    Ok(())
}

#[test]
fn low_precision_deviations_have_bounded_effect() -> Result<()> {
    let d = 64;
    let mut rng = StdRng::seed_from_u64(9);
    let snaps = random_snaps(&mut rng, 8, d, &[1.0, 0.5, 2.0]);
    let full = posterior_from(&snaps, 5, DType::F32);
    let params = zero_params(&layout(d));
    let opts = SampleParams {
        scale: 0.5,
        ..Default::default()
    }
    .check()?;
    let z2: Vec<f32> = full.noise_for_seed(77)?.1.to_vec1()?;
    let dev = to_f64(&full.deviations()?);
    for (dt, unit_roundoff) in [(DType::BF16, 2f64.powi(-8)), (DType::F16, 2f64.powi(-11))] {
        let low = posterior_from(&snaps, 5, dt);
        full.sample_into_seeded(&params, &opts, 77)?;
        let a = to_f64(&params.flatten()?);
        low.sample_into_seeded(&params, &opts, 77)?;
        let b = to_f64(&params.flatten()?);
        // |Δθ_i| ≤ sqrt(scale/div)·Σ_k |z2_k|·|D_ki|·u (rounding each stored deviation), plus f32 slack.
        let c = (opts.scale() / full.divisor_value(opts.divisor())).sqrt();
        for i in 0..d {
            let bound: f64 = c
                * (0..full.rows())
                    .map(|k| z2[k].abs() as f64 * dev[k * d + i].abs() * unit_roundoff)
                    .sum::<f64>();
            assert!(
                (a[i] - b[i]).abs() <= bound + 1e-5,
                "{dt:?} sample [{i}]: {} > {bound}",
                (a[i] - b[i]).abs()
            );
        }
        let x = tensor_f32(&a);
        let lp_full = full.log_prob(&x, &opts)?;
        let lp_low = low.log_prob(&x, &opts)?;
        assert!(
            (lp_full - lp_low).abs() < 50.0 * unit_roundoff * lp_full.abs().max(d as f64),
            "{dt:?} log_prob {lp_full} vs {lp_low}"
        );
        // Moments: mean, its compensation and M2 (f32 each); columns in 16 bits.
        assert_eq!(low.state_bytes(), 3 * 4 * d + 5 * d * 2);
    }
    Ok(())
}

#[test]
fn non_finite_snapshot_is_refused_and_state_untouched() -> Result<()> {
    let mut p = posterior_from(
        &[vec![1.0, 2.0, 3.0, 4.0], vec![2.0, 2.0, 2.0, 2.0]],
        3,
        DType::F32,
    );
    let before = (
        to_f64(&p.mean()?),
        to_f64(&p.deviations()?),
        p.n_collected(),
    );
    for bad in [f64::NAN, f64::INFINITY] {
        let err = p
            .collect_flat(&tensor_f32(&[0.0, 1.0, 1.0, bad]))
            .unwrap_err();
        match &err {
            Error::NonFinite {
                parameter, index, ..
            } => {
                assert_eq!(parameter, "b");
                assert_eq!(*index, 1);
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("`b`"));
    }
    let after = (
        to_f64(&p.mean()?),
        to_f64(&p.deviations()?),
        p.n_collected(),
    );
    assert_eq!(before, after);
    Ok(())
}

#[test]
fn sampling_an_empty_posterior_is_an_error() -> Result<()> {
    let p = SwagPosterior::new(
        layout(4),
        SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?,
        &Device::Cpu,
    )?;
    let params = zero_params(&layout(4));
    let err = p
        .sample_into_seeded(&params, &SampleConfig::default(), 1)
        .unwrap_err();
    assert!(matches!(err, Error::NotEnoughSnapshots(_)));
    Ok(())
}

/// Sample settings are checked once, when made: each bad value is refused by name.
#[test]
fn bad_sample_settings_are_refused_when_made() -> Result<()> {
    assert_eq!(
        invalid_name(
            SampleParams {
                scale: -1.0,
                ..Default::default()
            }
            .check()
        ),
        "scale"
    );
    assert_eq!(
        invalid_name(
            SampleParams {
                scale: f64::NAN,
                ..Default::default()
            }
            .check()
        ),
        "scale"
    );
    assert_eq!(
        invalid_name(
            SampleParams {
                scale: f64::INFINITY,
                diag_only: true,
                ..Default::default()
            }
            .check()
        ),
        "scale"
    );
    assert_eq!(
        invalid_name(
            SampleParams {
                var_clamp: -1e-3,
                ..Default::default()
            }
            .check()
        ),
        "var_clamp"
    );
    let dtype = SwagParams {
        rank: 2,
        deviation_dtype: DType::F64,
        ..Default::default()
    }
    .check();
    assert!(
        matches!(dtype, Err(Error::InvalidArgument { ref name, .. }) if name == "deviation_dtype")
    );
    let ok = SampleParams {
        scale: 0.0,
        diag_only: true,
        ..Default::default()
    }
    .check()?;
    assert_eq!((ok.scale(), ok.diag_only()), (0.0, true));
    Ok(())
}
