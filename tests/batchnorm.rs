//! BatchNorm layer and refresh against hand computations in f64.

use anyhow::Result;
mod common;
use common::invalid_name;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_swag::batchnorm::{
    BatchNorm, BatchNormConfig, BatchNormParams, BatchNormRefresh, BatchNormStats,
};

const EPS: f64 = 1e-5;

/// Per-channel (mean, biased variance, unbiased variance) of `rows` [n][C], by plain loops.
fn channel_stats(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let c = rows[0].len();
    let mut mean = vec![0.0; c];
    let mut biased = vec![0.0; c];
    let mut unbiased = vec![0.0; c];
    for j in 0..c {
        mean[j] = rows.iter().map(|r| r[j]).sum::<f64>() / n;
        let ss: f64 = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum();
        biased[j] = ss / n;
        unbiased[j] = ss / (n - 1.0);
    }
    (mean, biased, unbiased)
}

/// Train-mode BatchNorm output by hand.
fn normalise_train(rows: &[Vec<f64>], w: &[f64], b: &[f64]) -> Vec<Vec<f64>> {
    let (mean, biased, _) = channel_stats(rows);
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|j| (r[j] - mean[j]) / (biased[j] + EPS).sqrt() * w[j] + b[j])
                .collect()
        })
        .collect()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let c = rows[0].len();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), c), &Device::Cpu).unwrap()
}

fn vec1(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_all_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn f64_vb(varmap: &VarMap) -> VarBuilder<'static> {
    VarBuilder::from_varmap(varmap, DType::F64, &Device::Cpu)
}

fn set(varmap: &mut VarMap, name: &str, values: &[f64]) {
    let t = Tensor::from_vec(values.to_vec(), values.len(), &Device::Cpu).unwrap();
    varmap.set_one(name, t).unwrap();
}

#[test]
fn variables_live_in_the_varmap_under_candle_nn_names() -> Result<()> {
    let varmap = VarMap::new();
    let bn = BatchNorm::new(
        3,
        BatchNormConfig::default(),
        f64_vb(&varmap).pp("block.bn0"),
    )?;
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "block.bn0.bias",
            "block.bn0.running_mean",
            "block.bn0.running_var",
            "block.bn0.weight"
        ]
    );
    assert_eq!(
        bn.buffer_names(),
        ["block.bn0.running_mean", "block.bn0.running_var"]
    );
    let buffers = BatchNormStats::buffers(&[BatchNormStats::of_layer(&bn)?]);
    let names: Vec<&str> = buffers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["block.bn0.running_mean", "block.bn0.running_var"]);

    // A train step updates the very Var held by the VarMap.
    let x = tensor(&[vec![1.0, 2.0, 3.0], vec![3.0, 6.0, 9.0]]);
    bn.forward_t(&x, true)?;
    let in_map = varmap.data().lock().unwrap()["block.bn0.running_mean"].clone();
    assert_all_close(
        &vec1(in_map.as_tensor()),
        &[0.2, 0.4, 0.6],
        1e-12,
        "mean in map",
    );

    // Without affine there is no weight or bias.
    let varmap2 = VarMap::new();
    let cfg = BatchNormParams {
        affine: false,
        ..Default::default()
    }
    .check()?;
    let plain = BatchNorm::new(2, cfg, f64_vb(&varmap2).pp("bn"))?;
    assert!(plain.weight_and_bias().is_none());
    assert_eq!(varmap2.data().lock().unwrap().len(), 2);
    Ok(())
}

#[test]
fn train_and_eval_match_hand_computation() -> Result<()> {
    let mut varmap = VarMap::new();
    let bn = BatchNorm::new(2, BatchNormConfig::default(), f64_vb(&varmap).pp("bn"))?;
    let w = [2.0, 0.5];
    let b = [1.0, -1.0];
    set(&mut varmap, "bn.weight", &w);
    set(&mut varmap, "bn.bias", &b);

    let rows = vec![
        vec![1.0, -2.0],
        vec![2.0, 0.5],
        vec![4.0, 3.0],
        vec![-1.0, 7.5],
    ];
    let y = bn.forward_t(&tensor(&rows), true)?;
    assert_eq!(y.dims(), [4, 2]);
    let want: Vec<f64> = normalise_train(&rows, &w, &b).concat();
    assert_all_close(&vec1(&y), &want, 1e-12, "train output");

    // Running stats: 0.9 * initial + 0.1 * batch, with the UNBIASED batch variance.
    let (mean, _, unbiased) = channel_stats(&rows);
    let want_rm: Vec<f64> = mean.iter().map(|m| 0.1 * m).collect();
    let want_rv: Vec<f64> = unbiased.iter().map(|v| 0.9 + 0.1 * v).collect();
    assert_all_close(
        &vec1(bn.running_mean().as_tensor()),
        &want_rm,
        1e-12,
        "running_mean",
    );
    assert_all_close(
        &vec1(bn.running_var().as_tensor()),
        &want_rv,
        1e-12,
        "running_var",
    );
    assert_eq!(bn.batches_seen(), 1);

    // Eval uses the running statistics and changes nothing.
    let probe = vec![vec![0.5, 1.0], vec![3.0, -4.0]];
    let y_eval = bn.forward_t(&tensor(&probe), false)?;
    let want_eval: Vec<f64> = probe
        .iter()
        .flat_map(|r| {
            (0..2)
                .map(|j| (r[j] - want_rm[j]) / (want_rv[j] + EPS).sqrt() * w[j] + b[j])
                .collect::<Vec<_>>()
        })
        .collect();
    assert_all_close(&vec1(&y_eval), &want_eval, 1e-12, "eval output");
    assert_all_close(
        &vec1(bn.running_mean().as_tensor()),
        &want_rm,
        0.0,
        "mean after eval",
    );
    assert_eq!(bn.batches_seen(), 1);
    Ok(())
}

#[test]
fn three_dimensional_input_normalises_over_all_dims_but_one() -> Result<()> {
    let varmap = VarMap::new();
    let bn = BatchNorm::new(2, BatchNormConfig::default(), f64_vb(&varmap).pp("bn"))?;
    // x[n][c][l], N = 2, C = 2, L = 3.
    let x: Vec<f64> = vec![
        1.0, 2.0, 3.0, /* n0 c1 */ 10.0, 0.0, -10.0, //
        4.0, 5.0, 9.0, /* n1 c1 */ 1.0, 2.0, 3.0,
    ];
    let t = Tensor::from_vec(x.clone(), (2, 2, 3), &Device::Cpu)?;
    let y = vec1(&bn.forward_t(&t, true)?);
    // Channel values gathered by hand, one "row" per (n, l).
    let mut rows = Vec::new();
    for n in 0..2 {
        for l in 0..3 {
            rows.push(vec![x[n * 6 + l], x[n * 6 + 3 + l]]);
        }
    }
    let out_rows = normalise_train(&rows, &[1.0, 1.0], &[0.0, 0.0]);
    for n in 0..2 {
        for c in 0..2 {
            for l in 0..3 {
                let got = y[n * 6 + c * 3 + l];
                let want = out_rows[n * 3 + l][c];
                assert!(
                    (got - want).abs() < 1e-12,
                    "y[{n},{c},{l}] = {got}, want {want}"
                );
            }
        }
    }
    let (_, _, unbiased) = channel_stats(&rows);
    let want_rv: Vec<f64> = unbiased.iter().map(|v| 0.9 + 0.1 * v).collect();
    assert_all_close(
        &vec1(bn.running_var().as_tensor()),
        &want_rv,
        1e-12,
        "running_var",
    );
    Ok(())
}

#[test]
fn agrees_with_candle_nn_batchnorm_on_the_same_vars() -> Result<()> {
    let mut varmap = VarMap::new();
    let ours = BatchNorm::new(3, BatchNormConfig::default(), f64_vb(&varmap).pp("bn"))?;
    let theirs = candle_nn::batch_norm(
        3,
        candle_nn::BatchNormConfig::default(),
        f64_vb(&varmap).pp("bn"),
    )?;
    set(&mut varmap, "bn.weight", &[1.5, -0.5, 2.0]);
    set(&mut varmap, "bn.bias", &[0.1, 0.2, 0.3]);
    let x = tensor(&[
        vec![0.3, 1.0, -2.0],
        vec![1.3, -1.0, 2.0],
        vec![2.3, 4.0, 0.0],
    ]);
    let y_ours = vec1(&ours.forward_t(&x, true)?);
    let rm_ours = vec1(ours.running_mean().as_tensor());
    let rv_ours = vec1(ours.running_var().as_tensor());
    ours.reset_running_stats()?;
    let y_theirs = vec1(&theirs.forward_t(&x, true)?);
    assert_all_close(&y_ours, &y_theirs, 1e-12, "train output");
    assert_all_close(
        &rm_ours,
        &vec1(theirs.running_mean()),
        1e-12,
        "running_mean",
    );
    assert_all_close(&rv_ours, &vec1(theirs.running_var()), 1e-12, "running_var");
    let probe = tensor(&[vec![1.0, 2.0, 3.0]]);
    assert_all_close(
        &vec1(&ours.forward_t(&probe, false)?),
        &vec1(&theirs.forward_t(&probe, false)?),
        1e-12,
        "eval output",
    );
    Ok(())
}

/// bn_a → 2·h + 1 → bn_b: two layers, the second fed by the first's train-mode output.
struct TwoBn {
    bn_a: BatchNorm,
    bn_b: BatchNorm,
}

impl ModuleT for TwoBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.bn_a.forward_t(xs, train)?;
        let h = h.affine(2.0, 1.0)?;
        self.bn_b.forward_t(&h, train)
    }
}

impl TwoBn {
    fn stats(&self) -> Vec<BatchNormStats> {
        [&self.bn_a, &self.bn_b]
            .into_iter()
            .map(|bn| BatchNormStats::of_layer(bn).unwrap())
            .collect()
    }
}

fn two_bn(varmap: &mut VarMap) -> TwoBn {
    let vb = f64_vb(varmap);
    let bn_a = BatchNorm::new(2, BatchNormConfig::default(), vb.pp("a")).unwrap();
    let bn_b = BatchNorm::new(2, BatchNormConfig::default(), vb.pp("b")).unwrap();
    set(varmap, "a.weight", &[1.5, 0.5]);
    set(varmap, "a.bias", &[0.0, 2.0]);
    TwoBn { bn_a, bn_b }
}

/// Expected refreshed statistics of both layers: plain means of the per-batch statistics.
fn expected_refresh(batches: &[Vec<Vec<f64>>]) -> [(Vec<f64>, Vec<f64>); 2] {
    let mut sums = [(vec![0.0; 2], vec![0.0; 2]), (vec![0.0; 2], vec![0.0; 2])];
    for rows in batches {
        let (m_a, _, v_a) = channel_stats(rows);
        let h: Vec<Vec<f64>> = normalise_train(rows, &[1.5, 0.5], &[0.0, 2.0])
            .into_iter()
            .map(|r| r.into_iter().map(|v| 2.0 * v + 1.0).collect())
            .collect();
        let (m_b, _, v_b) = channel_stats(&h);
        for j in 0..2 {
            sums[0].0[j] += m_a[j];
            sums[0].1[j] += v_a[j];
            sums[1].0[j] += m_b[j];
            sums[1].1[j] += v_b[j];
        }
    }
    let k = batches.len() as f64;
    sums.map(|(m, v)| {
        (
            m.into_iter().map(|x| x / k).collect(),
            v.into_iter().map(|x| x / k).collect(),
        )
    })
}

fn three_batches() -> Vec<Vec<Vec<f64>>> {
    vec![
        vec![vec![1.0, 10.0], vec![3.0, 14.0]],
        vec![vec![-2.0, 0.5], vec![0.0, 1.5], vec![7.0, -3.0]],
        vec![
            vec![100.0, 2.0],
            vec![90.0, 2.5],
            vec![95.0, 1.0],
            vec![80.0, 4.0],
        ],
    ]
}

fn ok_batches(
    batches: &[Vec<Vec<f64>>],
) -> impl Iterator<Item = candle_core::Result<Tensor>> + Clone + '_ {
    batches.iter().map(|b| Ok(tensor(b)))
}

fn refresh(layers: Vec<BatchNormStats>, batches: &[Vec<Vec<f64>>]) -> BatchNormRefresh<'_> {
    BatchNormRefresh::new(layers, ok_batches(batches))
}

#[test]
fn refresh_reproduces_exact_mean_of_batch_statistics() -> Result<()> {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    model.bn_b.set_momentum(Some(0.3))?;
    // Put stale statistics in place first.
    for _ in 0..3 {
        model.forward_t(&tensor(&[vec![50.0, -50.0], vec![60.0, 40.0]]), true)?;
    }

    let batches = three_batches();
    let used = refresh(model.stats(), &batches).run(&model)?;
    assert_eq!(used, 3);

    let want = expected_refresh(&batches);
    for (bn, (mean, var)) in [&model.bn_a, &model.bn_b].into_iter().zip(want.iter()) {
        let what = bn.prefix().to_string();
        assert_all_close(
            &vec1(bn.running_mean().as_tensor()),
            mean,
            1e-13,
            &format!("{what} mean"),
        );
        assert_all_close(
            &vec1(bn.running_var().as_tensor()),
            var,
            1e-13,
            &format!("{what} var"),
        );
    }
    // First layer by hand: means of batch means of channel 0 = (2 + 5/3 + 91.25) / 3.
    let m0 = (2.0 + 5.0 / 3.0 + 91.25) / 3.0;
    assert!((vec1(model.bn_a.running_mean().as_tensor())[0] - m0).abs() < 1e-12);

    // The layers' own update rules are untouched.
    assert_eq!(model.bn_a.momentum(), Some(0.1));
    assert_eq!(model.bn_b.momentum(), Some(0.3));
    Ok(())
}

#[test]
fn refresh_with_fraction_uses_the_documented_number_of_batches() -> Result<()> {
    let mut base = three_batches();
    for i in 0..7 {
        base.push(vec![vec![i as f64, 2.0 * i as f64], vec![-(i as f64), 1.0]]);
    }
    assert_eq!(base.len(), 10);
    for (fraction, want_used) in [(0.3, 3usize), (0.25, 3), (0.01, 1), (0.95, 10), (1.0, 10)] {
        let mut varmap = VarMap::new();
        let model = two_bn(&mut varmap);
        let used = refresh(model.stats(), &base)
            .with_fraction(fraction)?
            .run(&model)?;
        assert_eq!(used, want_used, "fraction {fraction}");
        let want = expected_refresh(&base[..want_used]);
        assert_all_close(
            &vec1(model.bn_b.running_var().as_tensor()),
            &want[1].1,
            1e-13,
            &format!("fraction {fraction}"),
        );

        // An iterator without an exact length gives the same count (it is counted first).
        let mut varmap2 = VarMap::new();
        let model2 = two_bn(&mut varmap2);
        let inexact = ok_batches(&base).filter(|_| true);
        let r = BatchNormRefresh::new(model2.stats(), inexact).with_fraction(fraction)?;
        assert_eq!(r.run(&model2)?, want_used);
    }
    Ok(())
}

#[test]
fn invalid_fraction_and_empty_iterator_are_refused() -> Result<()> {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    for f in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            invalid_name(refresh(model.stats(), &three_batches()).with_fraction(f)),
            "fraction"
        );
    }
    model.forward_t(&tensor(&[vec![5.0, 6.0], vec![7.0, 9.0]]), true)?;
    let before = vec1(model.bn_a.running_mean().as_tensor());
    assert_eq!(
        invalid_name(refresh(model.stats(), &[]).run(&model)),
        "batches"
    );
    assert_eq!(
        vec1(model.bn_a.running_mean().as_tensor()),
        before,
        "left unchanged"
    );
    // A layer in cumulative mode cannot be refreshed through its momentum.
    model.bn_b.set_momentum(None)?;
    assert_eq!(
        invalid_name(BatchNormStats::of_layer(&model.bn_b)),
        "momentum"
    );
    Ok(())
}

#[test]
fn statistics_are_restored_after_an_error() -> Result<()> {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    model.forward_t(&tensor(&[vec![5.0, 6.0], vec![7.0, 9.0]]), true)?;
    let before = [
        vec1(model.bn_a.running_mean().as_tensor()),
        vec1(model.bn_b.running_var().as_tensor()),
    ];
    let after = |m: &TwoBn| {
        [
            vec1(m.bn_a.running_mean().as_tensor()),
            vec1(m.bn_b.running_var().as_tensor()),
        ]
    };

    // The iterator fails on its second item.
    let good = three_batches();
    let items = (0..3).map(|i| match i {
        1 => Err(candle_core::Error::Msg("disk gone".into())),
        _ => Ok(tensor(&good[i])),
    });
    let err = BatchNormRefresh::new(model.stats(), items)
        .run(&model)
        .unwrap_err();
    assert!(err.to_string().contains("disk gone"), "{err}");
    assert_eq!(after(&model), before);

    // The model fails (wrong number of channels).
    let bad = Tensor::zeros((4, 3), DType::F64, &Device::Cpu)?;
    assert!(
        BatchNormRefresh::new(model.stats(), std::iter::once(&bad).map(|t| Ok(t.clone())))
            .run(&model)
            .is_err()
    );
    assert_eq!(after(&model), before);
    Ok(())
}

#[test]
fn a_layer_the_forward_does_not_reach_is_named() -> Result<()> {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    let stray = BatchNorm::new(2, BatchNormConfig::default(), f64_vb(&varmap).pp("stray"))?;
    let mut layers = model.stats();
    layers.push(BatchNormStats::of_layer(&stray)?);
    assert_eq!(
        invalid_name(refresh(layers, &three_batches()).run(&model)),
        "stray"
    );
    Ok(())
}

#[test]
fn model_without_batchnorm_pays_nothing() -> Result<()> {
    let never = std::iter::from_fn(|| -> Option<candle_core::Result<Tensor>> {
        panic!("the iterator must not be pulled")
    });
    let identity = candle_nn::func_t(|xs: &Tensor, _| Ok(xs.clone()));
    let r = BatchNormRefresh::new(Vec::new(), never);
    assert!(!r.is_active());
    assert_eq!(r.run(&identity)?, 0);
    assert_eq!(r.with_fraction(0.5)?.run(&identity)?, 0);
    Ok(())
}

/// candle-nn's own BatchNorm, found by name in the VarMap: after the refresh it holds, per
/// channel, the equal-weight mean over batches of the batch means and of the unbiased batch
/// variances (torch's `update_bn`), computed here independently in f64.
#[test]
fn candle_nn_batchnorm_refresh_is_exact() -> Result<()> {
    let device = Device::Cpu;
    let (channels, h, w) = (3usize, 4usize, 5usize);
    // 23 images: batch sizes 8 → 8, 8, 7; 5 → 5·4 + 3; 23 → one batch; 2 → 11·2 + 1.
    let n = 23usize;
    let values: Vec<f32> = (0..n * channels * h * w)
        .map(|i| ((i * 7919 % 1009) as f32 / 100.0 - 5.0) * (1.0 + (i % 3) as f32))
        .collect();
    let x = Tensor::from_vec(values.clone(), (n, channels, h, w), &device)?;
    for batch_size in [8usize, 5, 23, 2] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let conv_bn = candle_nn::batch_norm(channels, 1e-5, vb.pp("features.bn"))?;
        // Stale statistics from other data.
        conv_bn.forward_t(&(x.narrow(0, 0, 4)? * 3.0)?, true)?;
        let layers = BatchNormStats::from_varmap(&varmap)?;
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].name(), "features.bn");
        let model = candle_nn::func_t(|xs: &Tensor, train: bool| conv_bn.forward_t(xs, train));
        let batches = candle_swag::predictive::batches(&x, batch_size)?;
        let used = BatchNormRefresh::new(layers, batches).run(&model)?;
        assert_eq!(used, n.div_ceil(batch_size));

        // f64 reference: per batch, per channel, mean and unbiased variance.
        let mut mean = vec![0.0f64; channels];
        let mut var = vec![0.0f64; channels];
        let mut k = 0.0;
        for start in (0..n).step_by(batch_size) {
            let rows = batch_size.min(n - start);
            for c in 0..channels {
                let vals: Vec<f64> = (start..start + rows)
                    .flat_map(|i| {
                        let base = (i * channels + c) * h * w;
                        values[base..base + h * w].iter().map(|&v| f64::from(v))
                    })
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let ss: f64 = vals.iter().map(|v| (v - m) * (v - m)).sum();
                mean[c] += m;
                var[c] += ss / (vals.len() as f64 - 1.0);
            }
            k += 1.0;
        }
        let got_mean: Vec<f64> = vec1(conv_bn.running_mean());
        let got_var: Vec<f64> = vec1(conv_bn.running_var());
        for c in 0..channels {
            let (wm, wv) = (mean[c] / k, var[c] / k);
            assert!(
                (got_mean[c] - wm).abs() <= 1e-6 * wm.abs().max(1.0),
                "batch {batch_size} channel {c}: mean {} vs {wm}",
                got_mean[c]
            );
            assert!(
                (got_var[c] - wv).abs() <= 1e-6 * wv.abs().max(1.0),
                "batch {batch_size} channel {c}: var {} vs {wv}",
                got_var[c]
            );
        }
        // The refreshed statistics are what the eval forward uses.
        let eval = conv_bn.forward_t(&x, false)?;
        assert_eq!(eval.dims(), x.dims());
    }
    Ok(())
}

#[test]
fn layers_found_by_name_or_given_by_the_user() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let a = candle_nn::batch_norm(2, 1e-5, vb.pp("a"))?;
    let _b = candle_nn::batch_norm(2, 1e-5, vb.pp("b"))?;
    let _fc = candle_nn::linear(2, 2, vb.pp("fc"))?;
    let all = BatchNormStats::from_varmap(&varmap)?;
    let names: Vec<&str> = all.iter().map(|l| l.name()).collect();
    assert_eq!(names, ["a", "b"]);
    let only = BatchNormStats::from_varmap_named(&varmap, &["b"])?;
    assert_eq!(only.len(), 1);
    assert_eq!(
        invalid_name(BatchNormStats::from_varmap_named(&varmap, &["fc"])),
        "prefixes"
    );
    assert_eq!(
        invalid_name(BatchNormStats::from_varmap_with_momentum(&varmap, 0.0)),
        "momentum"
    );
    // From the layer itself: its momentum, and the very Vars it updates.
    let given = BatchNormStats::of_candle_nn("a", &a)?;
    assert_eq!(given.momentum(), 0.1);
    let x = Tensor::new(&[[1f32, 2.0], [3.0, 5.0]], &Device::Cpu)?;
    a.forward_t(&x, true)?;
    assert_eq!(
        given.running_mean().as_tensor().to_vec1::<f32>()?,
        a.running_mean().to_vec1::<f32>()?
    );
    // A VarMap without BatchNorm gives no layer.
    let plain = VarMap::new();
    let _ = candle_nn::linear(
        2,
        2,
        VarBuilder::from_varmap(&plain, DType::F32, &Device::Cpu),
    );
    assert!(BatchNormStats::from_varmap(&plain)?.is_empty());
    Ok(())
}

/// A candle-nn layer built from tensors that live outside any VarMap (e.g. weights loaded
/// read-only) still keeps its statistics in Vars: passed by hand, it refreshes exactly too.
#[test]
fn layer_loaded_outside_a_varmap_refreshes_exactly() -> Result<()> {
    let device = Device::Cpu;
    let mean = Tensor::new(&[9f32, -9.0], &device)?;
    let var = Tensor::new(&[4f32, 4.0], &device)?;
    let weight = Tensor::new(&[1f32, 1.0], &device)?;
    let bias = Tensor::new(&[0f32, 0.0], &device)?;
    let bn = candle_nn::BatchNorm::new(2, mean, var, weight, bias, 1e-5)?;
    let layers = vec![BatchNormStats::of_candle_nn("bn", &bn)?];
    let model = candle_nn::func_t(|xs: &Tensor, t: bool| bn.forward_t(xs, t));
    let data = Tensor::new(
        &[[1f32, 10.0], [3.0, 14.0], [-2.0, 0.5], [0.0, 1.5]],
        &device,
    )?;
    let r = BatchNormRefresh::new(layers, candle_swag::predictive::batches(&data, 2)?);
    r.run(&model)?;
    // Batches {[1,10],[3,14]} and {[-2,0.5],[0,1.5]}: means (2, 12), (−1, 1); unbiased
    // variances (2, 8), (2, 0.5).
    let m = bn.running_mean().to_vec1::<f32>()?;
    let v = bn.running_var().to_vec1::<f32>()?;
    for (got, want) in m
        .iter()
        .zip([0.5f32, 6.5])
        .chain(v.iter().zip([2.0f32, 4.25]))
    {
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    Ok(())
}

#[test]
fn bad_inputs_and_settings_are_refused() -> Result<()> {
    let varmap = VarMap::new();
    let vb = f64_vb(&varmap);
    assert_eq!(
        invalid_name(
            BatchNormParams {
                momentum: 1.5,
                ..Default::default()
            }
            .check()
        ),
        "momentum"
    );
    assert_eq!(
        invalid_name(
            BatchNormParams {
                eps: -1.0,
                ..Default::default()
            }
            .check()
        ),
        "eps"
    );
    assert_eq!(
        invalid_name(
            BatchNormParams {
                eps: f64::NAN,
                ..Default::default()
            }
            .check()
        ),
        "eps"
    );
    assert_eq!(
        invalid_name(BatchNorm::new(0, BatchNormConfig::default(), vb.pp("z"))),
        "num_features"
    );

    let bn = BatchNorm::new(2, BatchNormConfig::default(), vb.pp("bn"))?;
    assert_eq!(invalid_name(bn.set_momentum(Some(-0.1))), "momentum");
    // One value per channel cannot give an unbiased variance.
    assert_eq!(
        invalid_name(bn.forward_train(&tensor(&[vec![1.0, 2.0]]))),
        "xs"
    );
    let wrong = Tensor::zeros((3, 5), DType::F64, &Device::Cpu)?;
    assert_eq!(invalid_name(bn.forward_eval(&wrong)), "xs");
    let rank1 = Tensor::zeros(4, DType::F64, &Device::Cpu)?;
    let err = bn.forward_t(&rank1, true).unwrap_err().to_string();
    assert!(err.contains("xs") && err.contains("[4]"), "{err}");
    Ok(())
}

/// The moving-average fallback follows the layer's own rule
/// `running ← (1 − m)·running + m·batch` batch after batch, `passes` times over the data,
/// starting from the statistics the layer had: here candle-nn's layer (m = 0.1) with stale
/// statistics, two batches, one and two passes, against the recursion written out in f64.
#[test]
fn moving_average_fallback_follows_the_layer_momentum() -> Result<()> {
    let device = Device::Cpu;
    let data = Tensor::new(
        &[[1f32, 10.0], [3.0, 14.0], [-2.0, 0.5], [0.0, 1.5]],
        &device,
    )?;
    // Batch means (2, 12), (−1, 1); unbiased variances (2, 8), (2, 0.5).
    let batch_stats = [([2.0, 12.0], [2.0, 8.0]), ([-1.0, 1.0], [2.0, 0.5])];
    for passes in [1usize, 2] {
        let bn = candle_nn::BatchNorm::new(
            2,
            Tensor::new(&[9f32, -9.0], &device)?,
            Tensor::new(&[4f32, 4.0], &device)?,
            Tensor::new(&[1f32, 1.0], &device)?,
            Tensor::new(&[0f32, 0.0], &device)?,
            1e-5,
        )?;
        let model = candle_nn::func_t(|xs: &Tensor, t: bool| bn.forward_t(xs, t));
        let r =
            BatchNormRefresh::moving_average(candle_swag::predictive::batches(&data, 2)?, passes)?;
        assert_eq!(r.run(&model)?, 2);
        let (mut mean, mut var) = ([9.0f64, -9.0], [4.0f64, 4.0]);
        for _ in 0..passes {
            for (bm, bv) in &batch_stats {
                for c in 0..2 {
                    mean[c] = 0.9 * mean[c] + 0.1 * bm[c];
                    var[c] = 0.9 * var[c] + 0.1 * bv[c];
                }
            }
        }
        assert_all_close(&vec1(bn.running_mean()), &mean, 1e-6, "moving-average mean");
        assert_all_close(&vec1(bn.running_var()), &var, 1e-6, "moving-average var");
    }
    let batches = candle_swag::predictive::batches(&data, 2)?;
    assert_eq!(
        invalid_name(BatchNormRefresh::moving_average(batches, 0)),
        "passes"
    );
    Ok(())
}

#[test]
fn from_varmap_takes_the_momentum_candle_nn_builds_layers_with() -> candle_swag::Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = candle_nn::batch_norm(3, 1e-5, vb.pp("bn"))?;
    let stats = BatchNormStats::from_varmap(&varmap)?;
    assert_eq!(stats.len(), 1);
    // The same momentum the layer reports, without the user having to know it.
    assert_eq!(stats[0].momentum(), layer.momentum());
    assert_eq!(
        BatchNormStats::of_candle_nn("bn", &layer)?.momentum(),
        stats[0].momentum()
    );
    // Layers built with another momentum say so explicitly.
    let other = BatchNormStats::from_varmap_with_momentum(&varmap, 0.25)?;
    assert_eq!(other[0].momentum(), 0.25);
    assert!(BatchNormStats::from_varmap_with_momentum(&varmap, 1.5).is_err());
    Ok(())
}
