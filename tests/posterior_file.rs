//! The posterior file: bit-exact round trip and the documented errors for bad files.

use anyhow::Result;
mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Var};
use candle_swag::layout::{ParamLayout, ParamSet};
use candle_swag::swag::{SwagParams, SwagPosterior};
use candle_swag::Error;
use common::*;

fn fitted(rank: usize, n: usize, dt: DType) -> SwagPosterior {
    let layout = ParamLayout::new(vec![
        ("fc.weight".into(), vec![3, 2]),
        ("fc.bias".into(), vec![3]),
    ])
    .unwrap();
    let mut p = SwagPosterior::new(
        layout,
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
    for s in 0..n {
        let v: Vec<f64> = (0..9).map(|i| ((i * 7 + s * 3) as f64).sin()).collect();
        p.collect_flat(&tensor_f32(&v)).unwrap();
    }
    p
}

#[test]
fn round_trip_is_bit_exact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // n > K so the ring has wrapped; and a bf16 posterior.
    for (rank, n, dt) in [
        (4, 7, DType::F32),
        (5, 3, DType::F32),
        (3, 5, DType::BF16),
        (0, 2, DType::F32),
    ] {
        let p = fitted(rank, n, dt);
        let path = dir.path().join(format!("p{rank}{n}.safetensors"));
        p.save(&path)?;
        let q = SwagPosterior::load(&path, &Device::Cpu)?;
        assert_eq!(q.layout(), p.layout());
        assert_eq!(
            (q.n_collected(), q.rank(), q.rows()),
            (p.n_collected(), p.rank(), p.rows())
        );
        assert_eq!(q.config().deviation_dtype(), dt);
        assert_eq!(bits(&q.mean()?), bits(&p.mean()?));
        assert_eq!(bits(&q.sq_mean()?), bits(&p.sq_mean()?));
        assert_eq!(bits(&q.m2()?), bits(&p.m2()?));
        assert_eq!(bits(&q.mean_compensation()?), bits(&p.mean_compensation()?));
        assert!(!q.variance_is_legacy());
        assert_eq!(bits(&q.deviations()?), bits(&p.deviations()?));
    }
    Ok(())
}

/// A Python user reads the file with plain safetensors: check the documented tensors and keys.
#[test]
fn file_is_self_describing_safetensors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    let p = fitted(4, 7, DType::F32);
    p.save(&path)?;
    let bytes = std::fs::read(&path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    assert_eq!(st.tensor("mean")?.shape(), &[9]);
    assert_eq!(st.tensor("deviations")?.shape(), &[4, 9]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let m = meta.metadata().clone().unwrap();
    assert_eq!(m["format"], "candle-swag-posterior");
    assert_eq!(m["format_version"], "3");
    assert_eq!(m["variance"], "exact");
    assert_eq!(m["state"], "saved");
    assert_eq!(m["param_base"], "0");
    assert_eq!(m["deviations_oldest"], "0");
    assert_eq!(m["deviation_scales"], "[1.0,1.0,1.0,1.0]");
    assert_eq!(st.tensor("m2")?.shape(), &[9]);
    assert_eq!(st.tensor("mean_compensation")?.shape(), &[9]);
    assert_eq!(st.tensor("sq_mean")?.shape(), &[9]);
    assert_eq!(m["n_collected"], "7");
    assert_eq!(m["rank"], "4");
    assert_eq!(m["deviation_dtype"], "f32");
    let layout: serde_json::Value = serde_json::from_str(&m["layout"])?;
    assert_eq!(layout[1]["name"], "fc.bias");
    assert_eq!(layout[1]["offset"], 6);
    // Oldest first: the first stored row is snapshot #3 (of 0..7, K = 4) minus the mean after it.
    let mut q = fitted(4, 4, DType::F32);
    let _ = &mut q;
    let stored: Vec<f32> = st
        .tensor("deviations")?
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want = to_f64(&fitted(4, 4, DType::F32).deviations()?);
    assert_close(
        "oldest row",
        &stored[..9].iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &want[27..36],
        0.0,
        0.0,
    );
    Ok(())
}

#[test]
fn truncated_file_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    fitted(3, 4, DType::F32).save(&path)?;
    let bytes = std::fs::read(&path)?;
    for cut in [4, 20, bytes.len() - 5] {
        std::fs::write(&path, &bytes[..cut])?;
        let err = SwagPosterior::load(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::BadFile { .. }), "cut {cut}: {err}");
        assert!(err.to_string().contains("p.safetensors"));
    }
    Ok(())
}

#[test]
fn corrupted_data_is_detected_by_the_checksum() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    fitted(3, 4, DType::F32).save(&path)?;
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes)?;
    let err = SwagPosterior::load(&path, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    Ok(())
}

fn rewrite_metadata(path: &std::path::Path, key: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut m: HashMap<String, String> = meta.metadata().clone().unwrap();
    m.insert(key.into(), value.into());
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let out = safetensors::serialize(tensors, Some(m)).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn unknown_version_and_foreign_files_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    fitted(3, 4, DType::F32).save(&path)?;
    rewrite_metadata(&path, "format_version", "99");
    let err = SwagPosterior::load(&path, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown posterior format version `99`"),
        "{err}"
    );

    // A plain checkpoint (VarMap::save, no metadata) is not a posterior.
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let _ = candle_nn::linear(2, 3, vb.pp("fc"))?;
    let ckpt = dir.path().join("ckpt.safetensors");
    varmap.save(&ckpt)?;
    let err = SwagPosterior::load(&ckpt, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("not a candle-swag posterior"),
        "{err}"
    );

    let err =
        SwagPosterior::load(dir.path().join("missing.safetensors"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    Ok(())
}

#[test]
fn layout_mismatch_names_the_parameter() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    fitted(3, 4, DType::F32).save(&path)?;
    let make = |shapes: Vec<(&str, Vec<usize>)>| {
        ParamSet::from_named_vars(
            shapes
                .into_iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        Var::zeros(s, DType::F32, &Device::Cpu).unwrap(),
                    )
                })
                .collect(),
        )
        .unwrap()
    };
    let ok = make(vec![("fc.weight", vec![3, 2]), ("fc.bias", vec![3])]);
    assert!(SwagPosterior::load_for(&path, &ok).is_ok());
    let wrong_shape = make(vec![("fc.weight", vec![2, 3]), ("fc.bias", vec![3])]);
    let err = SwagPosterior::load_for(&path, &wrong_shape)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`fc.weight`") && err.contains("[3, 2]"),
        "{err}"
    );
    let wrong_name = make(vec![("fc.weight", vec![3, 2]), ("fc.b", vec![3])]);
    let err = SwagPosterior::load_for(&path, &wrong_name)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`fc.bias`") && err.contains("`fc.b`"), "{err}");
    let fewer = make(vec![("fc.weight", vec![3, 2])]);
    let err = SwagPosterior::load_for(&path, &fewer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`fc.bias`"), "{err}");
    Ok(())
}

#[test]
fn failed_save_keeps_the_previous_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.safetensors");
    let p = fitted(3, 4, DType::F32);
    p.save(&path)?;
    let before = std::fs::read(&path)?;
    // Saving into a directory that does not exist fails and leaves nothing behind.
    let err = p
        .save(dir.path().join("nope").join("p.safetensors"))
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert_eq!(std::fs::read(&path)?, before);
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
    Ok(())
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a file of an earlier format `version` as its release did: `tensors` (f32, in file
/// order) through `safetensors::serialize`, the metadata `fields` plus the format name, the
/// version and a checksum over the tensors' bytes in that order (flipped by `corrupt`).
fn write_legacy(
    path: &std::path::Path,
    version: &str,
    fields: Vec<(&str, String)>,
    tensors: &[(&str, Vec<usize>, &[u8])],
    corrupt: bool,
) {
    use safetensors::tensor::{Dtype, TensorView};
    let buffers: Vec<&[u8]> = tensors.iter().map(|(_, _, b)| *b).collect();
    let mut sum = candle_swag::swag::file::checksum(&buffers);
    if corrupt {
        sum ^= 1;
    }
    let meta: HashMap<String, String> = [
        ("format", "candle-swag-posterior".to_string()),
        ("format_version", version.to_string()),
        ("checksum", format!("{sum:016x}")),
    ]
    .into_iter()
    .chain(fields)
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, shape, b)| {
            (
                *name,
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Writes a version-1 file as the previous release did: mean, sq_mean, deviations, and a
/// checksum over those three.
fn write_v1(path: &std::path::Path, mean: &[f32], sq: &[f32], dev: &[f32], corrupt: bool) {
    let (mb, sb, db) = (f32_bytes(mean), f32_bytes(sq), f32_bytes(dev));
    let d = mean.len();
    let layout = ParamLayout::new(vec![("w".into(), vec![d])]).unwrap();
    let fields = vec![
        ("layout", serde_json::to_string(layout.entries()).unwrap()),
        ("n_collected", "4".to_string()),
        ("rank", "3".to_string()),
        ("rows", (dev.len() / d).to_string()),
        ("deviation_dtype", "f32".to_string()),
    ];
    let tensors = [
        ("mean", vec![d], mb.as_slice()),
        ("sq_mean", vec![d], sb.as_slice()),
        ("deviations", vec![dev.len() / d, d], db.as_slice()),
    ];
    write_legacy(path, "1", fields, &tensors, corrupt);
}

#[test]
fn version_1_files_load_with_their_legacy_variance() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v1.safetensors");
    // mean 1, 2; sq_mean 1.25, 4 + 2⁻⁴: variances 0.25 and 2⁻⁴ (exact in f32 and f64).
    let (mean, sq) = ([1.0f32, 2.0], [1.25f32, 4.0625]);
    let dev = [0.5f32, -0.25, -0.5, 0.25, 0.5, 0.25];
    write_v1(&path, &mean, &sq, &dev, false);
    let p = SwagPosterior::load(&path, &Device::Cpu)?;
    assert!(p.variance_is_legacy());
    assert_eq!((p.n_collected(), p.rank(), p.rows()), (4, 3, 3));
    assert_eq!(to_f64(&p.mean()?), vec![1.0, 2.0]);
    assert_eq!(to_f64(&p.variance(0.0)?), vec![0.25, 0.0625]);
    assert_eq!(to_f64(&p.m2()?), vec![1.0, 0.25]);
    assert_eq!(to_f64(&p.sq_mean()?), vec![1.25, 4.0625]);
    assert_eq!(to_f64(&p.deviations()?), dev.map(f64::from).to_vec());
    // Saved again, it is a version-3 file that still says where its variance came from.
    let v2 = dir.path().join("v2.safetensors");
    p.save(&v2)?;
    let q = SwagPosterior::load(&v2, &Device::Cpu)?;
    assert!(q.variance_is_legacy());
    assert_eq!(bits(&q.m2()?), bits(&p.m2()?));
    let bytes = std::fs::read(&v2)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let m = meta.metadata().clone().unwrap();
    assert_eq!(
        (m["format_version"].as_str(), m["variance"].as_str()),
        ("3", "legacy-v1")
    );
    Ok(())
}

#[test]
fn version_1_file_with_a_wrong_checksum_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v1.safetensors");
    write_v1(&path, &[1.0, 2.0], &[1.25, 4.0625], &[0.5, -0.25], true);
    let err = SwagPosterior::load(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("checksum mismatch") && msg.contains("version-1"),
        "{msg}"
    );
    assert!(msg.contains("v1.safetensors"), "{msg}");
    Ok(())
}

/// Writes a version-2 file as the previous release did: five tensors, deviations oldest first,
/// a checksum over the five buffers in the order mean, sq_mean, deviations, mean_compensation,
/// m2.
fn write_v2(path: &std::path::Path, p: &SwagPosterior, corrupt: bool) {
    let host =
        |t: candle_core::Tensor| f32_bytes(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let (mb, sb, db) = (
        host(p.mean().unwrap()),
        host(p.sq_mean().unwrap()),
        host(p.deviations().unwrap()),
    );
    let (cb, m2b) = (host(p.mean_compensation().unwrap()), host(p.m2().unwrap()));
    let d = p.numel();
    let fields = vec![
        (
            "layout",
            serde_json::to_string(p.layout().entries()).unwrap(),
        ),
        ("n_collected", p.n_collected().to_string()),
        ("rank", p.rank().to_string()),
        ("rows", p.rows().to_string()),
        ("deviation_dtype", "f32".to_string()),
        ("variance", "exact".to_string()),
    ];
    let tensors = [
        ("mean", vec![d], mb.as_slice()),
        ("sq_mean", vec![d], sb.as_slice()),
        ("deviations", vec![p.rows(), d], db.as_slice()),
        ("mean_compensation", vec![d], cb.as_slice()),
        ("m2", vec![d], m2b.as_slice()),
    ];
    write_legacy(path, "2", fields, &tensors, corrupt);
}

#[test]
fn version_2_files_load_unchanged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v2.safetensors");
    let p = fitted(4, 7, DType::F32);
    write_v2(&path, &p, false);
    let q = SwagPosterior::load(&path, &Device::Cpu)?;
    assert!(!q.variance_is_legacy());
    assert_eq!(bits(&q.m2()?), bits(&p.m2()?));
    assert_eq!(bits(&q.mean()?), bits(&p.mean()?));
    assert_eq!(bits(&q.deviations()?), bits(&p.deviations()?));
    let opts = candle_swag::SampleConfig::default();
    assert_eq!(
        bits(&q.sample_flat_seeded(3, &opts)?),
        bits(&p.sample_flat_seeded(3, &opts)?)
    );
    write_v2(&path, &p, true);
    let err = SwagPosterior::load(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("version-2"),
        "{err}"
    );
    Ok(())
}

#[test]
fn f16_columns_round_trip_with_their_scales() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("h.safetensors");
    let p = fitted(3, 5, DType::F16);
    let scales = p.deviation_scales();
    assert_eq!(scales.len(), 3);
    // Each scale maps its column's largest stored value into [2^14, 2^15).
    let dev = p.deviations()?.to_dtype(DType::F32)?;
    for (k, s) in scales.iter().enumerate() {
        let max = dev.get(k)?.abs()?.max(0)?.to_scalar::<f32>()?;
        assert!(
            (16384.0..32768.0).contains(&max),
            "row {k}: {max} (scale {s})"
        );
    }
    p.save(&path)?;
    let q = SwagPosterior::load(&path, &Device::Cpu)?;
    assert_eq!(q.deviation_scales(), scales);
    assert_eq!(bits(&q.deviations()?), bits(&p.deviations()?));
    let opts = candle_swag::SampleConfig::default();
    assert_eq!(
        bits(&q.sample_flat_seeded(9, &opts)?),
        bits(&p.sample_flat_seeded(9, &opts)?)
    );
    Ok(())
}
