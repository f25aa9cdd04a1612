//! The UCI regression protocol (`swag bench-uci`): settings, the table's arithmetic, and the
//! protocol itself on synthetic data whose noise grows with the input.

use anyhow::Result;
mod common;
use common::invalid_name;

use candle_core::Device;
use candle_swag_cli::data::TaskKind;
use candle_swag_cli::data::{FeatureColumn, Split, TabularData, Targets};
use candle_swag_cli::train::method::Method;
use candle_swag_cli::train::pipeline::{CsvFitParams, NoiseChoice};
use candle_swag_cli::train::run::NoiseModel;
use candle_swag_cli::train::uci::{
    run_uci, run_uci_fit, uci_fit_table, uci_table, GridPoint, UciGrid, UciNoise, UciOutcome,
    UciParams,
};

#[test]
fn bad_settings_are_refused_by_name() -> Result<()> {
    assert_eq!(
        invalid_name(
            UciParams {
                splits: 1,
                ..Default::default()
            }
            .check()
        ),
        "splits"
    );
    let ok = UciParams {
        splits: 2,
        ..Default::default()
    };
    ok.check()?;
    let with = |f: &dyn Fn(&mut UciParams)| {
        let mut p = ok.clone();
        f(&mut p);
        p.check()
    };
    assert_eq!(invalid_name(with(&|p| p.samples = 0)), "samples");
    let grid = |epochs: Vec<usize>, lr: Vec<f64>| UciGrid {
        epochs,
        lr,
        weight_decay: vec![1e-4],
    };
    assert_eq!(
        invalid_name(with(&|p| p.grid = grid(vec![], vec![0.01]))),
        "grid"
    );
    assert_eq!(
        invalid_name(with(&|p| p.grid = grid(vec![1], vec![0.01]))),
        "grid"
    );
    assert_eq!(
        invalid_name(with(&|p| p.grid = grid(vec![10], vec![-0.01]))),
        "lr"
    );
    Ok(())
}

fn outcome(split: usize, method: Method, noise: UciNoise, test_ll: f64, rmse: f64) -> UciOutcome {
    UciOutcome {
        split,
        method,
        noise,
        test_ll,
        rmse,
        conformal_coverage: 0.9 + 0.1 * (split as f64 - 1.0),
        gaussian_coverage: 0.8,
        chosen: GridPoint {
            epochs: 10,
            lr: 0.01,
            weight_decay: 1e-4,
        },
        scale: 0.0,
        noise_variance: None,
        validation_nll: 0.0,
    }
}

/// Mean ± standard error with the population std: LL −1, −2, −3 gives −2 ± sqrt(2/3)/sqrt(3)
/// = 0.471; RMSE 1, 1, 4 gives 2 ± sqrt(2)/sqrt(3) = 0.816; coverages are plain means
/// (0.8, 0.9, 1.0 → 0.9).
#[test]
fn table_reports_mean_and_standard_error_over_splits() -> Result<()> {
    let rows: Vec<UciOutcome> = [(-1.0, 1.0), (-2.0, 1.0), (-3.0, 4.0)]
        .into_iter()
        .enumerate()
        .map(|(s, (ll, rmse))| outcome(s, Method::Swag, UciNoise::Heteroscedastic, ll, rmse))
        .collect();
    let table = uci_table(&rows);
    assert!(table.contains("test LL (3 splits)"), "{table}");
    assert!(
        table.contains("| SWAG | hetero | -2.000 ± 0.471 | 2.000 ± 0.816 | 0.900 / 0.800 |"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "header, rule, one row: {table}");
    Ok(())
}

/// A table `x → y = x + (0.05 + 0.5|x|)·ε` (ε a fixed pseudo-random normal sequence): the
/// noise grows tenfold across the inputs, so a network that predicts its own variance must
/// beat one noise level for every row.
fn heteroscedastic_table(n: usize) -> TabularData {
    let mut features = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..n {
        let x = 4.0 * uniform() - 2.0;
        // Box–Muller.
        let (u1, u2) = (uniform().max(1e-12), uniform());
        let eps = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        features.push(x);
        targets.push(x + (0.05 + 0.5 * x.abs()) * eps);
    }
    TabularData {
        columns: vec![FeatureColumn::Numeric { name: "x".into() }],
        feature_names: vec!["x".into()],
        features,
        targets: Targets::Values(targets),
        splits: vec![Split::Train; n],
    }
}

#[test]
fn protocol_scores_every_method_and_noise_model_per_split() -> Result<()> {
    let data = heteroscedastic_table(400);
    let grid = UciGrid {
        epochs: vec![60],
        lr: vec![0.01],
        weight_decay: vec![1e-4],
    };
    let config = UciParams {
        splits: 2,
        seed: 7,
        samples: 8,
        grid,
        ..Default::default()
    }
    .check()?;
    let outcomes = run_uci(&data, &config, &Device::Cpu)?;
    assert_eq!(outcomes.len(), 2 * 2 * 4, "splits × noise models × methods");
    for o in &outcomes {
        assert!(o.test_ll.is_finite() && o.rmse.is_finite(), "{o:?}");
        assert!((0.0..=1.0).contains(&o.conformal_coverage), "{o:?}");
        assert!((0.0..=1.0).contains(&o.gaussian_coverage), "{o:?}");
        // SGD and SWA never sample; homoscedastic methods carry a chosen noise variance.
        if matches!(o.method, Method::Sgd | Method::Swa) {
            assert_eq!(o.scale, 0.0);
        }
        assert_eq!(
            o.noise_variance.is_some(),
            o.noise == UciNoise::Homoscedastic,
            "{o:?}"
        );
    }
    let mean_ll = |method, noise| {
        let v: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.method == method && o.noise == noise)
            .map(|o| o.test_ll)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let hetero = mean_ll(Method::Swag, UciNoise::Heteroscedastic);
    let homo = mean_ll(Method::Swag, UciNoise::Homoscedastic);
    assert!(
        hetero > homo + 0.1,
        "per-row variance should pay off here: hetero {hetero}, homo {homo}"
    );
    Ok(())
}

#[test]
fn classification_targets_are_refused() -> Result<()> {
    let mut data = heteroscedastic_table(50);
    data.targets = Targets::Classes {
        indices: vec![0; 50],
        labels: vec!["a".into()],
    };
    let config = UciParams {
        splits: 2,
        seed: 0,
        ..Default::default()
    }
    .check()?;
    assert_eq!(invalid_name(run_uci(&data, &config, &Device::Cpu)), "task");
    Ok(())
}

/// `swag bench-uci --fit`: `swag fit`'s own pipeline per split. Tuned homoscedastic SWAG
/// covers near 90% of the test rows; `--noise auto` prefers the per-row variance on data whose
/// noise grows tenfold, and untuned (scale 0.5, training-residual noise) it records scale 0.5.
#[test]
fn fit_recipe_scores_swag_fit_per_split() -> Result<()> {
    let data = heteroscedastic_table(300);
    let config = UciParams {
        splits: 2,
        seed: 3,
        samples: 8,
        ..Default::default()
    }
    .check()?;
    let mut fit = CsvFitParams::new("unused.csv", "y", TaskKind::Regression);
    fit.hidden = vec![16];
    fit.epochs = 30;
    fit.rank = 5;
    fit.samples = 8;
    fit.progress = false;
    assert_eq!(fit.noise, NoiseChoice::Auto, "the default when tuning");
    fit.noise = NoiseChoice::Fixed(NoiseModel::Homoscedastic);
    let homo = run_uci_fit(&data, &config, &fit, &Device::Cpu)?;
    assert_eq!(homo.len(), 2);
    for o in &homo {
        assert_eq!(o.noise, NoiseModel::Homoscedastic);
        assert!(o.noise_variance.is_some_and(|v| v > 0.0), "{o:?}");
        assert!(
            (0.75..=1.0).contains(&o.gaussian_coverage),
            "tuned intervals should cover near 90%: {o:?}"
        );
    }
    let table = uci_fit_table("tuned", &homo);
    assert!(table.contains("| tuned | 2/0 |"), "{table}");

    // The beta-NLL's variance head learns in proportion to the variance itself, so it is given
    // more epochs than the mean-only model needs.
    fit.noise = NoiseChoice::Auto;
    fit.epochs = 80;
    let auto = run_uci_fit(&data, &config, &fit, &Device::Cpu)?;
    fit.epochs = 30;
    assert!(
        auto.iter()
            .all(|o| o.noise == NoiseModel::Heteroscedastic && o.noise_variance.is_none()),
        "the per-row variance should win on validation here: {auto:?}"
    );

    fit.noise = NoiseChoice::Fixed(NoiseModel::Homoscedastic);
    fit.tune = false;
    let untuned = run_uci_fit(&data, &config, &fit, &Device::Cpu)?;
    assert!(untuned.iter().all(|o| o.scale == 0.5), "{untuned:?}");
    // Auto needs the validation split that --no-tune skips.
    fit.noise = NoiseChoice::Auto;
    assert_eq!(
        invalid_name(run_uci_fit(&data, &config, &fit, &Device::Cpu)),
        "noise"
    );
    Ok(())
}
