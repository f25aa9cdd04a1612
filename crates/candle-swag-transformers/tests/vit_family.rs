//! The trainable ViT family (`models::vit`) against the serving path (`arch::vit_classifier`
//! on candle-transformers' ViT), its gradients against finite differences, and bad input.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::Optimizer;
use candle_swag::{Error, ParamSet, Result};
use candle_swag_transformers::models::{VitClassifier, VitModel, VitOptions};
use candle_swag_transformers::{
    arch, config, params_without_gradient, tiny, Arch, BaseModel, Lora, LoraModel, LoraParams,
};

/// Every linear layer of the encoder.
const ALL_LINEAR: [&str; 6] = [
    "*.attention.attention.query.weight",
    "*.attention.attention.key.weight",
    "*.attention.attention.value.weight",
    "*.attention.output.dense.weight",
    "*.intermediate.dense.weight",
    "*.layer.*.output.dense.weight",
];

const QUERY_VALUE: [&str; 2] = [
    "*.attention.attention.query.weight",
    "*.attention.attention.value.weight",
];

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|e| Error::io("tempdir", e))
}

/// The tiny ViT of `tiny.rs`: 16 × 16 single-channel images, 4 × 4 patches, q/k/v bias.
fn tiny_vit(seed: u64) -> Result<tempfile::TempDir> {
    let dir = tempdir()?;
    tiny::write_random_model(Arch::Vit, dir.path(), seed)?;
    Ok(dir)
}

fn lora_on(base: &BaseModel, targets: &[&str], rank: usize) -> Result<Lora> {
    let params = LoraParams {
        new_weights: vec![arch::HEAD.into()],
        seed: 7,
        ..LoraParams::new(targets, rank)
    };
    Lora::new(base, &params.check()?, &Device::Cpu)
}

/// Deterministic images `[n, 1, 16, 16]` in [-1, 1].
fn images(n: usize, salt: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * 256)
        .map(|i| ((i * 31 + salt * 17) % 97) as f32 / 48.5 - 1.0)
        .collect();
    Ok(Tensor::from_vec(v, (n, 1, 16, 16), &Device::Cpu)?)
}

fn perturb_b(lora: &Lora) -> Result<()> {
    for (k, ad) in lora.adapters().values().enumerate() {
        let (out, r) = ad.b.dims2()?;
        let v: Vec<f32> = (0..out * r)
            .map(|i| (((i * 13 + k * 5) % 17) as f32 / 17.0 - 0.5) * 0.4)
            .collect();
        ad.b.set(&Tensor::from_vec(v, (out, r), lora.device())?)?;
    }
    Ok(())
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    let num = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let den = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(num / den.max(f32::MIN_POSITIVE))
}

fn message<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// The trainable classifier and the serving path (`arch::vit_classifier` through
/// `LoraModel`, rebuilt on merged weights when the factors change) share the head `Var`:
/// features and logits agree at init and with B written.
#[test]
fn the_classifier_equals_the_serving_path_at_init_and_with_adapters_written() -> Result<()> {
    let dir = tiny_vit(1)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(&base, &ALL_LINEAR, 4)?;
    let ours = VitClassifier::new(&lora, 3, &VitOptions::default())?;
    assert_eq!(ours.vit().adapted().len(), 6 * 2);
    let cfg = config::vit(base.config(), &dir.path().join("config.json"))?;
    let serving = LoraModel::new(&lora, DType::F32, arch::vit_classifier(cfg, 3))?;
    let x = images(4, 0)?;
    let compare = || -> Result<(f32, f32)> {
        let f = rel_err(&ours.features(&x)?, &serving.model()?.features(&x)?)?;
        let y = rel_err(&ours.forward_t(&x, false)?, &serving.forward_t(&x, false)?)?;
        Ok((f, y))
    };
    let (f0, y0) = compare()?;
    let before = ours.features(&x)?;
    perturb_b(&lora)?;
    let (f1, y1) = compare()?;
    assert!(
        f0 <= 1e-5 && y0 <= 1e-5 && f1 <= 1e-5 && y1 <= 1e-5,
        "relative errors {f0} {y0} {f1} {y1}"
    );
    assert_eq!(serving.rebuild_count(), 1);
    let moved = rel_err(&before, &ours.features(&x)?)?;
    assert!(
        moved > 1e-2,
        "the adapters barely moved the features ({moved})"
    );
    Ok(())
}

/// `qkv_bias: false` (no q/k/v biases read) and a bare checkpoint (no `vit.` prefix).
#[test]
fn no_qkv_bias_and_bare_names_equal_the_serving_path() -> Result<()> {
    let dir = tiny_vit(2)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let mut cfg = base.config().clone();
    if let Some(c) = cfg.as_object_mut() {
        c.insert("qkv_bias".into(), false.into());
    }
    let tensors: HashMap<String, Tensor> = base
        .tensors()
        .iter()
        .filter(|(n, _)| !(n.contains(".attention.attention.") && n.ends_with(".bias")))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let bare: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.trim_start_matches("vit.").to_string(), t.clone()))
        .collect();
    let write = |t: &HashMap<String, Tensor>| -> Result<tempfile::TempDir> {
        let d = tempdir()?;
        candle_swag_transformers::lora::write_safetensors(
            d.path().join("model.safetensors"),
            t,
            HashMap::new(),
        )?;
        let p = d.path().join("config.json");
        std::fs::write(&p, serde_json::to_string(&cfg)?).map_err(|e| Error::io(&p, e))?;
        Ok(d)
    };
    let (pdir, bdir) = (write(&tensors)?, write(&bare)?);
    let pbase = BaseModel::load(pdir.path(), &Device::Cpu)?;
    let lora = lora_on(&pbase, &QUERY_VALUE, 2)?;
    perturb_b(&lora)?;
    let ours = VitClassifier::new(&lora, 2, &VitOptions::default())?;
    let serving = LoraModel::new(
        &lora,
        DType::F32,
        arch::vit_classifier(config::vit(&cfg, &pdir.path().join("config.json"))?, 2),
    )?;
    let x = images(3, 1)?;
    let e = rel_err(&ours.forward_t(&x, false)?, &serving.forward_t(&x, false)?)?;
    assert!(e <= 1e-5, "relative error {e}");
    let a = VitModel::frozen(&pbase, &VitOptions::default())?;
    let b = VitModel::frozen(
        &BaseModel::load(bdir.path(), &Device::Cpu)?,
        &VitOptions::default(),
    )?;
    assert_eq!(
        a.features(&x, false)?.to_vec2::<f32>()?,
        b.features(&x, false)?.to_vec2::<f32>()?
    );
    Ok(())
}

/// One AdamW step from init (B = 0, so only B and the head move), then the gradients of a
/// second loss: every adapter and the head.
#[test]
fn every_adapter_and_the_head_get_a_gradient() -> Result<()> {
    let dir = tiny_vit(3)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(&base, &ALL_LINEAR, 2)?;
    let model = VitClassifier::new(&lora, 3, &VitOptions::default())?;
    let params = ParamSet::from_varmap(lora.varmap())?;
    assert_eq!(params.vars().len(), 2 * 12 + 2);
    let x = images(6, 2)?;
    let y = Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2], 6, &Device::Cpu)?;
    let mut opt = candle_nn::AdamW::new(
        params.vars().to_vec(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let grads = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &y)?.backward()?;
    let dead = params_without_gradient(&params, &grads)?;
    assert!(
        dead.iter().all(|n| n.ends_with("lora_A.weight")),
        "{dead:?}"
    );
    assert_eq!(dead.len(), 12);
    opt.step(&grads)?;
    let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &y)?;
    let dead = params_without_gradient(&params, &loss.backward()?)?;
    assert!(dead.is_empty(), "no gradient: {dead:?}");
    Ok(())
}

#[test]
fn adapter_gradients_match_central_finite_differences() -> Result<()> {
    let dir = tiny_vit(4)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let lora = lora_on(
        &base,
        &[
            "*.attention.attention.query.weight",
            "*.attention.attention.value.weight",
            "*.intermediate.dense.weight",
        ],
        2,
    )?;
    perturb_b(&lora)?;
    let model = VitModel::new(
        &lora,
        &VitOptions {
            dtype: DType::F64,
            ..Default::default()
        },
    )?;
    let x = images(2, 3)?;
    let w = Tensor::from_vec(
        (0..2 * 17 * 64)
            .map(|i| (i * 29 % 23) as f64 / 23.0 - 0.5)
            .collect::<Vec<_>>(),
        (2, 17, 64),
        &Device::Cpu,
    )?;
    let probe = || -> Result<Tensor> {
        let h = model.forward(&x, false)?;
        let f = model.features(&x, false)?;
        Ok((h.broadcast_mul(&w)?.sum_all()? + f.sqr()?.sum_all()?)?)
    };
    let grads = probe()?.backward()?;
    let mut checked = 0;
    for (name, ad) in lora.adapters() {
        for (which, var) in [("A", &ad.a), ("B", &ad.b)] {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| Error::invalid("grad", format!("{name} {which}: no gradient")))?;
            common::check_directional_derivative(&format!("{name} {which}"), var, g, || {
                Ok(probe()?.to_scalar::<f64>()?)
            })?;
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 3 * 2);
    Ok(())
}

#[test]
fn dropout_acts_only_in_training() -> Result<()> {
    let dir = tiny_vit(5)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let mut cfg = base.config().clone();
    if let Some(c) = cfg.as_object_mut() {
        c.insert("hidden_dropout_prob".into(), 0.1.into());
    }
    let d = tempdir()?;
    candle_swag_transformers::lora::write_safetensors(
        d.path().join("model.safetensors"),
        base.tensors(),
        HashMap::new(),
    )?;
    let p = d.path().join("config.json");
    std::fs::write(&p, serde_json::to_string(&cfg)?).map_err(|e| Error::io(&p, e))?;
    let lora = lora_on(&BaseModel::load(d.path(), &Device::Cpu)?, &QUERY_VALUE, 2)?;
    let model = VitClassifier::new(&lora, 2, &VitOptions::default())?;
    let x = images(3, 4)?;
    let (e1, e2) = (model.forward_t(&x, false)?, model.forward_t(&x, false)?);
    assert_eq!(e1.to_vec2::<f32>()?, e2.to_vec2::<f32>()?);
    assert!(rel_err(&model.forward_t(&x, true)?, &e1)? > 1e-4);
    Ok(())
}

#[test]
fn bad_input_is_a_one_line_error_naming_what_is_wrong() -> Result<()> {
    // A config of another family names the families this crate trains.
    let ldir = tempdir()?;
    tiny::write_random_model(Arch::Llama, ldir.path(), 1)?;
    let lbase = BaseModel::load(ldir.path(), &Device::Cpu)?;
    let e = message(VitModel::frozen(&lbase, &VitOptions::default()));
    assert!(
        e.contains("config.json")
            && e.contains("model_type")
            && e.contains("\"llama\"")
            && e.contains("vit (model_type vit)")
            && e.contains("bert"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    let dir = tiny_vit(6)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let model = VitModel::frozen(&base, &VitOptions::default())?;
    // Images of the wrong size or channel count, integer images.
    for dims in [(2, 1, 32, 32), (2, 3, 16, 16)] {
        let bad = Tensor::zeros(dims, DType::F32, &Device::Cpu)?;
        let e = message(model.forward(&bad, false).map_err(Error::from));
        assert!(e.contains("[n, 1, 16, 16]") && !e.contains('\n'), "{e}");
    }
    let e = message(
        model
            .forward(
                &Tensor::zeros((1, 1, 16, 16), DType::U32, &Device::Cpu)?,
                false,
            )
            .map_err(Error::from),
    );
    assert!(e.contains("float"), "{e}");
    // A classifier without the head among the new weights.
    let lora = Lora::new(
        &base,
        &LoraParams::new(&QUERY_VALUE, 2).check()?,
        &Device::Cpu,
    )?;
    let e = message(VitClassifier::new(&lora, 2, &VitOptions::default()));
    assert!(e.contains("swag_head") && e.contains("new_weights"), "{e}");
    // A missing weight is named with the file.
    let mut tensors = base.tensors().clone();
    tensors.remove("vit.encoder.layer.1.layernorm_after.bias");
    let mdir = tempdir()?;
    candle_swag_transformers::lora::write_safetensors(
        mdir.path().join("model.safetensors"),
        &tensors,
        HashMap::new(),
    )?;
    std::fs::copy(
        dir.path().join("config.json"),
        mdir.path().join("config.json"),
    )
    .map_err(|e| Error::io(mdir.path(), e))?;
    let e = message(VitModel::frozen(
        &BaseModel::load(mdir.path(), &Device::Cpu)?,
        &VitOptions::default(),
    ));
    assert!(
        e.contains("model.safetensors") && e.contains("vit.encoder.layer.1.layernorm_after.bias"),
        "{e}"
    );
    Ok(())
}
