// The seed corpus of every fuzz target: small valid files made with the crate's own writers
// (and, for the older posterior versions, as their releases wrote them). Included by
// `tests/fuzz_replay.rs`, whose ignored test `write_fuzz_seeds` runs it (`fuzz/README.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::targets::join_parts;
use candle_core::{DType, Device, Tensor};
use candle_swag::layout::ParamLayout;
use candle_swag::swag::checkpoint::write_flat;
use candle_swag::swag::{ShardEntry, ShardIndex, SwagParams, SwagPosterior};
use candle_swag_cli::data::csv::TaskKind;
use candle_swag_cli::train::pipeline::{fit_csv, CsvFitParams};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn layout() -> ParamLayout {
    ParamLayout::new(vec![
        ("fc.weight".into(), vec![3, 2]),
        ("fc.bias".into(), vec![3]),
    ])
    .unwrap()
}

fn theta(s: usize, d: usize) -> Tensor {
    let v: Vec<f32> = (0..d).map(|i| ((i * 7 + s * 3) as f32).sin()).collect();
    Tensor::from_vec(v, d, &Device::Cpu).unwrap()
}

fn posterior(rank: usize, n: usize, dt: DType) -> SwagPosterior {
    let config = SwagParams {
        rank,
        deviation_dtype: dt,
        ..Default::default()
    }
    .check()
    .unwrap();
    let mut p = SwagPosterior::new(layout(), config, &Device::Cpu).unwrap();
    for s in 0..n {
        p.collect_flat(&theta(s, 9)).unwrap();
    }
    p
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn host(t: Tensor) -> Vec<u8> {
    f32_bytes(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

/// A version-1 or -2 file as those releases wrote it.
fn legacy(version: &str, p: &SwagPosterior) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let d = p.numel();
    let (mb, sb, db) = (
        host(p.mean().unwrap()),
        host(p.sq_mean().unwrap()),
        host(p.deviations().unwrap()),
    );
    let (cb, m2b) = (host(p.mean_compensation().unwrap()), host(p.m2().unwrap()));
    let mut tensors: Vec<(&str, Vec<usize>, &[u8])> = vec![
        ("mean", vec![d], &mb),
        ("sq_mean", vec![d], &sb),
        ("deviations", vec![p.rows(), d], &db),
    ];
    if version == "2" {
        tensors.push(("mean_compensation", vec![d], &cb));
        tensors.push(("m2", vec![d], &m2b));
    }
    let buffers: Vec<&[u8]> = tensors.iter().map(|(_, _, b)| *b).collect();
    let sum = candle_swag::swag::file::checksum(&buffers);
    let mut meta: HashMap<String, String> = [
        ("format", "candle-swag-posterior".to_string()),
        ("format_version", version.to_string()),
        ("checksum", format!("{sum:016x}")),
        (
            "layout",
            serde_json::to_string(p.layout().entries()).unwrap(),
        ),
        ("n_collected", p.n_collected().to_string()),
        ("rank", p.rank().to_string()),
        ("rows", p.rows().to_string()),
        ("deviation_dtype", "f32".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if version == "2" {
        meta.insert("variance".into(), "exact".into());
    }
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, shape, b)| {
            (
                *name,
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

struct Seeds {
    root: PathBuf,
    tmp: tempfile::TempDir,
}

impl Seeds {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) -> Res<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        assert!(bytes.len() < 64 * 1024, "seed {target}/{name} is too big");
        std::fs::write(dir.join(name), bytes)?;
        Ok(())
    }

    fn tmp(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

fn posterior_seeds(s: &Seeds) -> Res<()> {
    let cases = [
        ("v3_f32_empty", 3, 0, DType::F32),
        ("v3_f32_partial", 3, 2, DType::F32),
        ("v3_f32_wrapped", 2, 5, DType::F32),
        ("v3_f16", 3, 4, DType::F16),
        ("v3_bf16", 2, 3, DType::BF16),
    ];
    for (name, rank, n, dt) in cases {
        let path = s.tmp(name);
        posterior(rank, n, dt).save(&path)?;
        s.put("posterior_file", name, &std::fs::read(&path)?)?;
    }
    let p = posterior(3, 2, DType::F32);
    s.put("posterior_file", "v1", &legacy("1", &p))?;
    s.put("posterior_file", "v2", &legacy("2", &p))?;
    Ok(())
}

fn shard_seeds(s: &Seeds) -> Res<()> {
    let whole = layout();
    let config = SwagParams {
        rank: 2,
        ..Default::default()
    }
    .check()?;
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for (i, range) in [0..1, 1..2].into_iter().enumerate() {
        let mut p = SwagPosterior::shard(&whole, range.clone(), config.clone(), &Device::Cpu)?;
        let d = p.numel();
        for k in 0..3 {
            p.collect_flat(&theta(k, d))?;
        }
        let file = format!("shard{i}.safetensors");
        let path = s.tmp(&file);
        p.save(&path)?;
        files.push(std::fs::read(&path)?);
        entries.push(ShardEntry {
            file: file.into(),
            first_param: range.start,
            params: range.len(),
        });
    }
    let index_path = s.tmp("index.json");
    ShardIndex::new(&whole, entries).save(&index_path)?;
    let index = std::fs::read(&index_path)?;
    s.put(
        "shard_index",
        "two_shards",
        &join_parts(&[&index, &files[0], &files[1]]),
    )?;
    s.put("shard_index", "index_only", &index)?;
    Ok(())
}

fn checkpoint_seeds(s: &Seeds) -> Res<()> {
    let path = s.tmp("ckpt.safetensors");
    let flat: Vec<f32> = (0..9).map(|i| i as f32 * 0.5).collect();
    write_flat(&path, &layout(), &flat)?;
    s.put("checkpoint", "f32", &std::fs::read(&path)?)?;
    // Half, bfloat16 and double tensors, as other frameworks write them.
    let dev = Device::Cpu;
    let w = Tensor::from_vec(flat[..6].to_vec(), (3, 2), &dev)?;
    let b = Tensor::from_vec(flat[6..].to_vec(), 3, &dev)?;
    for (name, dt) in [
        ("f16", DType::F16),
        ("bf16", DType::BF16),
        ("f64", DType::F64),
    ] {
        let map = HashMap::from([
            ("fc.weight".to_string(), w.to_dtype(dt)?),
            ("fc.bias".to_string(), b.to_dtype(dt)?),
        ]);
        candle_core::safetensors::save(&map, &path)?;
        s.put("checkpoint", name, &std::fs::read(&path)?)?;
    }
    Ok(())
}

fn array_seeds(s: &Seeds) -> Res<()> {
    let dev = Device::Cpu;
    let probs = Tensor::from_vec(vec![0.25f32, 0.75, 0.5, 0.5, 0.9, 0.1], (3, 2), &dev)?;
    let labels = Tensor::from_vec(vec![1i64, 0, 0], 3, &dev)?;
    let mean = Tensor::from_vec(vec![0.5f64, 1.5, -2.0], 3, &dev)?;
    // Byte 0: format (0 npy, 1 npz, 2 safetensors, 3 csv); byte 1: role (0 probabilities,
    // 2 labels, 3 mean), high bit to name a key.
    let with = |a: u8, b: u8, bytes: Vec<u8>| [vec![a, b], bytes].concat();
    for (name, t, role) in [
        ("probs", &probs, 0u8),
        ("labels", &labels, 2),
        ("mean", &mean, 3),
    ] {
        let path = s.tmp(&format!("{name}.npy"));
        t.write_npy(&path)?;
        s.put(
            "array_input",
            &format!("npy_{name}"),
            &with(0, role, std::fs::read(&path)?),
        )?;
    }
    let npz = s.tmp("arrays.npz");
    Tensor::write_npz(&[("probs", &probs), ("labels", &labels)], &npz)?;
    s.put("array_input", "npz", &with(1, 0x80, std::fs::read(&npz)?))?;
    let st = s.tmp("arrays.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([
            ("probs".to_string(), probs.clone()),
            ("mean".to_string(), mean),
        ]),
        &st,
    )?;
    s.put(
        "array_input",
        "safetensors",
        &with(2, 0, std::fs::read(&st)?),
    )?;
    let csv = "prob_0,prob_1,pred\n0.25,0.75,1\n0.5,0.5,0\n0.9,0.1,0\n";
    s.put(
        "array_input",
        "csv_header",
        &with(3, 0, csv.as_bytes().to_vec()),
    )?;
    s.put(
        "array_input",
        "csv_key",
        &with(3, 0x80, csv.as_bytes().to_vec()),
    )?;
    let bare = "\u{feff}0.25,0.75\r\n\"0.5\",0.5\r\n\r\n1e-3,-inf\n";
    s.put(
        "array_input",
        "csv_bare",
        &with(3, 1, bare.as_bytes().to_vec()),
    )?;
    Ok(())
}

fn table_seeds(s: &Seeds) -> Res<()> {
    // Knobs: target index, flags (bit 0 classification, bit 1 split column, bit 2 missing
    // target), split index, categorical mask, ignore mask, missing-name flags.
    let csv = "id,x1,colour,\"size, cm\",split,y\n\
               a,0.5,red,1,train,0\n\
               b,1.5,blue,2,train,1\n\
               c,-0.25,red,3,test,1\n\
               d,2.0,green,4,train,0\n";
    let put = |name: &str, knobs: [u8; 6], text: &str| {
        s.put(
            "table_csv",
            name,
            &[knobs.as_slice(), text.as_bytes()].concat(),
        )
    };
    put("regression", [5, 0, 0, 0b100, 0b1, 0], csv)?;
    put("classification_split", [5, 0b11, 4, 0b100, 0b1, 0], csv)?;
    put("categorical_target", [2, 1, 0, 0, 0b1, 0], csv)?;
    put("missing_names", [5, 0, 0, 0b100, 0b1, 3], csv)?;
    put("plain", [1, 0, 0, 0, 0, 0], "a,b\n1,2\n3,4\n")?;
    Ok(())
}

fn idx_seeds(s: &Seeds) -> Res<()> {
    let mut images = Vec::new();
    for v in [2051u32, 2, 3, 3] {
        images.extend(v.to_be_bytes());
    }
    images.extend((0..18u8).map(|i| i * 14));
    s.put("idx", "images", &[&[0u8][..], &images].concat())?;
    let mut labels = Vec::new();
    for v in [2049u32, 3] {
        labels.extend(v.to_be_bytes());
    }
    labels.extend([7u8, 2, 9]);
    s.put("idx", "labels", &[&[1u8][..], &labels].concat())?;
    let header: Vec<String> = std::iter::once("label".to_string())
        .chain((0..784).map(|i| format!("px{i}")))
        .collect();
    let mut csv = header.join(",");
    for r in 0..2 {
        csv.push('\n');
        let row: Vec<String> = std::iter::once(format!("{}", r + 3))
            .chain((0..784).map(|i| ((i * 7 + r) % 256).to_string()))
            .collect();
        csv.push_str(&row.join(","));
    }
    csv.push('\n');
    s.put("idx", "image_csv", &[&[2u8][..], csv.as_bytes()].concat())?;
    Ok(())
}

fn run_seeds(s: &Seeds) -> Res<()> {
    let data = s.tmp("train.csv");
    let mut csv = String::from("x1,x2,kind,y\n");
    for i in 0..12 {
        let x = i as f64 / 4.0;
        let kind = ["a", "b", "c"][i % 3];
        csv.push_str(&format!("{x},{},{kind},{}\n", (x * 1.3).sin(), (i % 2)));
    }
    std::fs::write(&data, csv)?;
    let cases = [
        ("regression", TaskKind::Regression, false),
        ("classification_batchnorm", TaskKind::Classification, true),
    ];
    for (name, task, batchnorm) in cases {
        let mut cfg = CsvFitParams::new(&data, "y", task);
        cfg.categorical = vec!["kind".into()];
        cfg.hidden = vec![3];
        cfg.batchnorm = batchnorm;
        cfg.epochs = 2;
        cfg.rank = 2;
        cfg.batch_size = 4;
        cfg.progress = false;
        cfg.samples = 2;
        let out = s.tmp(name);
        fit_csv(&cfg.check()?, &out, &candle_core::Device::Cpu)?;
        let read = |f: &str| std::fs::read(out.join(f)).unwrap_or_default();
        let mut parts = vec![
            read("config.json"),
            read("weights.safetensors"),
            read("posterior.safetensors"),
        ];
        if batchnorm {
            parts.push(read("train_inputs.safetensors"));
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        s.put("run_dir", name, &join_parts(&refs))?;
    }
    Ok(())
}

/// Writes every target's seeds under `root/<target>/`.
pub fn write_all(root: &Path) -> Res<()> {
    let s = Seeds {
        root: root.to_path_buf(),
        tmp: tempfile::tempdir()?,
    };
    posterior_seeds(&s)?;
    shard_seeds(&s)?;
    checkpoint_seeds(&s)?;
    array_seeds(&s)?;
    table_seeds(&s)?;
    idx_seeds(&s)?;
    run_seeds(&s)?;
    Ok(())
}
