//! Tuning for any model (`candle_swag::tune`), against values computed directly from the model
//! at the SWA mean: the scale-0 point of each grid, the noise search, the choice of the best
//! point, and the errors users meet.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_swag::predictive::batches;
use candle_swag::tune::{
    mean_squared_residual, noise_grid, tune_classification, tune_regression, ObservationNoise,
    SCALE_GRID,
};
use candle_swag::{
    BmaParams, Error, ParamSet, Predictive, Result, SampleParams, SwagParams, SwagPosterior,
};

struct Fixture {
    model: candle_nn::Linear,
    params: ParamSet,
    posterior: SwagPosterior,
    x: Tensor,
}

fn fixture(outputs: usize) -> Result<Fixture> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = candle_nn::linear(3, outputs, vb)?;
    let params = ParamSet::from_varmap(&varmap)?;
    let d = params.numel();
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 4,
            ..Default::default()
        }
        .check()?,
    )?;
    for k in 0..6 {
        let theta: Vec<f32> = (0..d)
            .map(|i| ((i * 5 + k * 3) % 7) as f32 / 7.0 - 0.4 + 0.2 * (k as f32).cos())
            .collect();
        params.write_flat(&Tensor::from_vec(theta, d, &device)?)?;
        posterior.collect(&params)?;
    }
    let xs: Vec<f32> = (0..20 * 3)
        .map(|i| ((i * 17) % 13) as f32 / 4.0 - 1.5)
        .collect();
    let x = Tensor::from_vec(xs, (20, 3), &device)?;
    Ok(Fixture {
        model,
        params,
        posterior,
        x,
    })
}

/// The predictive of each scale: the SWA mean at 0, 6 seeded samples otherwise.
fn at<'a>(f: &'a Fixture) -> impl FnMut(f64) -> Result<Predictive<'a>> + 'a {
    |scale| {
        if scale == 0.0 {
            Predictive::swa(&f.params, &f.posterior)
        } else {
            Predictive::swag(
                &f.params,
                &f.posterior,
                BmaParams {
                    sample: SampleParams {
                        scale,
                        ..Default::default()
                    },
                    samples: 6,
                    seed: 1,
                }
                .check()?,
            )
        }
    }
}

/// The model's outputs at the SWA mean, computed directly (weights restored after).
fn outputs_at_mean(f: &Fixture) -> Result<Vec<Vec<f64>>> {
    let saved = f.params.flatten()?;
    f.params.write_flat(&f.posterior.mean()?)?;
    let out = f
        .model
        .forward(&f.x)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    f.params.write_flat(&saved)?;
    Ok(out)
}

#[test]
fn regression_grid_at_scale_zero_is_the_swa_mean_with_its_residual_noise() -> Result<()> {
    let f = fixture(1)?;
    let mean: Vec<f64> = outputs_at_mean(&f)?.into_iter().map(|r| r[0]).collect();
    // Targets: the SWA-mean prediction plus a known residual pattern of variance 0.09.
    let targets: Vec<f64> = mean
        .iter()
        .enumerate()
        .map(|(i, m)| m + if i % 2 == 0 { 0.3 } else { -0.3 })
        .collect();
    assert!((mean_squared_residual(&mean, &targets)? - 0.09).abs() < 1e-12);
    let tuned = tune_regression(
        at(&f),
        &f.model,
        batches(&f.x, 7)?,
        &targets,
        ObservationNoise::Searched,
    )?;
    assert_eq!(tuned.grid.len(), SCALE_GRID.len());
    let zero = tuned.grid[0];
    assert_eq!(zero.scale, 0.0);
    // No epistemic variance at the mean: the best noise is the grid point nearest 0.09 in NLL,
    // and the NLL is the Gaussian one of those residuals, computed here by hand.
    let s2 = zero.noise_variance.expect("searched noise");
    let nll = |v: f64| 0.5 * (2.0 * std::f64::consts::PI * v).ln() + 0.09 / (2.0 * v);
    let best_on_grid = noise_grid()
        .into_iter()
        .min_by(|a, b| nll(*a).total_cmp(&nll(*b)))
        .expect("a grid");
    assert_eq!(s2, best_on_grid);
    assert!(
        (zero.nll - nll(s2)).abs() < 1e-9,
        "{} vs {}",
        zero.nll,
        nll(s2)
    );
    // The chosen point is the grid's lowest NLL, the first on ties.
    let lowest = tuned
        .grid
        .iter()
        .map(|p| p.nll)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(tuned.best.nll, lowest);
    let first = tuned
        .grid
        .iter()
        .position(|p| p.nll == lowest)
        .expect("a minimum");
    assert_eq!(tuned.best, tuned.grid[first]);
    Ok(())
}

#[test]
fn classification_grid_at_scale_zero_is_the_nll_of_the_swa_mean() -> Result<()> {
    let f = fixture(3)?;
    let logits = outputs_at_mean(&f)?;
    let labels: Vec<u32> = (0..20).map(|i| (i % 3) as u32).collect();
    let want = logits
        .iter()
        .zip(&labels)
        .map(|(z, &y)| {
            let max = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - z[y as usize]
        })
        .sum::<f64>()
        / 20.0;
    let tuned = tune_classification(at(&f), &f.model, batches(&f.x, 20)?, &labels)?;
    assert!(tuned.grid.iter().all(|p| p.noise_variance.is_none()));
    // f32 softmax against the f64 formula.
    assert!(
        (tuned.grid[0].nll - want).abs() < 1e-5,
        "{} vs {want}",
        tuned.grid[0].nll
    );
    Ok(())
}

#[test]
fn tuning_errors_name_the_labels_and_targets() -> Result<()> {
    let f = fixture(3)?;
    let name = |e: Error| match e {
        Error::InvalidArgument { name, .. } => name,
        other => panic!("{other:?}"),
    };
    let short = vec![0u32; 5];
    let err = tune_classification(at(&f), &f.model, batches(&f.x, 20)?, &short).unwrap_err();
    assert_eq!(name(err), "labels");
    let out_of_range = vec![3u32; 20];
    let err = tune_classification(at(&f), &f.model, batches(&f.x, 20)?, &out_of_range).unwrap_err();
    assert!(err.to_string().contains("label 3 at row 0"), "{err}");
    let g = fixture(1)?;
    let err = tune_regression(
        at(&g),
        &g.model,
        batches(&g.x, 20)?,
        &[1.0; 3],
        ObservationNoise::Searched,
    )
    .unwrap_err();
    assert_eq!(name(err), "targets");
    Ok(())
}
