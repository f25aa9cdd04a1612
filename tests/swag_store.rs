//! Where the deviation columns live does not change one bit of what SWAG computes: device, host
//! and disk stores agree on moments, columns, samples and log-densities; a disk posterior
//! saves in place, reopens and goes on collecting; broken disk files are refused.

use anyhow::Result;
mod common;
use common::{bits, zero_params};

use candle_core::{DType, Device, Tensor};
use candle_swag::layout::ParamLayout;
use candle_swag::swag::{DeviationStore, SampleConfig, SampleParams, SwagParams, SwagPosterior};
use candle_swag::Error;

/// A layout with one parameter longer than the streaming chunk (2¹⁸ coordinates), so chunk
/// boundaries inside a parameter are exercised, and two small ones.
fn layout() -> ParamLayout {
    ParamLayout::new(vec![
        ("big".into(), vec![300_001]),
        ("w".into(), vec![7, 3]),
        ("b".into(), vec![5]),
    ])
    .unwrap()
}

fn snapshot(layout: &ParamLayout, s: usize) -> Tensor {
    let v: Vec<f32> = (0..layout.numel())
        .map(|i| {
            let x = i as f32 * 0.013 + s as f32 * 0.7;
            x.sin() * 1.5 + 1e-3 * (x * 3.1).cos() * s as f32
        })
        .collect();
    Tensor::from_vec(v, layout.numel(), &Device::Cpu).unwrap()
}

fn collected(store: DeviationStore, dt: DType, rank: usize, n: usize) -> SwagPosterior {
    let layout = layout();
    let cfg = SwagParams {
        rank,
        deviation_dtype: dt,
        store,
    }
    .check()
    .unwrap();
    let mut p = SwagPosterior::new(layout.clone(), cfg, &Device::Cpu).unwrap();
    for s in 0..n {
        p.collect_flat(&snapshot(&layout, s)).unwrap();
    }
    p
}

fn assert_same(a: &SwagPosterior, b: &SwagPosterior, what: &str) {
    assert_eq!(
        bits(&a.mean().unwrap()),
        bits(&b.mean().unwrap()),
        "{what}: mean"
    );
    assert_eq!(bits(&a.m2().unwrap()), bits(&b.m2().unwrap()), "{what}: m2");
    assert_eq!(a.rows(), b.rows(), "{what}: rows");
    assert_eq!(
        bits(&a.deviations().unwrap()),
        bits(&b.deviations().unwrap()),
        "{what}: deviations"
    );
    assert_eq!(a.deviation_scales(), b.deviation_scales(), "{what}: scales");
    let params = zero_params(a.layout());
    for opts in [
        SampleConfig::default(),
        SampleParams {
            scale: 0.5,
            diag_only: true,
            ..Default::default()
        }
        .check()
        .unwrap(),
    ] {
        let sa = a.sample_flat_seeded(11, &opts).unwrap();
        assert_eq!(
            bits(&sa),
            bits(&b.sample_flat_seeded(11, &opts).unwrap()),
            "{what}: sample"
        );
        b.sample_into_seeded(&params, &opts, 11).unwrap();
        assert_eq!(
            bits(&sa),
            bits(&params.flatten().unwrap()),
            "{what}: sample_into"
        );
        let lp = |p: &SwagPosterior| p.log_prob(&sa, &opts).unwrap();
        assert_eq!(lp(a).to_bits(), lp(b).to_bits(), "{what}: log_prob");
    }
}

#[test]
fn every_store_gives_the_same_bits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // n > K: the ring has wrapped, so the disk file's rows start mid-ring.
    for (dt, rank, n) in [(DType::F32, 4, 6), (DType::BF16, 3, 3), (DType::F16, 4, 7)] {
        let device = collected(DeviationStore::Device, dt, rank, n);
        let host = collected(DeviationStore::Host, dt, rank, n);
        let path = dir.path().join(format!("{dt:?}.safetensors"));
        let disk = collected(DeviationStore::Disk(path.clone()), dt, rank, n);
        assert_same(&device, &host, &format!("host {dt:?}"));
        assert_same(&device, &disk, &format!("disk {dt:?}"));
        // The columns are not in memory.
        assert_eq!(disk.state_bytes(), 3 * 4 * device.numel());
        // Saved in place, the file loads (into memory, or again on disk) with the same bits.
        disk.save(&path)?;
        let loaded = SwagPosterior::load(&path, &Device::Cpu)?;
        assert_same(&device, &loaded, &format!("loaded {dt:?}"));
        let reopened = SwagPosterior::load_with_store(
            &path,
            &Device::Cpu,
            DeviationStore::Disk(path.clone()),
        )?;
        assert_same(&device, &reopened, &format!("reopened {dt:?}"));
    }
    Ok(())
}

#[test]
fn a_disk_posterior_goes_on_collecting_after_a_save() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    let lay = layout();
    let whole = collected(DeviationStore::Device, DType::F32, 3, 8);
    let disk = collected(DeviationStore::Disk(path.clone()), DType::F32, 3, 2);
    disk.save(&path)?;
    drop(disk);
    let mut disk =
        SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Disk(path.clone()))?;
    for s in 2..8 {
        disk.collect_flat(&snapshot(&lay, s))?;
    }
    // Mid-collection the file says so, and is refused rather than read half-updated.
    let err = SwagPosterior::load(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("collecting") && err.contains("p.safetensors"),
        "{err}"
    );
    disk.save(&path)?;
    assert_same(&whole, &disk, "continued");
    let loaded = SwagPosterior::load(&path, &Device::Cpu)?;
    assert_same(&whole, &loaded, "continued, loaded");
    // Saving elsewhere writes a complete, independent copy.
    let copy = dir.path().join("copy.safetensors");
    disk.save(&copy)?;
    assert_same(&whole, &SwagPosterior::load(&copy, &Device::Cpu)?, "copy");
    Ok(())
}

#[test]
fn broken_disk_files_are_refused_with_the_file_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    let disk = collected(DeviationStore::Disk(path.clone()), DType::F32, 3, 4);
    disk.save(&path)?;
    drop(disk);
    let len = std::fs::metadata(&path)?.len();
    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
    f.set_len(len - 4096)?;
    for store in [DeviationStore::Device, DeviationStore::Disk(path.clone())] {
        let err = SwagPosterior::load_with_store(&path, &Device::Cpu, store).unwrap_err();
        assert!(matches!(err, Error::BadFile { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") && msg.contains("p.safetensors"),
            "{msg}"
        );
    }
    // A disk store is opened in place: naming another path is refused by name.
    let other = dir.path().join("q.safetensors");
    let err = SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Disk(other))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { ref name, .. } if name == "store"));
    Ok(())
}

#[test]
fn f16_columns_never_overflow_and_count_what_they_flush() -> Result<()> {
    // Deviations of ±2²⁰ (f16's max is 65504) and, beside them, one of 5e-7: below the
    // flush threshold 2⁻²⁵·s of a column whose scale is s = 2⁶.
    let lay = ParamLayout::new(vec![("w".into(), vec![4])])?;
    let cfg = SwagParams {
        rank: 2,
        deviation_dtype: DType::F16,
        ..Default::default()
    }
    .check()?;
    let mut p = SwagPosterior::new(lay, cfg, &Device::Cpu)?;
    let big = 2f32.powi(21);
    for s in [0f32, 1.0] {
        let v = vec![big * s, -big * s, 1e-6 * s, 0.0];
        p.collect_flat(&Tensor::from_vec(v, 4, &Device::Cpu)?)?;
    }
    let dev = p.deviations()?.to_dtype(DType::F32)?;
    let scales = p.deviation_scales();
    assert_eq!(scales[1], 64.0);
    let row: Vec<f32> = dev.get(1)?.to_vec1()?;
    let got: Vec<f32> = row.iter().map(|q| q * scales[1]).collect();
    assert_eq!(got, vec![big / 2.0, -big / 2.0, 0.0, 0.0]);
    assert_eq!(p.flushed_to_zero(), 1);
    let s = p.sample_flat_seeded(1, &SampleConfig::default())?;
    assert!(s.to_vec1::<f32>()?.iter().all(|x| x.is_finite()));
    Ok(())
}

/// A layout of 600,027 coordinates: rows of f32 (2¹⁸ per checksum chunk) and of 16-bit
/// columns (2¹⁹) both span several checksum windows, and a window boundary falls inside `big`.
fn wide_layout() -> Result<ParamLayout> {
    Ok(ParamLayout::new(vec![
        ("a".into(), vec![3]),
        ("big".into(), vec![600_001]),
        ("w".into(), vec![7, 3]),
        ("b".into(), vec![2]),
    ])?)
}

fn saved_wide(path: &std::path::Path, dt: DType, rank: usize, n: usize) -> Result<()> {
    let layout = wide_layout()?;
    let cfg = SwagParams {
        rank,
        deviation_dtype: dt,
        ..Default::default()
    }
    .check()?;
    let mut p = SwagPosterior::new(layout.clone(), cfg, &Device::Cpu)?;
    for s in 0..n {
        p.collect_flat(&snapshot(&layout, s))?;
    }
    p.save(path)?;
    Ok(())
}

#[test]
fn a_file_opened_on_disk_is_sampled_in_one_verifying_pass_with_the_same_bits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (dt, rank, n) in [(DType::F32, 4, 6), (DType::BF16, 3, 3), (DType::F16, 4, 5)] {
        let path = dir.path().join(format!("wide_{dt:?}.safetensors"));
        saved_wide(&path, dt, rank, n)?;
        let memory = SwagPosterior::load(&path, &Device::Cpu)?;
        let opts = SampleConfig::default();
        let expected = bits(&memory.sample_flat_seeded(5, &opts)?);
        // First sample: the streaming pass that also completes the checksum.
        let disk = SwagPosterior::load_with_store(
            &path,
            &Device::Cpu,
            DeviationStore::Disk(path.clone()),
        )?;
        assert_eq!(
            bits(&disk.sample_flat_seeded(5, &opts)?),
            expected,
            "{dt:?} first"
        );
        // Verified now: later samples take the ordinary path, with the same bits.
        assert_eq!(
            bits(&disk.sample_flat_seeded(5, &opts)?),
            expected,
            "{dt:?} second"
        );
        disk.verify_columns()?;
        // A diagonal sample of a fresh opening verifies before it samples.
        let diag = SampleParams {
            scale: 0.5,
            diag_only: true,
            ..Default::default()
        }
        .check()?;
        let fresh = SwagPosterior::load_with_store(
            &path,
            &Device::Cpu,
            DeviationStore::Disk(path.clone()),
        )?;
        assert_eq!(
            bits(&fresh.sample_flat_seeded(2, &diag)?),
            bits(&memory.sample_flat_seeded(2, &diag)?),
            "{dt:?} diagonal"
        );
        // The digests the first sample recorded serve an in-place save: the file reloads.
        disk.save(&path)?;
        let reloaded = SwagPosterior::load(&path, &Device::Cpu)?;
        assert_eq!(bits(&reloaded.sample_flat_seeded(5, &opts)?), expected);
    }
    Ok(())
}

#[test]
fn a_corrupted_column_of_a_file_opened_on_disk_fails_its_first_use() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("wide.safetensors");
    saved_wide(&path, DType::F32, 3, 4)?;
    // Flip one byte of the last deviation row, past the moments (the file ends with the rows).
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() - 1_000;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes)?;
    // In memory, the load itself refuses the file.
    let err = SwagPosterior::load(&path, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    // On disk, the open succeeds (header and moments are sound) and the first use fails, by
    // name, whichever use it is; the failure sticks.
    let open =
        || SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Disk(path.clone()));
    let p = open()?;
    let opts = SampleConfig::default();
    for _ in 0..2 {
        let err = p.sample_flat_seeded(1, &opts).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("checksum mismatch") && msg.contains("wide.safetensors"),
            "{msg}"
        );
    }
    let err = open()?.verify_columns().unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let err = open()?.deviations().unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let err = open()?
        .sample_flat_seeded(
            1,
            &SampleParams {
                scale: 0.5,
                diag_only: true,
                ..Default::default()
            }
            .check()?,
        )
        .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    Ok(())
}
