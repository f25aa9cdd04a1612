//! `swag bench-classify` and `swag fit --weight-decay auto`: the benchmark runs `swag fit`'s
//! pipeline and the logistic regression on every split, the weight decay is chosen by the
//! lowest pooled validation NLL, and bad settings are refused by name.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use candle_swag::tune::SCALE_GRID;
use candle_swag::Result;
use candle_swag_cli::data::{load_csv, prepare, CsvParams, FeatureScaling, TaskKind};
use candle_swag_cli::train::bench_classify::{
    bench_classify_table, run_bench_classify, ClassifyBenchParams, ClassifyMethod,
};
use candle_swag_cli::train::pipeline::{
    default_weight_decay, fit_dataset, CsvFitParams, NoiseChoice, WeightDecay, WEIGHT_DECAY_GRID,
};

fn iris() -> std::path::PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/iris.csv")).to_path_buf()
}

/// `swag fit`'s settings made small for a test: the features under test (tuning, the weight
/// decay choice) unchanged.
fn small_fit(task: TaskKind) -> CsvFitParams {
    CsvFitParams {
        hidden: vec![8],
        epochs: 4,
        rank: 2,
        samples: 2,
        progress: false,
        ..CsvFitParams::new("unused.csv", "class", task)
    }
}

#[test]
fn the_benchmark_scores_swag_fit_and_the_logistic_on_every_split() -> Result<()> {
    let data = load_csv(
        iris(),
        &CsvParams::new("class", TaskKind::Classification).check()?,
    )?;
    let config = ClassifyBenchParams {
        splits: 2,
        samples: 2,
        ..Default::default()
    }
    .check()?;
    let outcomes = run_bench_classify(
        &data,
        &config,
        &small_fit(TaskKind::Classification),
        &Device::Cpu,
    )?;
    assert_eq!(outcomes.len(), 2 * ClassifyMethod::ALL.len());
    for o in &outcomes {
        assert!(o.accuracy > 0.3 && o.accuracy <= 1.0, "{o:?}");
        assert!(o.nll.is_finite() && o.nll > 0.0, "{o:?}");
        assert!((0.0..=1.0).contains(&o.ece), "{o:?}");
        match o.method {
            ClassifyMethod::SwagFit => {
                assert!(SCALE_GRID.contains(&o.scale.unwrap_or(-1.0)), "{o:?}");
                assert!(
                    WEIGHT_DECAY_GRID.contains(&o.weight_decay.unwrap_or(-1.0)),
                    "{o:?}"
                );
            }
            ClassifyMethod::SwaOfFit => assert_eq!(o.scale, Some(0.0)),
            // Iris is nearly linearly separable: the logistic regression is accurate.
            ClassifyMethod::Logistic => {
                assert!(o.accuracy > 0.85, "{o:?}");
                assert_eq!((o.scale, o.weight_decay), (None, None));
            }
        }
    }
    let table = bench_classify_table(&outcomes);
    assert!(table.contains("accuracy (2 splits)"), "{table}");
    assert_eq!(
        table.lines().count(),
        2 + ClassifyMethod::ALL.len(),
        "{table}"
    );
    let regression = load_csv(
        iris(),
        &CsvParams {
            ignore: vec!["class".into()],
            ..CsvParams::new("petal_width", TaskKind::Regression)
        }
        .check()?,
    )?;
    let e = run_bench_classify(
        &regression,
        &config,
        &small_fit(TaskKind::Classification),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("classification targets"), "{e}");
    Ok(())
}

#[test]
fn auto_weight_decay_keeps_the_lowest_pooled_validation_nll() -> Result<()> {
    let data = load_csv(
        iris(),
        &CsvParams::new("class", TaskKind::Classification).check()?,
    )?;
    let prepared = prepare(&data, FeatureScaling::Standardize, &Device::Cpu)?;
    let opts = small_fit(TaskKind::Classification).check()?;
    assert_eq!(opts.weight_decay, WeightDecay::Auto);
    let fit = fit_dataset(&opts, &prepared.train, 3)?;
    let sel = fit
        .weight_decay_selection
        .as_ref()
        .expect("auto records its choice");
    let decays: Vec<f64> = sel.iter().map(|d| d.weight_decay).collect();
    assert_eq!(decays, WEIGHT_DECAY_GRID.to_vec());
    let best = sel
        .iter()
        .fold(&sel[0], |b, d| if d.nll < b.nll { d } else { b });
    assert_eq!(
        fit.fitted.spec.train().sgd().weight_decay(),
        best.weight_decay
    );
    assert_eq!(fit.scale, best.scale);
    // Every training row was validated once (5 folds).
    assert_eq!(fit.validation_rows, Some(prepared.train.len()));

    // Fewer than 20 rows: the weakest decay on the one split, nothing compared.
    let few = prepared.train.select(&(0..15).collect::<Vec<_>>())?;
    let fit = fit_dataset(&opts, &few, 3)?;
    assert!(fit.weight_decay_selection.is_none());
    assert_eq!(
        fit.fitted.spec.train().sgd().weight_decay(),
        WEIGHT_DECAY_GRID[0]
    );

    // A fixed decay is used as given, with nothing compared.
    let fixed = CsvFitParams {
        weight_decay: WeightDecay::Fixed(0.02),
        ..small_fit(TaskKind::Classification)
    }
    .check()?;
    let fit = fit_dataset(&fixed, &prepared.train, 3)?;
    assert!(fit.weight_decay_selection.is_none());
    assert_eq!(fit.fitted.spec.train().sgd().weight_decay(), 0.02);
    Ok(())
}

#[test]
fn weight_decay_settings_are_checked_by_name() {
    assert_eq!(
        default_weight_decay(TaskKind::Classification, true),
        WeightDecay::Auto
    );
    for (task, tune) in [
        (TaskKind::Classification, false),
        (TaskKind::Regression, true),
        (TaskKind::Regression, false),
    ] {
        assert_eq!(default_weight_decay(task, tune), WeightDecay::Fixed(5e-4));
    }
    let err = |p: CsvFitParams| p.check().unwrap_err().to_string();
    let no_tune = CsvFitParams {
        tune: false,
        ..small_fit(TaskKind::Classification)
    };
    assert!(err(no_tune).contains("--no-tune"));
    let both_auto = CsvFitParams {
        weight_decay: WeightDecay::Auto,
        noise: NoiseChoice::Auto,
        ..small_fit(TaskKind::Regression)
    };
    assert!(err(both_auto).contains("--noise auto"));
    for w in [-1e-3, f64::NAN] {
        let bad = CsvFitParams {
            weight_decay: WeightDecay::Fixed(w),
            ..small_fit(TaskKind::Classification)
        };
        assert!(err(bad).contains("weight-decay"));
    }
    for (splits, samples, test_fraction) in [(1, 2, 0.25), (2, 0, 0.25), (2, 2, 1.0)] {
        let e = ClassifyBenchParams {
            splits,
            samples,
            test_fraction,
            ..Default::default()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("splits") || e.contains("samples") || e.contains("test-fraction"),
            "{e}"
        );
    }
}

fn swag(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swag"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run swag")
}

#[test]
fn the_command_prints_a_table_or_json_and_refuses_bad_flags() -> anyhow::Result<()> {
    let iris = iris();
    let data = iris.to_str().unwrap_or_default();
    let common = [
        "bench-classify",
        "--data",
        data,
        "--target",
        "class",
        "--quick",
        "--hidden",
        "8",
        "--epochs",
        "3",
    ];
    let out = swag(&common);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| logistic regression |"), "{stdout}");
    assert!(stdout.contains("weight decay auto"), "{stdout}");
    let out = swag(&[&common[..], &["--json", "--weight-decay", "0.01"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = json.as_array().map_or(0, |a| a.len());
    assert_eq!(rows, 2 * ClassifyMethod::ALL.len());
    assert_eq!(json[0]["weight_decay"], serde_json::json!(0.01));

    // Without tuning there is nothing to choose the decay on: 5e-4, as before `auto`.
    let out = swag(&[&common[..], &["--no-tune", "--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json[0]["weight_decay"], serde_json::json!(5e-4));
    assert_eq!(json[0]["scale"], serde_json::json!(0.5));
    let out = swag(&[&common[..], &["--weight-decay", "strong"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither `auto` nor a number"));
    let out = swag(&[&common[..], &["--logistic-c", "0"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("logistic-c"));
    let out = swag(&[
        "bench-classify",
        "--data",
        data,
        "--target",
        "petal_width",
        "--ignore",
        "class",
        "--quick",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // Widths as class labels: some occur once, too few to split.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("rows: a split needs 2"), "{err}");
    Ok(())
}
