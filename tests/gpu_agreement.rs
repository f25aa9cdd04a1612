//! CPU against CUDA: the fused CUDA kernels give the CPU kernels' bits.
//!
//! Built only with `--features cuda`, and run on a machine with an NVIDIA GPU
//! (`scripts/gpu_check.sh`). What is asserted, and why it can be asserted:
//! - moments (mean, compensation, `M2`), deviation columns and their scales: bit-equal (the
//!   collection kernel performs the CPU's f32 operations in order, no fused multiply-add);
//! - the seeded noise `z1`, `z2`: bit-equal (one Philox stream, a transform of correctly rounded
//!   operations);
//! - samples from the device store, low-rank and diagonal: bit-equal (same order of the same
//!   operations);
//! - samples from a host store on CUDA (low-rank term by a matrix product): within 4 ulp of the
//!   sample's magnitude plus 1e-6 of the low-rank term's scale;
//! - `log_prob`: the state is bit-equal and the sums run on the host in f64, so equal to 1e-12
//!   relative.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use candle_swag::device::{select, DeviceRequest};
use candle_swag::swag::DeviationStore;
use candle_swag::{
    Error, ParamSet, Result, SampleConfig, SampleParams, SwagConfig, SwagParams, SwagPosterior,
};

fn gpu() -> Result<Device> {
    Ok(select(DeviceRequest::Cuda(0))?.device)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    let v: Vec<f32> = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    Ok(v.iter().map(|x| x.to_bits()).collect())
}

/// Parameter shapes: odd sizes, a single number, and one large enough for many warps and
/// blocks with a ragged end.
const SHAPES: [&[usize]; 4] = [&[7], &[3, 5], &[1], &[300_001]];

fn params_on(device: &Device) -> Result<ParamSet> {
    let named = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| Ok((format!("p{i}"), Var::zeros(*s, DType::F32, device)?)))
        .collect::<Result<Vec<_>>>()?;
    ParamSet::from_named_vars(named)
}

/// Snapshot `s`: a smooth function plus a per-snapshot wiggle, with magnitudes from 1e-3 to 30
/// so the compensated mean and the f16 scales have work to do.
fn snapshot(s: usize, d: usize) -> Vec<f32> {
    (0..d)
        .map(|i| {
            let x = i as f64;
            let base = (x * 1e-3).sin() * 30.0 * ((i % 5) as f64 + 0.01) / 5.0;
            (base + ((x * 0.37 + s as f64 * 1.3).sin() * 1e-2)) as f32
        })
        .collect()
}

fn collect_both(cfg: SwagConfig, snapshots: usize) -> Result<(SwagPosterior, SwagPosterior)> {
    let gpu = gpu()?;
    let (pc, pg) = (params_on(&Device::Cpu)?, params_on(&gpu)?);
    let mut cpu = SwagPosterior::for_params(&pc, cfg.clone())?;
    let mut dev = SwagPosterior::for_params(&pg, cfg)?;
    let d = pc.layout().numel();
    for s in 0..snapshots {
        let theta = Tensor::from_vec(snapshot(s, d), d, &Device::Cpu)?;
        pc.write_flat(&theta)?;
        pg.write_flat(&theta.to_device(&gpu)?)?;
        cpu.collect(&pc)?;
        dev.collect(&pg)?;
    }
    Ok((cpu, dev))
}

fn assert_same_state(cpu: &SwagPosterior, dev: &SwagPosterior, what: &str) -> Result<()> {
    assert_eq!(bits(&cpu.mean()?)?, bits(&dev.mean()?)?, "{what}: mean");
    assert_eq!(
        bits(&cpu.mean_compensation()?)?,
        bits(&dev.mean_compensation()?)?,
        "{what}: compensation"
    );
    assert_eq!(bits(&cpu.m2()?)?, bits(&dev.m2()?)?, "{what}: M2");
    assert_eq!(
        bits(&cpu.deviations()?)?,
        bits(&dev.deviations()?)?,
        "{what}: columns"
    );
    assert_eq!(
        cpu.deviation_scales(),
        dev.deviation_scales(),
        "{what}: scales"
    );
    assert_eq!(
        (cpu.rows(), cpu.n_collected()),
        (dev.rows(), dev.n_collected())
    );
    Ok(())
}

#[test]
fn device_store_is_bit_equal_to_the_cpu() -> Result<()> {
    for dt in [DType::F32, DType::BF16, DType::F16] {
        // 7 snapshots at K = 5: the ring wraps.
        let cfg = SwagParams {
            rank: 5,
            deviation_dtype: dt,
            ..Default::default()
        }
        .check()?;
        let (cpu, dev) = collect_both(cfg, 7)?;
        let what = format!("{dt:?}");
        assert_same_state(&cpu, &dev, &what)?;
        for seed in [0u64, 42, u64::MAX] {
            let (z1c, z2c) = cpu.noise_for_seed(seed)?;
            let (z1g, z2g) = dev.noise_for_seed(seed)?;
            assert_eq!(bits(&z1c)?, bits(&z1g)?, "{what}: z1, seed {seed}");
            assert_eq!(bits(&z2c)?, bits(&z2g)?, "{what}: z2, seed {seed}");
            for opts in [
                SampleConfig::default(),
                SampleParams {
                    scale: 0.5,
                    diag_only: true,
                    ..Default::default()
                }
                .check()?,
            ] {
                let sc = cpu.sample_flat_seeded(seed, &opts)?;
                let sg = dev.sample_flat_seeded(seed, &opts)?;
                assert_eq!(
                    bits(&sc)?,
                    bits(&sg)?,
                    "{what}: sample, seed {seed}, {opts:?}"
                );
                // Straight into the model's Vars: the same bits as the flat sample.
                let pg = params_on(dev.device())?;
                dev.sample_into_seeded(&pg, &opts, seed)?;
                assert_eq!(bits(&pg.flatten()?)?, bits(&sg)?, "{what}: sample_into");
            }
        }
        let theta = cpu.sample_flat_seeded(3, &SampleConfig::default())?;
        let opts = SampleConfig::default();
        let (lc, lg) = (
            cpu.log_prob(&theta, &opts)?,
            dev.log_prob(&theta.to_device(dev.device())?, &opts)?,
        );
        assert!(
            (lc - lg).abs() <= 1e-12 * lc.abs(),
            "{what}: log_prob {lc} vs {lg}"
        );
    }
    Ok(())
}

#[test]
fn host_store_on_the_gpu_agrees_with_the_cpu() -> Result<()> {
    let cfg = SwagParams {
        rank: 4,
        store: DeviationStore::Host,
        ..Default::default()
    }
    .check()?;
    let (cpu, dev) = collect_both(cfg, 6)?;
    assert_same_state(&cpu, &dev, "host store")?;
    let opts = SampleConfig::default();
    let sc: Vec<f32> = cpu.sample_flat_seeded(11, &opts)?.to_vec1()?;
    let sg: Vec<f32> = dev
        .sample_flat_seeded(11, &opts)?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let mean: Vec<f32> = cpu.mean()?.to_vec1()?;
    for (i, ((a, b), m)) in sc.iter().zip(&sg).zip(&mean).enumerate() {
        let tol = 4.0 * f32::EPSILON * a.abs().max(m.abs()) + 1e-6;
        assert!((a - b).abs() <= tol, "coordinate {i}: cpu {a}, gpu {b}");
    }
    Ok(())
}

#[test]
fn non_finite_snapshot_is_refused_by_name_and_changes_nothing() -> Result<()> {
    let gpu = gpu()?;
    let params = params_on(&gpu)?;
    let mut post = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 3,
            ..Default::default()
        }
        .check()?,
    )?;
    let d = params.layout().numel();
    params.write_flat(&Tensor::from_vec(snapshot(0, d), d, &gpu)?)?;
    post.collect(&params)?;
    let before = (
        bits(&post.mean()?)?,
        bits(&post.m2()?)?,
        bits(&post.deviations()?)?,
    );
    let mut bad = snapshot(1, d);
    let at = d - 5; // in p3, the large parameter
    bad[at] = f32::NAN;
    bad[at + 2] = f32::INFINITY;
    params.write_flat(&Tensor::from_vec(bad, d, &gpu)?)?;
    let err = post
        .collect(&params)
        .expect_err("a NaN snapshot must be refused");
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("p3") && msg.contains(&(300_001 - 5).to_string()),
        "{msg}"
    );
    assert_eq!(post.n_collected(), 1);
    let after = (
        bits(&post.mean()?)?,
        bits(&post.m2()?)?,
        bits(&post.deviations()?)?,
    );
    assert!(before == after, "the state changed");
    Ok(())
}

#[test]
fn devices_that_do_not_match_are_named_errors() -> Result<()> {
    let gpu = gpu()?;
    let on_cpu = params_on(&Device::Cpu)?;
    let on_gpu = params_on(&gpu)?;
    let mut post = SwagPosterior::for_params(
        &on_cpu,
        SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?,
    )?;
    let err = post
        .collect(&on_gpu)
        .expect_err("GPU params into a CPU posterior");
    assert!(err.to_string().contains("params"), "{err}");
    post.collect(&on_cpu)?;
    let err = post
        .sample_into_seeded(&on_gpu, &SampleConfig::default(), 1)
        .expect_err("sampling into GPU params from a CPU posterior");
    assert!(err.to_string().contains("posterior is on"), "{err}");
    let err = select(DeviceRequest::Cuda(4096)).expect_err("no such GPU");
    assert!(err.to_string().contains("cuda:4096"), "{err}");
    Ok(())
}
