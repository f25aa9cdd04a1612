//! SWAG over the adapters through candle-swag's `Predictive`, and the feature cache.

use candle_core::{DType, Device, ModuleT, Tensor, D};
use candle_nn::Optimizer;
use candle_swag::predictive::{batches, BmaParams, Predictive};
use candle_swag::{Result, SampleParams, SwagParams, SwagPosterior};
use candle_swag_transformers::features::{cache_features, cached};
use candle_swag_transformers::{arch, config, tiny, Arch, BaseModel, Lora, LoraModel, LoraParams};

type Classifier = LoraModel<arch::SequenceClassifier>;

fn setup(dev: &Device) -> Result<(tempfile::TempDir, Classifier, Tensor, Tensor)> {
    let dir = tempfile::tempdir().map_err(|e| candle_swag::Error::io("tempdir", e))?;
    tiny::write_random_model(Arch::Bert, dir.path(), 3)?;
    let base = BaseModel::load(dir.path(), dev)?;
    let cfg = config::bert(base.config(), &dir.path().join("config.json"))?;
    let lora = Lora::new(
        &base,
        &LoraParams {
            new_weights: vec![arch::HEAD.into()],
            ..LoraParams::new(
                &[
                    "*.attention.self.query.weight",
                    "*.attention.self.value.weight",
                ],
                2,
            )
        }
        .check()?,
        dev,
    )?;
    let model = LoraModel::new(&lora, DType::F32, arch::bert_classifier(cfg, 2))?;
    let n = 24;
    let ids: Vec<u32> = (0..n * 8)
        .map(|i| 97 + ((i * 11 + i / 8) % 26) as u32)
        .collect();
    let x = Tensor::from_vec(ids, (n, 8), dev)?;
    let y = Tensor::from_vec((0..n as u32).map(|i| i % 2).collect::<Vec<_>>(), n, dev)?;
    Ok((dir, model, x, y))
}

/// A few AdamW steps on the adapters and the head, collecting a snapshot after each of the last
/// ones: the LoRA-SWAG loop of the smoke example, small.
fn train_and_collect(model: &Classifier, x: &Tensor, y: &Tensor) -> Result<SwagPosterior> {
    let params = model.params()?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: 3,
            ..Default::default()
        }
        .check()?,
    )?;
    for step in 0..8 {
        let logits = model.model()?.forward_t(x, true)?;
        opt.backward_step(&candle_nn::loss::cross_entropy(&logits, y)?)?;
        if step >= 3 {
            posterior.collect(&params)?;
        }
    }
    Ok(posterior)
}

#[test]
fn bma_at_scale_zero_equals_the_swa_mean_model() -> Result<()> {
    let dev = Device::Cpu;
    let (_dir, model, x, y) = setup(&dev)?;
    let posterior = train_and_collect(&model, &x, &y)?;
    let params = model.params()?;
    let before = params.flatten()?;

    let bma = Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.0,
                ..Default::default()
            },
            samples: 3,
            seed: 7,
        }
        .check()?,
    )?
    .classify(&model, batches(&x, 10)?)?;
    // Predictive restored the trained weights; the model follows them.
    assert_eq!(
        params.flatten()?.to_vec1::<f32>()?,
        before.to_vec1::<f32>()?
    );

    // Independently: the mean written into the Vars by hand, a fresh build, one forward.
    posterior.write_mean_into(&params)?;
    let mean_model = model.rebuild()?;
    let probs = candle_nn::ops::softmax(&mean_model.forward_t(&x, false)?, D::Minus1)?;
    let diff = (bma.probs - &probs)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-6, "max |BMA(scale 0) − mean model| = {diff}");
    // And the mean differs from the trained (last) weights, so the check has teeth.
    params.write_flat(&before)?;
    let last = candle_nn::ops::softmax(&model.forward_t(&x, false)?, D::Minus1)?;
    let gap = (last - probs)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert!(gap > 1e-5, "the SWA mean equals the last iterate ({gap})");
    Ok(())
}

#[test]
fn swag_samples_reach_the_model_through_rebuilds() -> Result<()> {
    let dev = Device::Cpu;
    let (_dir, model, x, y) = setup(&dev)?;
    let posterior = train_and_collect(&model, &x, &y)?;
    let params = model.params()?;
    let rebuilds = model.rebuild_count();
    let bma = Predictive::swag(
        &params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 1.0,
                ..Default::default()
            },
            samples: 4,
            seed: 1,
        }
        .check()?,
    )?
    .classify(&model, batches(&x, 8)?)?;
    // One rebuild per sample (3 batches per sample share it), then the next call after the
    // restore rebuilds for the trained weights.
    assert_eq!(model.rebuild_count() - rebuilds, 4);
    let mi = bma.mutual_information.max(0)?.to_scalar::<f32>()?;
    assert!(
        mi > 0.0,
        "samples that reached the model disagree somewhere (MI {mi})"
    );
    Ok(())
}

#[test]
fn cached_feature_bma_equals_uncached_bma() -> Result<()> {
    let dev = Device::Cpu;
    let (_dir, model, x, y) = setup(&dev)?;
    train_and_collect(&model, &x, &y)?;
    // A posterior over the head only, the trunk (adapters included) frozen.
    let head_params = model.params()?.select_prefix(&[arch::HEAD])?;
    assert_eq!(head_params.vars().len(), 2);
    let mut posterior = SwagPosterior::for_params(
        &head_params,
        SwagParams {
            rank: 2,
            ..Default::default()
        }
        .check()?,
    )?;
    for k in 0..4 {
        let w = (head_params.flatten()? + (k as f64) * 0.05)?;
        head_params.write_flat(&w)?;
        posterior.collect(&head_params)?;
    }
    let predictive = Predictive::swag(
        &head_params,
        &posterior,
        BmaParams {
            sample: SampleParams {
                scale: 0.5,
                ..Default::default()
            },
            samples: 6,
            seed: 3,
        }
        .check()?,
    )?;
    let full = predictive.classify(&model, batches(&x, 10)?)?;

    let current = model.model()?;
    let trunk = candle_nn::func_t(|xs: &Tensor, _| current.features(xs));
    let features = cache_features(&trunk, batches(&x, 10)?)?;
    let head = current.head().clone();
    let fast = predictive.classify(&head, cached(&features))?;
    for (a, b) in [
        (&full.probs, &fast.probs),
        (&full.mutual_information, &fast.mutual_information),
        (&full.predictive_entropy, &fast.predictive_entropy),
    ] {
        let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(d <= 1e-6, "cached and uncached BMA differ by {d}");
    }
    Ok(())
}

#[test]
fn in_candle_0_11_gradients_stop_at_fused_norms_and_reach_only_the_head() -> Result<()> {
    let dev = Device::Cpu;
    let (_dir, model, x, y) = setup(&dev)?;
    let params = model.params()?;
    let loss = candle_nn::loss::cross_entropy(&model.model()?.forward_t(&x, true)?, &y)?;
    let dead = candle_swag_transformers::params_without_gradient(&params, &loss.backward()?)?;
    // candle-nn's fused layer_norm (taken for a contiguous input and a LayerNorm with a bias)
    // has no backward pass: every adapter sits before one, so only the head gets a gradient.
    // When candle gains the backward pass this fails: update the docs and the example.
    let adapters: Vec<&str> = params
        .layout()
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| n.contains(".lora_"))
        .collect();
    assert_eq!(dead, adapters);

    // Llama: candle-nn's fused rms_norm has no backward pass, so nothing reaches the adapters.
    let dir = tempfile::tempdir().map_err(|e| candle_swag::Error::io("tempdir", e))?;
    tiny::write_random_model(Arch::Llama, dir.path(), 1)?;
    let base = BaseModel::load(dir.path(), &dev)?;
    let cfg = config::llama(base.config(), &dir.path().join("config.json"))?;
    let lora = Lora::new(
        &base,
        &LoraParams::new(&["*.v_proj.weight"], 2).check()?,
        &dev,
    )?;
    let llama = LoraModel::new(&lora, DType::F32, arch::llama_next_token(cfg))?;
    let params = llama.params()?;
    let ids = Tensor::from_vec((0..16u32).map(|i| 97 + i).collect::<Vec<_>>(), (2, 8), &dev)?;
    let targets = Tensor::from_vec(vec![98u32, 99], 2, &dev)?;
    let loss = candle_nn::loss::cross_entropy(&llama.forward_t(&ids, true)?, &targets)?;
    let dead = candle_swag_transformers::params_without_gradient(&params, &loss.backward()?)?;
    assert_eq!(
        dead.len(),
        params.vars().len(),
        "if this fails, candle gained the backward pass: update the docs"
    );
    Ok(())
}
