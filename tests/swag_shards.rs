//! A posterior split by parameter ranges samples exactly what the whole posterior samples, and
//! a broken shard set is refused with the shard named.

use anyhow::Result;
mod common;
use common::bits;

use candle_core::{DType, Device, Tensor};
use candle_swag::layout::ParamLayout;
use candle_swag::swag::{
    DeviationStore, SampleConfig, SampleParams, ShardEntry, ShardIndex, ShardSet, SwagParams,
    SwagPosterior,
};
use candle_swag::Error;

/// Six parameters of uneven sizes, one longer than a noise block (16384).
fn layout() -> ParamLayout {
    ParamLayout::new(vec![
        ("embed".into(), vec![70, 300]),
        ("l0.w".into(), vec![5, 3]),
        ("l0.b".into(), vec![5]),
        ("l1.w".into(), vec![40, 41]),
        ("l1.b".into(), vec![40]),
        ("head".into(), vec![1]),
    ])
    .unwrap()
}

fn snapshot(d: usize, s: usize) -> Vec<f32> {
    (0..d)
        .map(|i| ((i * 31 + s * 17) as f32 * 0.01).sin() + 0.05 * s as f32)
        .collect()
}

/// The whole posterior and its shards over `cuts` (parameter ranges), fed the same snapshots;
/// the shard files and index are saved under `dir`.
fn whole_and_shards(
    cuts: &[std::ops::Range<usize>],
    dt: DType,
    dir: &std::path::Path,
) -> (SwagPosterior, std::path::PathBuf) {
    let lay = layout();
    let cfg = SwagParams {
        rank: 4,
        deviation_dtype: dt,
        ..Default::default()
    }
    .check()
    .unwrap();
    let mut whole = SwagPosterior::new(lay.clone(), cfg.clone(), &Device::Cpu).unwrap();
    let mut shards: Vec<SwagPosterior> = cuts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // One shard keeps its columns on disk: stores do not change the bits.
            let c = if i == 1 {
                SwagParams {
                    store: DeviationStore::Disk(dir.join(format!("shard{i}.safetensors"))),
                    ..cfg.clone().into()
                }
                .check()
                .unwrap()
            } else {
                cfg.clone()
            };
            SwagPosterior::shard(&lay, r.clone(), c, &Device::Cpu).unwrap()
        })
        .collect();
    for s in 0..7 {
        let theta = snapshot(lay.numel(), s);
        whole
            .collect_flat(&Tensor::from_slice(&theta, lay.numel(), &Device::Cpu).unwrap())
            .unwrap();
        for (shard, r) in shards.iter_mut().zip(cuts) {
            let lo = lay.entries()[r.start].offset;
            let part = &theta[lo..lo + shard.numel()];
            shard
                .collect_flat(&Tensor::from_slice(part, part.len(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let mut entries = Vec::new();
    for (i, (shard, r)) in shards.iter().zip(cuts).enumerate() {
        let file = format!("shard{i}.safetensors");
        shard.save(dir.join(&file)).unwrap();
        entries.push(ShardEntry {
            file: file.into(),
            first_param: r.start,
            params: r.len(),
        });
    }
    let index = dir.join("index.json");
    ShardIndex::new(&lay, entries).save(&index).unwrap();
    (whole, index)
}

#[test]
fn sharded_samples_equal_the_whole_posteriors_bit_for_bit() -> Result<()> {
    // One shard (the whole layout), two and three of uneven sizes.
    #[allow(clippy::single_range_in_vec_init)]
    let splits: [&[std::ops::Range<usize>]; 3] = [&[0..6], &[0..1, 1..6], &[0..3, 3..4, 4..6]];
    for (n, cuts) in splits.iter().enumerate() {
        for dt in [DType::F32, DType::F16] {
            let dir = tempfile::tempdir()?;
            let (whole, index) = whole_and_shards(cuts, dt, dir.path());
            let set = ShardSet::load(&index, &Device::Cpu)?;
            assert_eq!(set.shards().len(), n + 1);
            assert!(whole.rows() > 0);
            for opts in [
                SampleConfig::default(),
                SampleParams {
                    scale: 0.3,
                    diag_only: true,
                    ..Default::default()
                }
                .check()?,
            ] {
                for seed in [0u64, 12345] {
                    assert_eq!(
                        bits(&set.sample_flat_seeded(seed, &opts)?),
                        bits(&whole.sample_flat_seeded(seed, &opts)?),
                        "{} shards, {dt:?}, seed {seed}",
                        n + 1
                    );
                }
            }
        }
    }
    Ok(())
}

fn rewrite(index: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(index, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn missing_overlapping_and_foreign_shards_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, index) = whole_and_shards(&[0..3, 3..4, 4..6], DType::F32, dir.path());
    let original = std::fs::read_to_string(&index)?;
    let load_err = || {
        ShardSet::load(&index, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };

    // A shard left out of the index.
    rewrite(&index, |v| {
        v["shards"].as_array_mut().unwrap().remove(1);
    });
    let err = load_err();
    assert!(
        err.contains("missing") && err.contains("3..4") && err.contains("l1.w"),
        "{err}"
    );

    // Two shards claiming parameter 2.
    std::fs::write(&index, &original)?;
    rewrite(&index, |v| v["shards"][1]["first_param"] = 2.into());
    let err = load_err();
    assert!(err.contains("overlaps") && err.contains("shard1"), "{err}");

    // A shard file that is not there.
    std::fs::write(&index, &original)?;
    std::fs::remove_file(dir.path().join("shard2.safetensors"))?;
    let err = ShardSet::load(&index, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("shard2"),
        "{err}"
    );

    // The index pointing a range at another shard's file.
    std::fs::write(&index, &original)?;
    rewrite(&index, |v| {
        v["shards"][0]["file"] = "shard1.safetensors".into()
    });
    let err = load_err();
    assert!(
        err.contains("shard1") && err.contains("not the shard"),
        "{err}"
    );
    Ok(())
}
