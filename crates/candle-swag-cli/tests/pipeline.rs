//! The training pipeline: SGD-momentum against a hand computation, seeded reproducibility,
//! collection schedules, BMA invariants, and a fit → save → load → predict → report round trip.

use anyhow::Result;
mod common;
use common::invalid_name;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use candle_swag::metrics::UncertaintyDecomposition;
use candle_swag::optim::{SgdConfig, SgdMomentum, SgdParams};
use candle_swag::predictive::{batches, BmaParams, Noise, Predictive};
use candle_swag::swag::SampleParams;
use candle_swag_cli::data::{bundled, Dataset};
use candle_swag_cli::models::{Mlp, MlpParams};
use candle_swag_cli::train::run::{
    cross_validation_folds, fit_mlp, noise_selection, save_run, validation_split, FitConfig,
    FitParams, LoadedRun, NoiseModel, RunConfig,
};
use candle_swag_cli::train::{Collect, Objective, TrainConfig, TrainParams};
use candle_swag_report::report::ReportBuilder;

/// Two steps of torch's SGD(momentum 0.9, weight_decay 0.01, lr 0.1) on loss = a·θ, whose
/// gradient is the constant a = (0.5, 1), from θ0 = (1, −2), worked by hand:
/// step 1: g = a + 0.01·θ0 = (0.51, 0.98); v = g; θ1 = θ0 − 0.1·v = (0.949, −2.098)
/// step 2: g = a + 0.01·θ1 = (0.50949, 0.97902); v = 0.9·v + g = (0.96849, 1.86102);
///         θ2 = θ1 − 0.1·v = (0.852151, −2.284102)
fn check_two_steps(dtype: DType, tol: f64) {
    let dev = Device::Cpu;
    let theta = Var::from_tensor(
        &Tensor::new(&[1.0f64, -2.0], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let a = Tensor::new(&[0.5f64, 1.0], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let mut opt = SgdMomentum::new(
        vec![theta.clone()],
        SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
        }
        .check()
        .unwrap(),
    )
    .unwrap();
    let expected = [[0.949, -2.098], [0.852151, -2.284102]];
    for want in expected {
        let loss = theta.as_tensor().mul(&a).unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
        let got: Vec<f64> = theta.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tol, "{dtype:?}: got {got:?}, want {want:?}");
        }
    }
    let v: Vec<f64> = opt
        .velocity(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        (v[0] - 0.96849).abs() < tol && (v[1] - 1.86102).abs() < tol,
        "{v:?}"
    );
}

#[test]
fn sgd_momentum_matches_hand_computation_fused_f32() -> Result<()> {
    check_two_steps(DType::F32, 1e-6);
    Ok(())
}

#[test]
fn sgd_momentum_matches_hand_computation_tensor_ops_f64() -> Result<()> {
    // f64 takes the plain tensor-op path (the fused kernel is for contiguous f32 on CPU).
    check_two_steps(DType::F64, 1e-12);
    Ok(())
}

#[test]
fn sgd_learning_rate_is_settable() -> Result<()> {
    let dev = Device::Cpu;
    let theta = Var::new(&[1.0f32], &dev)?;
    let mut opt = SgdMomentum::new(
        vec![theta.clone()],
        SgdParams {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
        }
        .check()?,
    )?;
    opt.set_learning_rate(0.5);
    assert_eq!(opt.learning_rate(), 0.5);
    // loss = 2θ, gradient 2: θ = 1 − 0.5·2 = 0.
    opt.backward_step(&(theta.as_tensor() * 2.0)?.sum_all()?)?;
    assert_eq!(theta.to_vec1::<f32>()?, vec![0.0]);
    Ok(())
}

/// A small classification set: the first `n` digits training rows.
fn small_digits(n: usize) -> Dataset {
    let d = bundled::digits(&Device::Cpu).unwrap();
    d.train.select(&(0..n).collect::<Vec<_>>()).unwrap()
}

fn small_spec(epochs: usize, swa_start: usize, collect: Collect, seed: u64) -> FitConfig {
    FitParams {
        mlp: MlpParams {
            input_dim: 64,
            hidden: vec![16],
            output_dim: 10,
            batchnorm: false,
        },
        train: TrainParams {
            epochs,
            batch_size: 8,
            sgd: SgdParams {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            swa_start: Some(swa_start),
            collect,
            seed,
            progress: false,
            label: "test".into(),
        },
        swa_lr: 0.05,
        rank: 3,
        init_seed: seed,
    }
    .check()
    .unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}

#[test]
fn seeded_runs_are_reproducible_and_seeds_matter() -> Result<()> {
    let data = small_digits(40);
    let spec = small_spec(3, 1, Collect::EveryEpoch, 7);
    let a = fit_mlp(&data, Objective::CrossEntropy, &spec)?;
    let b = fit_mlp(&data, Objective::CrossEntropy, &spec)?;
    assert_eq!(flat(&a.sgd_weights), flat(&b.sgd_weights));
    assert_eq!(flat(&a.posterior.mean()?), flat(&b.posterior.mean()?));
    assert_eq!(a.history, b.history);
    let c = fit_mlp(
        &data,
        Objective::CrossEntropy,
        &small_spec(3, 1, Collect::EveryEpoch, 8),
    )?;
    assert_ne!(flat(&a.sgd_weights), flat(&c.sgd_weights));
    Ok(())
}

#[test]
fn initial_weights_follow_torch_linear_bounds() -> Result<()> {
    // With 0 epochs of training impossible, check the init through a fresh model: every weight
    // and bias of a layer with fan_in f lies in [-1/sqrt(f), 1/sqrt(f)] and the spread is not
    // degenerate.
    let varmap = candle_nn::VarMap::new();
    let cfg = MlpParams {
        input_dim: 64,
        hidden: vec![16],
        output_dim: 10,
        batchnorm: false,
    }
    .check()?;
    let _m = candle_swag_cli::models::Mlp::new(&cfg, &varmap, &Device::Cpu, 3)?;
    let data = varmap.data().lock().unwrap();
    for (name, fan_in) in [
        ("fc0.weight", 64.0f32),
        ("fc0.bias", 64.0),
        ("fc1.weight", 16.0),
        ("fc1.bias", 16.0),
    ] {
        let v = data[name].flatten_all()?.to_vec1::<f32>()?;
        let bound = 1.0 / fan_in.sqrt();
        assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            max > 0.5 * bound,
            "{name}: values do not spread over the bound"
        );
    }
    assert_eq!(data["fc0.weight"].dims(), &[16, 64]);
    Ok(())
}

#[test]
fn collection_schedules_collect_the_documented_number_of_snapshots() -> Result<()> {
    let data = small_digits(40); // 5 batches of 8 per epoch
    let every_epoch = fit_mlp(
        &data,
        Objective::CrossEntropy,
        &small_spec(4, 2, Collect::EveryEpoch, 0),
    )?;
    assert_eq!(every_epoch.history.collected, 2);
    assert_eq!(every_epoch.posterior.n_collected(), 2);
    assert_eq!(every_epoch.history.steps, 20);
    // From epoch 2: 10 steps, every 3rd -> steps 3, 6, 9.
    let every_steps = fit_mlp(
        &data,
        Objective::CrossEntropy,
        &small_spec(4, 2, Collect::EverySteps(3), 0),
    )?;
    assert_eq!(every_steps.posterior.n_collected(), 3);
    // The SWA mean of a single snapshot is the weights at that moment: collect at the last
    // epoch only, and the mean equals the last SGD iterate.
    let last_only = fit_mlp(
        &data,
        Objective::CrossEntropy,
        &small_spec(3, 2, Collect::EveryEpoch, 0),
    )?;
    assert_eq!(
        flat(&last_only.posterior.mean()?),
        flat(&last_only.sgd_weights)
    );
    Ok(())
}

/// SGD settings are checked when made, each bad value refused by name; a config read back
/// from JSON goes through the same check.
#[test]
fn bad_sgd_settings_are_refused_when_made() -> Result<()> {
    assert_eq!(
        invalid_name(
            SgdParams {
                lr: 0.0,
                momentum: 0.9,
                weight_decay: 0.0
            }
            .check()
        ),
        "lr"
    );
    assert_eq!(
        invalid_name(
            SgdParams {
                lr: f64::NAN,
                momentum: 0.9,
                weight_decay: 0.0
            }
            .check()
        ),
        "lr"
    );
    assert_eq!(
        invalid_name(
            SgdParams {
                lr: 0.1,
                momentum: 1.0,
                weight_decay: 0.0
            }
            .check()
        ),
        "momentum"
    );
    assert_eq!(
        invalid_name(
            SgdParams {
                lr: 0.1,
                momentum: -0.1,
                weight_decay: 0.0
            }
            .check()
        ),
        "momentum"
    );
    assert_eq!(
        invalid_name(
            SgdParams {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: -1e-4
            }
            .check()
        ),
        "weight_decay"
    );
    let ok = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
    }
    .check()?;
    let json = serde_json::to_string(&ok)?;
    assert_eq!(serde_json::from_str::<SgdConfig>(&json)?, ok);
    let bad = r#"{"lr": -1.0, "momentum": 0.9, "weight_decay": 0.0}"#;
    let err = serde_json::from_str::<SgdConfig>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lr"), "{err}");
    Ok(())
}

#[test]
fn bad_training_settings_are_refused_by_name() -> Result<()> {
    let data = small_digits(16);
    assert_eq!(
        invalid_name(
            MlpParams {
                input_dim: 4,
                hidden: vec![8, 0],
                output_dim: 2,
                batchnorm: false
            }
            .check()
        ),
        "hidden"
    );
    assert_eq!(
        invalid_name(
            MlpParams {
                input_dim: 0,
                hidden: vec![],
                output_dim: 2,
                batchnorm: false
            }
            .check()
        ),
        "hidden"
    );
    let sgd = SgdConfig::default();
    assert_eq!(
        invalid_name(
            TrainParams {
                epochs: 0,
                batch_size: 8,
                sgd: sgd.into(),
                ..Default::default()
            }
            .check()
        ),
        "epochs"
    );
    assert_eq!(
        invalid_name(
            TrainParams {
                epochs: 3,
                batch_size: 0,
                sgd: sgd.into(),
                ..Default::default()
            }
            .check()
        ),
        "batch_size"
    );
    let three = TrainParams {
        epochs: 3,
        batch_size: 8,
        sgd: sgd.into(),
        ..Default::default()
    };
    assert_eq!(
        invalid_name(
            TrainParams {
                swa_start: Some(3),
                ..three.clone()
            }
            .check()
        ),
        "swa_start"
    );
    assert_eq!(
        invalid_name(
            TrainParams {
                swa_start: Some(1),
                collect: Collect::EverySteps(0),
                ..three.clone()
            }
            .check()
        ),
        "collect"
    );
    let three = three.check()?;
    // A config read back from a run directory goes through the same checks.
    let mut json = serde_json::to_value(&three)?;
    json["batch_size"] = 0.into();
    let err = serde_json::from_value::<TrainConfig>(json).unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
    let mut spec = small_spec(3, 1, Collect::EveryEpoch, 0);
    spec = FitParams {
        mlp: MlpParams {
            input_dim: 5,
            hidden: vec![16],
            output_dim: 10,
            batchnorm: false,
        },
        ..spec.clone().into()
    }
    .check()?;
    assert!(fit_mlp(&data, Objective::CrossEntropy, &spec)
        .unwrap_err()
        .to_string()
        .contains("input_dim"));
    Ok(())
}

/// Classification BMA of `predictive` over every row of `x` (batches of 7 rows, so that the
/// batching itself is exercised).
fn classify(model: &Mlp, predictive: Predictive, x: &Tensor) -> UncertaintyDecomposition {
    predictive
        .classify(model, batches(x, 7).unwrap())
        .unwrap()
        .to_host()
        .unwrap()
}

#[test]
fn bma_invariants() -> Result<()> {
    let data = small_digits(48);
    let f = fit_mlp(
        &data,
        Objective::CrossEntropy,
        &small_spec(4, 1, Collect::EveryEpoch, 1),
    )?;
    let x = &data.features;
    // Scale 0 samples are the SWA mean: the BMA equals the SWA prediction.
    let zero = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.0,
                ..Default::default()
            },
            samples: 3,
            seed: 0,
        }
        .check()?,
    )?;
    let a = classify(&f.model, zero, x);
    let b = classify(&f.model, Predictive::swa(&f.params, &f.posterior)?, x);
    for (p, q) in a.mean_probs.iter().zip(&b.mean_probs) {
        assert!((p - q).abs() < 1e-6);
    }
    assert!(a.mutual_information.iter().all(|&m| m < 1e-6));
    // Real samples: mutual information = entropy − expected entropy ≥ 0, and the same seed gives
    // the same BMA.
    let swag = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: 5,
            seed: 3,
        }
        .check()?,
    )?;
    let s1 = classify(&f.model, swag.clone(), x);
    let s2 = classify(&f.model, swag, x);
    assert_eq!(s1, s2);
    for i in 0..s1.n_rows() {
        let mi = s1.predictive_entropy[i] - s1.expected_entropy[i];
        assert!((mi.max(0.0) - s1.mutual_information[i]).abs() < 1e-6);
        // Concavity of entropy, tested on the unclamped difference (f32 BMA: rounding only).
        assert!(mi >= -1e-6, "row {i}: H(mean) − mean H = {mi}");
    }
    // The same BMA computed on the host from the per-sample probabilities (f64).
    let mut per_sample: Vec<f32> = Vec::new();
    Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: 5,
            seed: 3,
        }
        .check()?,
    )?
    .for_each_output(&f.model, batches(x, 48)?, |_, _, logits| {
        let p = candle_nn::ops::softmax_last_dim(logits)?;
        per_sample.extend(p.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })?;
    let host = candle_swag::metrics::decompose_uncertainty(&per_sample, 5, 10)?;
    for (got, want) in [
        (&s1.mean_probs, &host.mean_probs),
        (&s1.predictive_entropy, &host.predictive_entropy),
        (&s1.expected_entropy, &host.expected_entropy),
        (&s1.variation_ratio, &host.variation_ratio),
    ] {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
    // After a prediction the model holds the weights it had before (the last SGD iterate).
    assert_eq!(flat(&f.params.flatten()?), flat(&f.sgd_weights));
    Ok(())
}

#[test]
fn regression_bma_point_weights_have_no_epistemic_variance() -> Result<()> {
    let d = bundled::diabetes(&Device::Cpu)?;
    let train = d.train.select(&(0..64).collect::<Vec<_>>())?;
    let mut spec = small_spec(3, 1, Collect::EveryEpoch, 0);
    spec = FitParams {
        mlp: MlpParams {
            input_dim: 10,
            hidden: vec![8],
            output_dim: 1,
            batchnorm: false,
        },
        ..spec.clone().into()
    }
    .check()?;
    spec = FitParams {
        train: TrainParams {
            epochs: 3,
            batch_size: 8,
            sgd: SgdParams {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            swa_start: Some(1),
            collect: Collect::EveryEpoch,
            progress: false,
            ..Default::default()
        },
        ..spec.clone().into()
    }
    .check()?;
    let f = fit_mlp(&train, Objective::MeanSquaredError, &spec)?;
    let p = Predictive::point(&f.params, &f.sgd_weights)?
        .regress(
            &f.model,
            batches(&train.features, 10)?,
            Noise::Homoscedastic { variance: 0.25 },
        )?
        .to_host()?;
    assert!(p.var_epistemic.iter().all(|&v| v == 0.0));
    assert!(p.std().iter().all(|&s| (s - 0.5).abs() < 1e-7));
    // The forward pass by hand equals the BMA mean of the point weights.
    let out: Vec<f32> = candle_core::ModuleT::forward_t(&f.model, &train.features, false)?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(out.len(), p.mean.len());
    for (a, b) in out.iter().zip(&p.mean) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
    Ok(())
}

#[test]
fn validation_split_is_seeded_disjoint_and_complete() -> Result<()> {
    let (a, b) = validation_split(10, 0.2, 5)?;
    assert_eq!(b.len(), 2);
    let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert_eq!(validation_split(10, 0.2, 5)?, (a, b));
    assert!(validation_split(10, 1.0, 5).is_err());
    Ok(())
}

/// Every row is validated by exactly one fold, each fold's fit rows are the rest, fold sizes
/// differ by at most one, and fold 0 is the tuning split of `validation_split(n, 1/k, seed)`
/// (so `--noise auto` tunes its choice where a fixed noise model tunes).
#[test]
fn cross_validation_folds_partition_the_rows() -> Result<()> {
    for (n, k, seed) in [(10, 5, 5), (23, 5, 1), (7, 2, 9), (442, 5, 0)] {
        let folds = cross_validation_folds(n, k, seed)?;
        assert_eq!(folds.len(), k);
        let mut validated: Vec<usize> = folds.iter().flat_map(|f| f.1.clone()).collect();
        validated.sort_unstable();
        assert_eq!(validated, (0..n).collect::<Vec<_>>(), "n {n}, k {k}");
        for (fit, val) in &folds {
            let mut all: Vec<usize> = fit.iter().chain(val).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            assert!(
                val.len() == n / k || val.len() == n / k + 1,
                "{} rows",
                val.len()
            );
            assert!(fit.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(folds[0], validation_split(n, 1.0 / k as f64, seed)?);
    }
    assert_eq!(
        cross_validation_folds(23, 5, 1)?,
        cross_validation_folds(23, 5, 1)?
    );
    assert_ne!(
        cross_validation_folds(23, 5, 1)?,
        cross_validation_folds(23, 5, 2)?
    );
    let err = cross_validation_folds(4, 5, 0).unwrap_err().to_string();
    assert!(
        err.contains("`rows`") && err.contains("at least 5"),
        "{err}"
    );
    assert!(cross_validation_folds(10, 1, 0).is_err());
    Ok(())
}

/// The noise comparison by hand: NLL differences (homo − hetero) 0.5, 0.5, −0.5, 1.5 have mean
/// 0.5 and sample variance ((0 + 0 + 1 + 1) / 3) = 2/3, so standard error sqrt(2/3 / 4) =
/// 0.408 < 0.5: heteroscedastic. Halving every difference halves both (0.25 against 0.204):
/// still heteroscedastic; differences 0.5, 0.5, −0.5, 0.5 (mean 0.25, s.e. 0.25) are not more
/// than one standard error: homoscedastic.
#[test]
fn noise_selection_keeps_heteroscedastic_only_beyond_one_standard_error() -> Result<()> {
    let homo = [1.0, 2.0, 3.0, 4.0];
    let sel = noise_selection(&homo, &[0.5, 1.5, 3.5, 2.5], 4)?;
    assert!((sel.homoscedastic_nll - 2.5).abs() < 1e-12);
    assert!((sel.heteroscedastic_nll - 2.0).abs() < 1e-12);
    assert!((sel.difference_standard_error - (2.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
    assert_eq!(sel.folds, 4);
    assert_eq!(sel.chosen(), NoiseModel::Heteroscedastic);
    let sel = noise_selection(&homo, &[0.75, 1.75, 3.25, 3.25], 4)?;
    assert!((sel.difference_standard_error - (1.0f64 / 6.0 / 4.0).sqrt()).abs() < 1e-12);
    assert_eq!(sel.chosen(), NoiseModel::Heteroscedastic);
    let sel = noise_selection(&homo, &[0.5, 1.5, 3.5, 3.5], 4)?;
    assert!((sel.difference_standard_error - 0.25).abs() < 1e-12);
    assert_eq!(sel.chosen(), NoiseModel::Homoscedastic);
    // Equal models: homoscedastic.
    assert_eq!(
        noise_selection(&homo, &homo, 4)?.chosen(),
        NoiseModel::Homoscedastic
    );
    let err = noise_selection(&homo, &[1.0, 2.0, 3.0], 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 homoscedastic and 3 heteroscedastic"),
        "{err}"
    );
    let err = noise_selection(&homo, &[1.0, f64::NAN, 3.0, 4.0], 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("heteroscedastic model's validation NLL of row 1"),
        "{err}"
    );
    Ok(())
}

#[test]
fn fit_save_load_predict_report_round_trip() -> Result<()> {
    let prepared = bundled::digits(&Device::Cpu)?;
    let train = prepared.train.select(&(0..64).collect::<Vec<_>>())?;
    let test = prepared.test.select(&(0..32).collect::<Vec<_>>())?;
    let spec = small_spec(3, 1, Collect::EveryEpoch, 2);
    let fitted = fit_mlp(&train, Objective::CrossEntropy, &spec)?;
    let swag = |params, posterior| {
        Predictive::swag(
            params,
            posterior,
            BmaParams {
                samples: 4,
                seed: 9,
                ..Default::default()
            }
            .check()
            .expect("a valid config"),
        )
        .unwrap()
    };
    let before = classify(
        &fitted.model,
        swag(&fitted.params, &fitted.posterior),
        &test.features,
    );
    let config = RunConfig {
        format_version: candle_swag_cli::train::run::RUN_FORMAT_VERSION,
        task: candle_swag_cli::data::TaskKind::Classification,
        target: "label".into(),
        feature_names: prepared.feature_names.clone(),
        feature_columns: Vec::new(),
        class_labels: prepared.class_labels.clone(),
        feature_scaler: prepared.feature_scaler.clone(),
        target_scaler: None,
        fit: spec,
        noise_variance: None,
        scale: 0.5,
        tuned: None,
        history: fitted.history.clone(),
        calibration: None,
        noise: Default::default(),
        noise_selection: None,
        validation_rows: None,
        weight_decay_selection: None,
    };
    let dir = tempfile::tempdir()?;
    let run_dir = dir.path().join("run");
    save_run(&run_dir, &config, &fitted, &train.features)?;
    let loaded = LoadedRun::load(&run_dir, &Device::Cpu)?;
    assert_eq!(loaded.config, config);
    assert_eq!(flat(&loaded.params.flatten()?), flat(&fitted.sgd_weights));
    let after = classify(
        &loaded.model,
        swag(&loaded.params, &loaded.posterior),
        &test.features,
    );
    assert_eq!(before, after);
    let labels: Vec<u32> = test.targets.to_vec1()?;
    let report_dir = dir.path().join("report");
    ReportBuilder::new("digits subset")
        .classification_method("SWAG", &after.mean_probs, after.n_classes, &labels)?
        .write(&report_dir)?;
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("metrics.json"))?)?;
    let acc = labels
        .iter()
        .enumerate()
        .filter(|(i, &y)| {
            let row = &after.mean_probs[i * 10..(i + 1) * 10];
            let best = (0..10).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            best == y as usize
        })
        .count() as f64
        / labels.len() as f64;
    assert!((metrics["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
    // A corrupted config is refused with the file named.
    std::fs::write(run_dir.join("config.json"), b"{")?;
    let err = LoadedRun::load(&run_dir, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");
    Ok(())
}

#[test]
fn batchnorm_model_is_refreshed_before_each_bma_forward() -> Result<()> {
    let data = small_digits(40);
    let mut spec = small_spec(3, 1, Collect::EveryEpoch, 4);
    spec = FitParams {
        mlp: MlpParams {
            batchnorm: true,
            ..spec.mlp().clone().into()
        },
        ..spec.clone().into()
    }
    .check()?;
    // One refresh batch holding every row.
    spec = FitParams {
        train: TrainParams {
            epochs: 3,
            batch_size: 40,
            sgd: spec.train().sgd().into(),
            swa_start: Some(1),
            collect: Collect::EveryEpoch,
            seed: 4,
            progress: false,
            ..Default::default()
        },
        ..spec.clone().into()
    }
    .check()?;
    let f = fit_mlp(&data, Objective::CrossEntropy, &spec)?;
    // BatchNorm buffers are not SWAG parameters.
    assert!(f
        .params
        .layout()
        .entries()
        .iter()
        .all(|e| !e.name.contains("running")));
    assert!(f.params.layout().get("bn0.weight").is_some());
    let refresh = f.refresh(&data.features)?.unwrap();
    let swa = Predictive::swa(&f.params, &f.posterior)?
        .with_refresh(refresh)
        .leave_swa_mean()?;
    classify(&f.model, swa, &data.features);
    // One refresh batch holding every row: the running mean is the column mean of the first
    // layer's pre-activations under the SWA mean weights, computed here by hand.
    let w: Vec<Vec<f32>> = f.varmap.data().lock().unwrap()["fc0.weight"].to_vec2()?;
    let b: Vec<f32> = f.varmap.data().lock().unwrap()["fc0.bias"].to_vec1()?;
    let x: Vec<Vec<f32>> = data.features.to_vec2()?;
    let bn = &f.model.batchnorm_stats()?[0];
    let running: Vec<f32> = bn.running_mean().to_vec1()?;
    for j in 0..16 {
        let mean = x
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&w[j])
                    .map(|(a, c)| (a * c) as f64)
                    .sum::<f64>()
                    + b[j] as f64
            })
            .sum::<f64>()
            / 40.0;
        assert!(
            (running[j] as f64 - mean).abs() < 1e-4,
            "unit {j}: {} vs {mean}",
            running[j]
        );
    }
    Ok(())
}
