//! The predictive API against slow f64 computations from the per-sample outputs: classification
//! BMA and its uncertainty split, homoscedastic and heteroscedastic regression mixtures, batching,
//! the weights after a prediction, and the errors users meet.

use anyhow::Result;
use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::func_t;
use candle_nn::{VarBuilder, VarMap};
use candle_swag::predictive::batches;
use candle_swag::{
    BatchNormRefresh, BatchNormStats, BmaParams, Error, MultiSwag, Noise, ParamSet, Predictive,
    SampleParams, SwagParams, SwagPosterior, VarianceLink,
};

/// A linear model `[n, 3] → [n, k]` with a posterior collected from 6 perturbed snapshots.
struct Fixture {
    varmap: VarMap,
    model: candle_nn::Linear,
    params: ParamSet,
    posterior: SwagPosterior,
    x: Tensor,
}

fn fixture(outputs: usize) -> Fixture {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = candle_nn::linear(
        3,
        outputs,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )
    .unwrap();
    let params = ParamSet::from_varmap(&varmap).unwrap();
    let d = params.numel();
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 4,
            ..Default::default()
        }
        .check()
        .expect("a valid config"),
    )
    .unwrap();
    for k in 0..6 {
        let theta: Vec<f32> = (0..d)
            .map(|i| ((i * 13 + k * 7) % 11) as f32 / 11.0 - 0.5 + 0.3 * (k as f32).sin())
            .collect();
        params
            .write_flat(&Tensor::from_vec(theta, d, &device).unwrap())
            .unwrap();
        posterior.collect(&params).unwrap();
    }
    let xs: Vec<f32> = (0..17 * 3)
        .map(|i| ((i * 29) % 23) as f32 / 7.0 - 1.5)
        .collect();
    let x = Tensor::from_vec(xs, (17, 3), &device).unwrap();
    Fixture {
        varmap,
        model,
        params,
        posterior,
        x,
    }
}

/// The model's raw outputs for every sample, in f64: `[S][n][k]`.
fn per_sample_outputs(f: &Fixture, p: &Predictive) -> Vec<Vec<Vec<f64>>> {
    let mut all: Vec<Vec<Vec<f64>>> = Vec::new();
    p.for_each_output(&f.model, batches(&f.x, 100).unwrap(), |s, _, out| {
        assert_eq!(s, all.len());
        let rows: Vec<Vec<f32>> = out.to_vec2()?;
        all.push(
            rows.into_iter()
                .map(|r| r.into_iter().map(f64::from).collect())
                .collect(),
        );
        Ok(())
    })
    .unwrap();
    all
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn classification_averages_probabilities_and_splits_the_entropy() -> Result<()> {
    let f = fixture(4);
    let p = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 1.0,
                ..Default::default()
            },
            samples: 9,
            seed: 5,
        }
        .check()?,
    )?;
    let logits = per_sample_outputs(&f, &p);
    // Uneven batches (17 rows in batches of 5): the same numbers as one pass.
    let out = p.classify(&f.model, batches(&f.x, 5)?)?;
    assert_eq!(out.probs.dims(), &[17, 4]);
    assert_eq!(out.n_samples, 9);
    let (probs, h, eh, mi, vr) = (
        host(&out.probs),
        host(&out.predictive_entropy),
        host(&out.expected_entropy),
        host(&out.mutual_information),
        host(&out.variation_ratio),
    );
    for n in 0..17 {
        let softmax = |z: &[f64]| {
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<_>>()
        };
        let ps: Vec<Vec<f64>> = logits.iter().map(|s| softmax(&s[n])).collect();
        let entropy = |p: &[f64]| {
            -p.iter()
                .filter(|&&v| v > 0.0)
                .map(|v| v * v.ln())
                .sum::<f64>()
        };
        let mean: Vec<f64> = (0..4)
            .map(|c| ps.iter().map(|p| p[c]).sum::<f64>() / 9.0)
            .collect();
        let want_h = entropy(&mean);
        let want_eh = ps.iter().map(|p| entropy(p)).sum::<f64>() / 9.0;
        for c in 0..4 {
            close(probs[n * 4 + c], mean[c], 1e-6, "probs");
        }
        close(h[n], want_h, 1e-5, "predictive entropy");
        close(eh[n], want_eh, 1e-5, "expected entropy");
        close(
            mi[n],
            (want_h - want_eh).max(0.0),
            2e-5,
            "mutual information",
        );
        let argmax = |p: &[f64]| (0..4).fold(0, |b, c| if p[c] > p[b] { c } else { b });
        let mut votes = [0usize; 4];
        ps.iter().for_each(|p| votes[argmax(p)] += 1);
        close(
            vr[n],
            1.0 - *votes.iter().max().unwrap() as f64 / 9.0,
            1e-6,
            "variation ratio",
        );
    }
    Ok(())
}

#[test]
fn homoscedastic_regression_is_the_mixture_of_the_sampled_means() -> Result<()> {
    let f = fixture(1);
    let p = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: 7,
            seed: 1,
        }
        .check()?,
    )?;
    let outs = per_sample_outputs(&f, &p);
    let r = p
        .regress(
            &f.model,
            batches(&f.x, 4)?,
            Noise::Homoscedastic { variance: 0.3 },
        )?
        .to_host()?;
    for n in 0..17 {
        let mu: Vec<f64> = outs.iter().map(|s| s[n][0]).collect();
        let mean = mu.iter().sum::<f64>() / 7.0;
        let var = mu.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / 7.0;
        close(r.mean[n], mean, 1e-6, "mean");
        close(r.var_epistemic[n], var, 1e-5, "epistemic");
        close(r.var_aleatoric[n], 0.3, 1e-7, "aleatoric");
        close(r.std()[n], (var + 0.3).sqrt(), 1e-5, "std");
    }
    Ok(())
}

#[test]
fn heteroscedastic_regression_mixes_means_and_variances() -> Result<()> {
    let f = fixture(2);
    let p = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 1.0,
                ..Default::default()
            },
            samples: 6,
            seed: 2,
        }
        .check()?,
    )?;
    let outs = per_sample_outputs(&f, &p);
    for (link, to_var) in [
        (
            VarianceLink::LogVariance,
            (|s: f64| s.exp()) as fn(f64) -> f64,
        ),
        (VarianceLink::Softplus { min_variance: 1e-3 }, |s: f64| {
            (1.0 + s.exp()).ln() + 1e-3
        }),
    ] {
        let r = p.regress(&f.model, batches(&f.x, 6)?, Noise::Heteroscedastic(link))?;
        assert_eq!(r.mean.dims(), &[17]);
        let r = r.to_host()?;
        for n in 0..17 {
            let mu: Vec<f64> = outs.iter().map(|s| s[n][0]).collect();
            let mean = mu.iter().sum::<f64>() / 6.0;
            let epi = mu.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / 6.0;
            let alea = outs.iter().map(|s| to_var(s[n][1])).sum::<f64>() / 6.0;
            close(r.mean[n], mean, 1e-6, "mean");
            close(r.var_epistemic[n], epi, 1e-5, "epistemic");
            close(r.var_aleatoric[n], alea, 1e-5, "aleatoric");
        }
    }
    // A model with one output cannot be heteroscedastic.
    let g = fixture(1);
    let q = Predictive::swa(&g.params, &g.posterior)?;
    let err = q
        .regress(
            &g.model,
            batches(&g.x, 6)?,
            Noise::Heteroscedastic(VarianceLink::LogVariance),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { name, .. } if name == "outputs"),
        "{err}"
    );
    Ok(())
}

#[test]
fn softplus_link_is_stable_for_large_inputs() -> Result<()> {
    let raw = Tensor::new(&[-100f32, -1.0, 0.0, 1.0, 100.0], &Device::Cpu)?;
    let v = VarianceLink::Softplus { min_variance: 0.01 }
        .variance(&raw)?
        .to_vec1::<f32>()?;
    let want = [
        0.01,
        (1.0 + (-1f64).exp()).ln() + 0.01,
        2f64.ln() + 0.01,
        (1.0 + 1f64.exp()).ln() + 0.01,
        100.01,
    ];
    for (g, w) in v.iter().zip(want) {
        close(f64::from(*g), w, 1e-6, "softplus");
    }
    Ok(())
}

#[test]
fn weights_are_restored_after_a_prediction_even_on_error() -> Result<()> {
    let f = fixture(3);
    let before = f.params.flatten()?.to_vec1::<f32>()?;
    let p = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: 4,
            seed: 0,
        }
        .check()?,
    )?;
    p.classify(&f.model, batches(&f.x, 8)?)?;
    assert_eq!(f.params.flatten()?.to_vec1::<f32>()?, before);

    // A model that fails on its third call.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let failing = func_t(|x: &Tensor, _| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == 3 {
            Err(candle_core::Error::Msg("boom".into()))
        } else {
            f.model.forward(x)
        }
    });
    let err = p.classify(&failing, batches(&f.x, 8)?).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(f.params.flatten()?.to_vec1::<f32>()?, before);

    // Asked for, the SWA mean stays in the model.
    let p = p.leave_swa_mean()?;
    p.classify(&f.model, batches(&f.x, 8)?)?;
    assert_eq!(
        f.params.flatten()?.to_vec1::<f32>()?,
        f.posterior.mean()?.to_vec1::<f32>()?
    );
    let _ = &f.varmap;
    Ok(())
}

#[test]
fn batchnorm_statistics_are_refreshed_per_sample_and_restored_after() -> Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let fc = candle_nn::linear(3, 4, vb.pp("fc"))?;
    let bn = candle_nn::batch_norm(4, 1e-5, vb.pp("bn"))?;
    let model = func_t(|x: &Tensor, train: bool| bn.forward_t(&fc.forward(x)?, train));
    let params = ParamSet::from_varmap(&varmap)?;
    assert!(params
        .layout()
        .entries()
        .iter()
        .all(|e| !e.name.contains("running")));
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?,
    )?;
    let x = Tensor::new(
        &[
            [1f32, 2.0, 3.0],
            [0.5, -1.0, 2.0],
            [3.0, 0.0, -2.0],
            [-1.0, 1.0, 1.0],
        ],
        &device,
    )?;
    for k in 0..3 {
        let theta: Vec<f32> = (0..params.numel())
            .map(|i| ((i + k) % 5) as f32 / 5.0)
            .collect();
        params.write_flat(&Tensor::from_vec(theta, params.numel(), &device)?)?;
        posterior.collect(&params)?;
    }
    model.forward_t(&x, true)?; // some training-time statistics
    let stats_before = bn.running_mean().to_vec1::<f32>()?;
    let refresh = BatchNormRefresh::new(BatchNormStats::from_varmap(&varmap)?, batches(&x, 4)?);
    // With one refresh batch holding every row, the eval-mode output of each sample is the
    // normalisation of that sample's pre-activations: per column, its mean is the sampled bias.
    let p = Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 1.0,
                ..Default::default()
            },
            samples: 3,
            seed: 0,
        }
        .check()?,
    )?
    .with_refresh(refresh);
    p.for_each_output(&model, batches(&x, 4)?, |_, _, out| {
        let cols = out.t()?.to_vec2::<f32>()?;
        let bias = varmap.data().lock().unwrap()["bn.bias"]
            .to_vec1::<f32>()
            .unwrap();
        for (col, b) in cols.iter().zip(bias) {
            let m = col.iter().sum::<f32>() / 4.0;
            assert!(
                (m - b).abs() < 1e-4,
                "column mean {m}, bias {b} after the refresh"
            );
        }
        Ok(())
    })?;
    assert_eq!(bn.running_mean().to_vec1::<f32>()?, stats_before);
    Ok(())
}

#[test]
fn mismatched_layouts_and_bad_arguments_are_named() -> Result<()> {
    let f = fixture(3);
    let g = fixture(2);
    let wrong = Tensor::zeros(5, DType::F32, &Device::Cpu)?;
    assert!(matches!(
        Predictive::point(&f.params, &wrong),
        Err(Error::LayoutMismatch(_))
    ));
    let err = Predictive::swa(&f.params, &g.posterior).unwrap_err();
    assert!(matches!(err, Error::LayoutMismatch(_)), "{err}");
    assert!(err.to_string().contains("posterior #0"), "{err}");
    let multi = MultiSwag::new(vec![&f.posterior])?;
    assert!(matches!(
        Predictive::multi_swag(
            &g.params,
            &multi,
            BmaParams {
                samples: 3,
                seed: 0,
                ..Default::default()
            }
            .check()?
        ),
        Err(Error::LayoutMismatch(_))
    ));
    let name = |e: Error| match e {
        Error::InvalidArgument { name, .. } => name,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        name(
            BmaParams {
                samples: 0,
                ..Default::default()
            }
            .check()
            .unwrap_err()
        ),
        "samples"
    );
    let p = Predictive::swa(&f.params, &f.posterior)?;
    let none = f.x.narrow(0, 0, 0)?;
    assert_eq!(name(batches(&none, 4).err().unwrap()), "x");
    assert_eq!(name(batches(&f.x, 0).err().unwrap()), "batch_size");
    let empty = std::iter::empty::<candle_core::Result<Tensor>>();
    assert_eq!(name(p.classify(&f.model, empty).unwrap_err()), "inputs");
    assert_eq!(
        name(
            p.regress(
                &f.model,
                batches(&f.x, 4)?,
                Noise::Homoscedastic { variance: -1.0 }
            )
            .unwrap_err()
        ),
        "noise_variance"
    );
    let point = Predictive::point(&f.params, &f.params.flatten()?)?;
    assert_eq!(name(point.leave_swa_mean().unwrap_err()), "leave_swa_mean");
    Ok(())
}

#[test]
fn sgd_swa_and_swag_share_one_interface() -> Result<()> {
    let f = fixture(3);
    let sgd_weights = f.params.flatten()?;
    let multi = MultiSwag::new(vec![&f.posterior, &f.posterior])?;
    let methods = [
        Predictive::point(&f.params, &sgd_weights)?,
        Predictive::swa(&f.params, &f.posterior)?,
        Predictive::swag(
            &f.params,
            &f.posterior,
            BmaParams {
                sample: SampleParams {
                    scale: 0.5,
                    diag_only: true,
                    ..Default::default()
                },
                samples: 5,
                seed: 0,
            }
            .check()?,
        )?,
        Predictive::multi_swag(
            &f.params,
            &multi,
            BmaParams {
                sample: SampleParams {
                    scale: 0.5,
                    ..Default::default()
                },
                samples: 5,
                seed: 0,
            }
            .check()?,
        )?,
    ];
    let samples: Vec<usize> = methods.iter().map(|m| m.num_samples()).collect();
    assert_eq!(samples, [1, 1, 5, 5]);
    for m in &methods {
        let out = m.classify(&f.model, batches(&f.x, 6)?)?;
        let rows: Vec<f64> = host(&out.probs.sum(1)?);
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }
    // The SGD point prediction is the model's own forward pass.
    let out = methods[0].classify(&f.model, batches(&f.x, 6)?)?;
    let direct = candle_nn::ops::softmax_last_dim(&f.model.forward(&f.x)?)?;
    for (a, b) in host(&out.probs).iter().zip(host(&direct)) {
        close(*a, b, 1e-7, "point");
    }
    Ok(())
}

/// Predictions carry no autograd graph: the model's weights are Vars, and an accumulator that
/// kept each output's op graph would keep every activation of every sample alive (memory
/// growing with samples × batches). A gradient taken through the outputs reaches no weight.
#[test]
fn outputs_are_detached_from_the_model_graph() -> Result<()> {
    let f = fixture(2);
    let p = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: 3,
            seed: 0,
        }
        .check()?,
    )?;
    let cls = p.classify(&f.model, batches(&f.x, 2)?)?;
    let reg = p.regress(
        &f.model,
        batches(&f.x, 2)?,
        Noise::Heteroscedastic(VarianceLink::Softplus { min_variance: 1e-6 }),
    )?;
    // The same sum through a live forward pass does reach the weights (the check can fail).
    let live = f.model.forward(&f.x)?.sum_all()?;
    let weight = f.params.vars()[0].as_tensor();
    assert!(live.backward()?.get(weight).is_some());
    for (what, t) in [
        ("probs", &cls.probs),
        ("predictive entropy", &cls.predictive_entropy),
        ("regression mean", &reg.mean),
        ("aleatoric variance", &reg.var_aleatoric),
    ] {
        let grads = t.sum_all()?.backward()?;
        for v in f.params.vars() {
            assert!(
                grads.get(v.as_tensor()).is_none(),
                "{what} reaches a weight"
            );
        }
    }
    Ok(())
}

#[test]
fn classification_needs_two_classes() -> candle_swag::Result<()> {
    let f = fixture(1);
    let p = Predictive::swag(
        &f.params,
        &f.posterior,
        BmaParams {
            samples: 2,
            seed: 0,
            ..Default::default()
        }
        .check()?,
    )?;
    let err = p
        .classify(&f.model, batches(&f.x, 4)?)
        .expect_err("one output is not a classifier");
    assert!(
        matches!(&err, Error::InvalidArgument { name, .. } if name == "outputs"),
        "{err}"
    );
    assert!(err.to_string().contains("C = 1"), "{err}");
    // Regression on the same single output is fine.
    p.regress(
        &f.model,
        batches(&f.x, 4)?,
        Noise::Homoscedastic { variance: 1.0 },
    )?;
    Ok(())
}

#[test]
fn a_model_with_batchnorm_needs_a_refresh_or_an_explicit_opt_out() -> candle_swag::Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let fc = candle_nn::linear(3, 4, vb.pp("fc"))?;
    let bn = candle_nn::batch_norm(4, 1e-5, vb.pp("bn"))?;
    let model = func_t(|x: &Tensor, train: bool| bn.forward_t(&fc.forward(x)?, train));
    let params = ParamSet::from_varmap(&varmap)?;
    assert_eq!(
        params.batchnorm_buffers(),
        ["bn.running_mean", "bn.running_var"]
    );
    // A subset keeps the model's buffers: the statistics depend on every weight.
    assert_eq!(params.select_prefix(&["fc."])?.batchnorm_buffers().len(), 2);
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?,
    )?;
    for k in 0..3 {
        let theta: Vec<f32> = (0..params.numel()).map(|i| ((i + k) % 5) as f32).collect();
        params.write_flat(&Tensor::from_vec(theta, params.numel(), &device)?)?;
        posterior.collect(&params)?;
    }
    let x = Tensor::new(&[[1f32, 2.0, 3.0], [0.5, -1.0, 2.0]], &device)?;
    let noise = Noise::Homoscedastic { variance: 1.0 };

    let err = Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            samples: 2,
            seed: 0,
            ..Default::default()
        }
        .check()?,
    )?
    .regress(&model, batches(&x, 2)?, noise)
    .expect_err("stale statistics must be refused");
    assert!(
        matches!(&err, Error::InvalidArgument { name, .. } if name == "refresh"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bn.running_mean") && msg.contains("without_refresh"),
        "{msg}"
    );
    let err = Predictive::swa(&params, &posterior)?
        .regress(&model, batches(&x, 2)?, noise)
        .expect_err("the SWA mean needs its own statistics too");
    assert!(err.to_string().contains("refresh"), "{err}");

    // An explicit opt-out, a refresh, or a point prediction (the statistics belong to the
    // weights as trained) all run.
    Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            samples: 2,
            seed: 0,
            ..Default::default()
        }
        .check()?,
    )?
    .without_refresh()
    .regress(&model, batches(&x, 2)?, noise)?;
    let refresh = BatchNormRefresh::new(BatchNormStats::from_varmap(&varmap)?, batches(&x, 2)?);
    Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            samples: 2,
            seed: 0,
            ..Default::default()
        }
        .check()?,
    )?
    .with_refresh(refresh)
    .regress(&model, batches(&x, 2)?, noise)?;
    Predictive::point(&params, &params.flatten()?)?.regress(&model, batches(&x, 2)?, noise)?;
    Ok(())
}

#[test]
fn a_layout_mismatch_says_its_prefix_once() -> candle_swag::Result<()> {
    let (f, g) = (fixture(3), fixture(2));
    let err = Predictive::swa(&f.params, &g.posterior).expect_err("other layout");
    let msg = err.to_string();
    assert_eq!(msg.matches("parameter layout mismatch").count(), 1, "{msg}");
    assert!(msg.contains("posterior #0 does not match"), "{msg}");
    Ok(())
}
