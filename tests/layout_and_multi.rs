//! Parameter layout (order, BatchNorm buffers, prefix selection, flatten/write-back) and
//! MultiSWAG's sample assignment.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::func_t;
use candle_nn::{VarBuilder, VarMap};
use candle_swag::batchnorm::{BatchNorm, BatchNormConfig};
use candle_swag::layout::{ParamLayout, ParamSet};
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::swag::multi::assignment;
use candle_swag::swag::{MultiSwag, SampleParams, SwagParams, SwagPosterior};

fn model_varmap() -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    candle_nn::linear(3, 4, vb.pp("fc1")).unwrap();
    BatchNorm::new(4, BatchNormConfig::default(), vb.pp("bn1")).unwrap();
    candle_nn::linear(4, 2, vb.pp("head")).unwrap();
    varmap
}

#[test]
fn varmap_layout_is_sorted_and_leaves_batchnorm_statistics_out() -> Result<()> {
    let params = ParamSet::from_varmap(&model_varmap())?;
    let names: Vec<&str> = params
        .layout()
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "bn1.bias",
            "bn1.weight",
            "fc1.bias",
            "fc1.weight",
            "head.bias",
            "head.weight"
        ]
    );
    let offsets: Vec<usize> = params.layout().entries().iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [0, 4, 8, 12, 24, 26]);
    assert_eq!(params.numel(), 34);
    Ok(())
}

#[test]
fn prefix_selection_keeps_the_last_layer() -> Result<()> {
    let params = ParamSet::from_varmap(&model_varmap())?;
    let head = params.select_prefix(&["head."])?;
    assert_eq!(head.numel(), 10);
    assert_eq!(head.layout().entries()[1].offset, 2);
    let err = params.select_prefix(&["nope."]).unwrap_err().to_string();
    assert!(err.contains("nope."), "{err}");
    Ok(())
}

#[test]
fn flatten_and_write_back_round_trip_in_layout_order() -> Result<()> {
    let a = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?)?;
    let b = Var::from_tensor(&Tensor::new(&[5f32], &Device::Cpu)?)?;
    let params = ParamSet::from_named_vars(vec![("a".into(), a.clone()), ("b".into(), b.clone())])?;
    assert_eq!(params.flatten()?.to_vec1::<f32>()?, [1., 2., 3., 4., 5.]);
    params.write_flat(&Tensor::new(&[9f32, 8., 7., 6., 5.5], &Device::Cpu)?)?;
    assert_eq!(a.as_tensor().to_vec2::<f32>()?, [[9., 8.], [7., 6.]]);
    assert_eq!(b.as_tensor().to_vec1::<f32>()?, [5.5]);
    let err = params
        .write_flat(&Tensor::new(&[1f32, 2.], &Device::Cpu)?)
        .unwrap_err();
    assert!(err.to_string().contains("[5]"), "{err}");
    // A single-parameter flatten is a copy, never a view of the Var.
    let single = ParamSet::from_named_vars(vec![("b".into(), b.clone())])?;
    let flat = single.flatten()?;
    b.set(&Tensor::new(&[0f32], &Device::Cpu)?)?;
    assert_eq!(flat.to_vec1::<f32>()?, [5.5]);
    Ok(())
}

#[test]
fn duplicate_names_are_refused() -> Result<()> {
    let err = ParamLayout::new(vec![("w".into(), vec![2]), ("w".into(), vec![3])]).unwrap_err();
    assert!(err.to_string().contains("`w` appears twice"));
    Ok(())
}

#[test]
fn multiswag_spreads_samples_evenly_and_draws_from_the_chosen_posterior() -> Result<()> {
    assert_eq!(assignment(3, 30).iter().filter(|&&i| i == 2).count(), 10);
    assert_eq!(assignment(4, 6), vec![0, 0, 1, 1, 2, 3]);
    assert_eq!(assignment(2, 0), Vec::<usize>::new());

    let layout = ParamLayout::new(vec![("w".into(), vec![2])])?;
    let posterior = |v: f32| -> Result<SwagPosterior> {
        let config = SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?;
        let mut p = SwagPosterior::new(layout.clone(), config, &Device::Cpu)?;
        p.collect_flat(&Tensor::new(&[v, -v], &Device::Cpu)?)?;
        Ok(p)
    };
    let multi = MultiSwag::new(vec![posterior(1.0)?, posterior(2.0)?, posterior(3.0)?])?;
    let w = Var::zeros(2, DType::F32, &Device::Cpu)?;
    let params = ParamSet::from_named_vars(vec![("w".into(), w.clone())])?;
    // A "model" that outputs its weights: sample i of 4 comes from posterior [0, 0, 1, 2][i],
    // whose mean (scale 0) is (v, −v).
    let model = func_t(|_: &Tensor, _| w.as_tensor().unsqueeze(0));
    let x = Tensor::zeros((1, 1), DType::F32, &Device::Cpu)?;
    let predictive = Predictive::multi_swag(
        &params,
        &multi,
        BmaParams {
            sample: SampleParams {
                scale: 0.0,
                ..Default::default()
            },
            samples: 4,
            seed: 0,
        }
        .check()?,
    )?;
    let mut seen = Vec::new();
    predictive.for_each_output(&model, batches(&x, 1)?, |s, b, out| {
        assert_eq!(b, 0);
        seen.push((s, out.to_vec2::<f32>()?[0].clone()));
        Ok(())
    })?;
    let want: Vec<(usize, Vec<f32>)> = [1f32, 1., 2., 3.]
        .iter()
        .enumerate()
        .map(|(s, &v)| (s, vec![v, -v]))
        .collect();
    assert_eq!(seen, want);
    // The weights are restored afterwards.
    assert_eq!(w.as_tensor().to_vec1::<f32>()?, [0.0, 0.0]);

    let other = SwagPosterior::new(
        ParamLayout::new(vec![("v".into(), vec![2])])?,
        SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?,
        &Device::Cpu,
    )?;
    let err = MultiSwag::new(vec![posterior(1.0)?, other])
        .unwrap_err()
        .to_string();
    assert!(err.contains("posterior #1"), "{err}");
    Ok(())
}
