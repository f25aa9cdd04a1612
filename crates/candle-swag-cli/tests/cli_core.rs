//! `swag collect`, `swag sample` and `swag inspect` end to end through the built binary.

use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};

fn swag(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swag"))
        .args(args)
        .output()
        .expect("run swag");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn checkpoint(path: &Path, w: [f32; 6], b: [f32; 3]) {
    let mut m = HashMap::new();
    m.insert(
        "fc.weight".to_string(),
        Tensor::from_vec(w.to_vec(), (3, 2), &Device::Cpu).unwrap(),
    );
    m.insert(
        "fc.bias".to_string(),
        Tensor::from_vec(b.to_vec(), 3, &Device::Cpu).unwrap(),
    );
    m.insert(
        "bn.running_mean".to_string(),
        Tensor::from_vec(vec![9f32; 3], 3, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, path).unwrap();
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{stderr}"
    );
}

#[test]
fn collect_sample_inspect_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    checkpoint(
        Path::new(&p("e1.safetensors")),
        [1., 2., 3., 4., 5., 6.],
        [1., 1., 1.],
    );
    checkpoint(
        Path::new(&p("e2.safetensors")),
        [3., 2., 1., 0., 5., 8.],
        [2., 0., 1.],
    );
    checkpoint(
        Path::new(&p("e3.safetensors")),
        [2., 2., 2., 2., 2., 2.],
        [0., 2., 4.],
    );
    let (ok, stdout, stderr) = swag(&[
        "collect",
        "--rank",
        "2",
        "--out",
        &p("post.safetensors"),
        &p("e1.safetensors"),
        &p("e2.safetensors"),
        &p("e3.safetensors"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("collected 3 snapshots"), "{stdout}");

    // The SWA mean (scale 0) under the original names and shapes; BN buffers left out.
    let (ok, _, stderr) = swag(&[
        "sample",
        "--posterior",
        &p("post.safetensors"),
        "--scale",
        "0",
        "--out",
        &p("mean.safetensors"),
    ]);
    assert!(ok, "{stderr}");
    let mean = candle_core::safetensors::load(p("mean.safetensors"), &Device::Cpu)?;
    assert_eq!(mean.len(), 2);
    assert_eq!(mean["fc.weight"].dims(), &[3, 2]);
    assert_eq!(
        mean["fc.weight"].flatten_all()?.to_vec1::<f32>()?,
        vec![2., 2., 2., 2., 4., 16. / 3.]
    );
    assert_eq!(mean["fc.bias"].to_vec1::<f32>()?, vec![1., 1., 2.]);

    // Same seed, same sample; another seed, another sample.
    let draw = |seed: &str, out: &str| {
        let (ok, _, stderr) = swag(&[
            "sample",
            "--posterior",
            &p("post.safetensors"),
            "--seed",
            seed,
            "--out",
            &p(out),
        ]);
        assert!(ok, "{stderr}");
        candle_core::safetensors::load(p(out), &Device::Cpu).unwrap()["fc.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(draw("4", "a.safetensors"), draw("4", "b.safetensors"));
    assert_ne!(draw("4", "a.safetensors"), draw("5", "c.safetensors"));

    let (ok, stdout, _) = swag(&["inspect", &p("post.safetensors")]);
    assert!(ok);
    assert!(
        stdout.contains("fc.weight") && stdout.contains("[3, 2]") && stdout.contains("3 collected"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn bad_inputs_give_one_line_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    checkpoint(Path::new(&p("e1.safetensors")), [1.; 6], [1.; 3]);
    checkpoint(
        Path::new(&p("nan.safetensors")),
        [1., 1., 1., f32::NAN, 1., 1.],
        [1.; 3],
    );
    let mut m = HashMap::new();
    m.insert(
        "fc.weight".to_string(),
        Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)?,
    );
    m.insert(
        "fc.bias".to_string(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&m, p("shape.safetensors"))?;
    std::fs::write(p("junk.safetensors"), b"not a safetensors file")?;

    let out = p("post.safetensors");
    let (ok, _, stderr) = swag(&[
        "collect",
        "--out",
        &out,
        &p("e1.safetensors"),
        &p("nan.safetensors"),
    ]);
    assert!(!ok);
    assert_one_line_error(&stderr, "nan.safetensors");
    assert!(
        stderr.contains("`fc.weight`") && stderr.contains("index 3"),
        "{stderr}"
    );
    assert!(!Path::new(&out).exists(), "no posterior written on error");

    let (ok, _, stderr) = swag(&[
        "collect",
        "--out",
        &out,
        &p("e1.safetensors"),
        &p("shape.safetensors"),
    ]);
    assert!(!ok);
    assert_one_line_error(&stderr, "shape.safetensors");
    assert!(stderr.contains("`fc.weight`"), "{stderr}");

    let (ok, _, stderr) = swag(&["collect", "--out", &out, &p("missing.safetensors")]);
    assert!(!ok);
    assert_one_line_error(&stderr, "missing.safetensors");

    let (ok, _, stderr) = swag(&["inspect", &p("junk.safetensors")]);
    assert!(!ok);
    assert_one_line_error(&stderr, "junk.safetensors");

    let (ok, _, stderr) = swag(&["collect", "--out", &out, &p("e1.safetensors")]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = swag(&[
        "sample",
        "--posterior",
        &out,
        "--scale=-1",
        "--out",
        &p("s.safetensors"),
    ]);
    assert!(!ok);
    assert_one_line_error(&stderr, "scale");
    Ok(())
}

#[test]
fn argument_errors_are_one_line() -> Result<()> {
    let (ok, _, stderr) = swag(&["sample", "--posterior"]);
    assert!(!ok);
    assert_one_line_error(&stderr, "--posterior");
    let (ok, _, stderr) = swag(&["collect", "--rank", "many", "--out", "x", "y"]);
    assert!(!ok);
    assert_one_line_error(&stderr, "many");
    Ok(())
}

/// `--store disk` collects into the posterior file itself and samples by streaming it: the
/// same file and the same sample, bit for bit, as the in-memory store, for each dtype.
#[test]
fn disk_store_collects_and_samples_the_same_bits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    for (i, s) in [0.5f32, -1.0, 2.0, 0.25].iter().enumerate() {
        checkpoint(
            Path::new(&p(&format!("e{i}.safetensors"))),
            [s * 1.0, 2.0, s * s, 4.0, 5.0 - s, 6.0],
            [*s, 0.0, 1e3 * s],
        );
    }
    let snaps: Vec<String> = (0..4).map(|i| p(&format!("e{i}.safetensors"))).collect();
    for dtype in ["f32", "bf16", "f16"] {
        let mut samples = Vec::new();
        for store in ["device", "disk"] {
            let out = p(&format!("{dtype}-{store}.safetensors"));
            let mut args = vec!["collect", "--rank", "3", "--dtype", dtype, "--store", store];
            args.extend(["--out", &out]);
            args.extend(snaps.iter().map(String::as_str));
            let (ok, _, stderr) = swag(&args);
            assert!(ok, "{stderr}");
            // No temporary, and no lock file, is left beside the posterior.
            let hidden = std::fs::read_dir(dir.path())?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                .count();
            assert_eq!(hidden, 0, "{dtype}, {store}: temporaries left behind");
            let sample = p(&format!("{dtype}-{store}-sample.safetensors"));
            let (ok, _, stderr) = swag(&[
                "sample",
                "--posterior",
                &out,
                "--seed",
                "7",
                "--store",
                store,
                "--out",
                &sample,
            ]);
            assert!(ok, "{stderr}");
            samples.push(std::fs::read(&sample)?);
            let (ok, stdout, stderr) = swag(&["inspect", &out, "--store", store]);
            assert!(ok && stdout.contains("3 of K = 3"), "{stdout}{stderr}");
        }
        assert_eq!(
            samples[0], samples[1],
            "{dtype}: disk and memory samples differ"
        );
    }
    Ok(())
}

/// `--store auto` (the default of `sample` and `inspect`) streams a current-format posterior
/// without being told, whatever its size, and draws the in-memory sample's bits.
#[test]
fn sample_and_inspect_stream_current_posteriors_by_default() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    for (i, s) in [0.5f32, -1.0, 2.0].iter().enumerate() {
        checkpoint(
            Path::new(&p(&format!("e{i}.safetensors"))),
            [*s, 2.0, s * s, 4.0, 5.0 - s, 6.0],
            [*s, 0.0, 1e3 * s],
        );
    }
    let post = p("post.safetensors");
    let mut args = vec!["collect", "--rank", "2", "--out", &post];
    let snaps: Vec<String> = (0..3).map(|i| p(&format!("e{i}.safetensors"))).collect();
    args.extend(snaps.iter().map(String::as_str));
    let (ok, _, stderr) = swag(&args);
    assert!(ok, "{stderr}");
    let mut samples = Vec::new();
    for store in ["auto", "device"] {
        let out = p(&format!("sample-{store}.safetensors"));
        let args = ["sample", "--posterior", &post, "--seed", "3", "--out", &out];
        let (ok, _, stderr) = swag(&[&args[..], &["--store", store]].concat());
        assert!(ok, "{stderr}");
        samples.push(std::fs::read(&out)?);
        let (ok, stdout, stderr) = swag(&["inspect", &post, "--store", store]);
        assert!(ok, "{stderr}");
        let want = if store == "auto" {
            "columns streamed from the file"
        } else {
            "columns in memory"
        };
        assert!(stdout.contains(want), "--store {store}: {stdout}");
    }
    assert_eq!(
        samples[0], samples[1],
        "streamed and in-memory samples differ"
    );
    Ok(())
}
