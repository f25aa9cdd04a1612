//! BatchNorm layer and refresh against hand computations in f64.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_swag::batchnorm::{
    batchnorm_buffer_names, batchnorm_buffers, refresh_batchnorm, BatchNorm, BatchNormConfig,
    HasBatchNorm,
};
use candle_swag::Error;

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

fn invalid_name<T: std::fmt::Debug>(r: candle_swag::Result<T>) -> String {
    match r {
        Err(Error::InvalidArgument { name, .. }) => name,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn variables_live_in_the_varmap_under_candle_nn_names() {
    let varmap = VarMap::new();
    let bn = BatchNorm::new(
        3,
        BatchNormConfig::default(),
        f64_vb(&varmap).pp("block.bn0"),
    )
    .unwrap();
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
    assert_eq!(
        batchnorm_buffer_names(&bn),
        ["block.bn0.running_mean", "block.bn0.running_var"]
    );
    let buffers = batchnorm_buffers(&bn);
    assert_eq!(buffers.len(), 2);
    assert_eq!(buffers[0].0, "block.bn0.running_mean");

    // A train step updates the very Var held by the VarMap.
    let x = tensor(&[vec![1.0, 2.0, 3.0], vec![3.0, 6.0, 9.0]]);
    bn.forward_t(&x, true).unwrap();
    let in_map = varmap.data().lock().unwrap()["block.bn0.running_mean"].clone();
    assert_all_close(
        &vec1(in_map.as_tensor()),
        &[0.2, 0.4, 0.6],
        1e-12,
        "mean in map",
    );

    // Without affine there is no weight or bias.
    let varmap2 = VarMap::new();
    let cfg = BatchNormConfig {
        affine: false,
        ..Default::default()
    };
    let plain = BatchNorm::new(2, cfg, f64_vb(&varmap2).pp("bn")).unwrap();
    assert!(plain.weight_and_bias().is_none());
    assert_eq!(varmap2.data().lock().unwrap().len(), 2);
}

#[test]
fn train_and_eval_match_hand_computation() {
    let mut varmap = VarMap::new();
    let bn = BatchNorm::new(2, BatchNormConfig::default(), f64_vb(&varmap).pp("bn")).unwrap();
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
    let y = bn.forward_t(&tensor(&rows), true).unwrap();
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
    let y_eval = bn.forward_t(&tensor(&probe), false).unwrap();
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
}

#[test]
fn three_dimensional_input_normalises_over_all_dims_but_one() {
    let varmap = VarMap::new();
    let bn = BatchNorm::new(2, BatchNormConfig::default(), f64_vb(&varmap).pp("bn")).unwrap();
    // x[n][c][l], N = 2, C = 2, L = 3.
    let x: Vec<f64> = vec![
        1.0, 2.0, 3.0, /* n0 c1 */ 10.0, 0.0, -10.0, //
        4.0, 5.0, 9.0, /* n1 c1 */ 1.0, 2.0, 3.0,
    ];
    let t = Tensor::from_vec(x.clone(), (2, 2, 3), &Device::Cpu).unwrap();
    let y = vec1(&bn.forward_t(&t, true).unwrap());
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
}

#[test]
fn agrees_with_candle_nn_batchnorm_on_the_same_vars() {
    let mut varmap = VarMap::new();
    let ours = BatchNorm::new(3, BatchNormConfig::default(), f64_vb(&varmap).pp("bn")).unwrap();
    let theirs = candle_nn::batch_norm(
        3,
        candle_nn::BatchNormConfig::default(),
        f64_vb(&varmap).pp("bn"),
    )
    .unwrap();
    set(&mut varmap, "bn.weight", &[1.5, -0.5, 2.0]);
    set(&mut varmap, "bn.bias", &[0.1, 0.2, 0.3]);
    let x = tensor(&[
        vec![0.3, 1.0, -2.0],
        vec![1.3, -1.0, 2.0],
        vec![2.3, 4.0, 0.0],
    ]);
    let y_ours = vec1(&ours.forward_t(&x, true).unwrap());
    let rm_ours = vec1(ours.running_mean().as_tensor());
    let rv_ours = vec1(ours.running_var().as_tensor());
    ours.reset_running_stats().unwrap();
    let y_theirs = vec1(&theirs.forward_t(&x, true).unwrap());
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
        &vec1(&ours.forward_t(&probe, false).unwrap()),
        &vec1(&theirs.forward_t(&probe, false).unwrap()),
        1e-12,
        "eval output",
    );
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

impl HasBatchNorm for TwoBn {
    fn batchnorms(&self) -> Vec<BatchNorm> {
        vec![self.bn_a.clone(), self.bn_b.clone()]
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

fn ok_batches(batches: &[Vec<Vec<f64>>]) -> Vec<candle_swag::Result<Tensor>> {
    batches.iter().map(|b| Ok(tensor(b))).collect()
}

#[test]
fn refresh_reproduces_exact_mean_of_batch_statistics() {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    model.bn_b.set_momentum(Some(0.3)).unwrap();
    // Put stale statistics in place first.
    for _ in 0..3 {
        model
            .forward_t(&tensor(&[vec![50.0, -50.0], vec![60.0, 40.0]]), true)
            .unwrap();
    }

    let batches = three_batches();
    let used = refresh_batchnorm(&model, ok_batches(&batches), None).unwrap();
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
        assert_eq!(bn.batches_seen(), 3);
    }
    // First layer by hand: means of batch means of channel 0 = (2 + 5/3 + 91.25) / 3.
    let m0 = (2.0 + 5.0 / 3.0 + 91.25) / 3.0;
    assert!((vec1(model.bn_a.running_mean().as_tensor())[0] - m0).abs() < 1e-12);

    // Update rules restored.
    assert_eq!(model.bn_a.momentum(), Some(0.1));
    assert_eq!(model.bn_b.momentum(), Some(0.3));
}

#[test]
fn refresh_with_fraction_uses_the_documented_number_of_batches() {
    let mut base = three_batches();
    for i in 0..7 {
        base.push(vec![vec![i as f64, 2.0 * i as f64], vec![-(i as f64), 1.0]]);
    }
    assert_eq!(base.len(), 10);
    for (fraction, want_used) in [(0.3, 3usize), (0.25, 3), (0.01, 1), (0.95, 10), (1.0, 10)] {
        let mut varmap = VarMap::new();
        let model = two_bn(&mut varmap);
        let used = refresh_batchnorm(&model, ok_batches(&base), Some(fraction)).unwrap();
        assert_eq!(used, want_used, "fraction {fraction}");
        let want = expected_refresh(&base[..want_used]);
        assert_all_close(
            &vec1(model.bn_b.running_var().as_tensor()),
            &want[1].1,
            1e-13,
            &format!("fraction {fraction}"),
        );

        // An iterator without an exact length gives the same count (it is collected first).
        let mut varmap2 = VarMap::new();
        let model2 = two_bn(&mut varmap2);
        let inexact = ok_batches(&base).into_iter().filter(|_| true);
        assert_eq!(
            refresh_batchnorm(&model2, inexact, Some(fraction)).unwrap(),
            want_used
        );
    }
}

#[test]
fn invalid_fraction_and_empty_iterator_are_refused() {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    for f in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            invalid_name(refresh_batchnorm(
                &model,
                ok_batches(&three_batches()),
                Some(f)
            )),
            "fraction"
        );
    }
    model
        .forward_t(&tensor(&[vec![5.0, 6.0], vec![7.0, 9.0]]), true)
        .unwrap();
    let before = vec1(model.bn_a.running_mean().as_tensor());
    assert_eq!(
        invalid_name(refresh_batchnorm(&model, Vec::new(), None)),
        "batches"
    );
    assert_eq!(
        vec1(model.bn_a.running_mean().as_tensor()),
        before,
        "left unchanged"
    );
}

#[test]
fn momentum_is_restored_after_an_error() {
    let mut varmap = VarMap::new();
    let model = two_bn(&mut varmap);
    model.bn_a.set_momentum(Some(0.7)).unwrap();
    model.bn_b.set_momentum(None).unwrap();

    // The iterator fails on its second item.
    let items: Vec<candle_swag::Result<Tensor>> = vec![
        Ok(tensor(&three_batches()[0])),
        Err(Error::invalid("loader", "disk gone")),
        Ok(tensor(&three_batches()[1])),
    ];
    assert_eq!(
        invalid_name(refresh_batchnorm(&model, items, None)),
        "loader"
    );
    assert_eq!(model.bn_a.momentum(), Some(0.7));
    assert_eq!(model.bn_b.momentum(), None);

    // The model fails (wrong number of channels).
    let bad = Tensor::zeros((4, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(refresh_batchnorm(&model, vec![Ok(bad)], None).is_err());
    assert_eq!(model.bn_a.momentum(), Some(0.7));
    assert_eq!(model.bn_b.momentum(), None);

    // A successful refresh afterwards also restores them.
    refresh_batchnorm(&model, ok_batches(&three_batches()), None).unwrap();
    assert_eq!(model.bn_a.momentum(), Some(0.7));
    assert_eq!(model.bn_b.momentum(), None);
}

struct NoBn;

impl candle_core::Module for NoBn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(xs.clone())
    }
}

impl HasBatchNorm for NoBn {
    fn batchnorms(&self) -> Vec<BatchNorm> {
        Vec::new()
    }
}

#[test]
fn model_without_batchnorm_pays_nothing() {
    let never = std::iter::from_fn(|| -> Option<candle_swag::Result<Tensor>> {
        panic!("the iterator must not be pulled")
    });
    assert_eq!(refresh_batchnorm(&NoBn, never, None).unwrap(), 0);
    let never = std::iter::from_fn(|| -> Option<candle_swag::Result<Tensor>> {
        panic!("the iterator must not be pulled")
    });
    assert_eq!(refresh_batchnorm(&NoBn, never, Some(0.5)).unwrap(), 0);
}

#[test]
fn bad_inputs_and_settings_are_refused() {
    let varmap = VarMap::new();
    let vb = f64_vb(&varmap);
    let bad_momentum = BatchNormConfig {
        momentum: 1.5,
        ..Default::default()
    };
    assert_eq!(
        invalid_name(BatchNorm::new(2, bad_momentum, vb.pp("x"))),
        "momentum"
    );
    let bad_eps = BatchNormConfig {
        eps: -1.0,
        ..Default::default()
    };
    assert_eq!(invalid_name(BatchNorm::new(2, bad_eps, vb.pp("y"))), "eps");
    assert_eq!(
        invalid_name(BatchNorm::new(0, BatchNormConfig::default(), vb.pp("z"))),
        "num_features"
    );

    let bn = BatchNorm::new(2, BatchNormConfig::default(), vb.pp("bn")).unwrap();
    assert_eq!(invalid_name(bn.set_momentum(Some(-0.1))), "momentum");
    // One value per channel cannot give an unbiased variance.
    assert_eq!(
        invalid_name(bn.forward_train(&tensor(&[vec![1.0, 2.0]]))),
        "xs"
    );
    let wrong = Tensor::zeros((3, 5), DType::F64, &Device::Cpu).unwrap();
    assert_eq!(invalid_name(bn.forward_eval(&wrong)), "xs");
    let rank1 = Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap();
    let err = bn.forward_t(&rank1, true).unwrap_err().to_string();
    assert!(err.contains("xs") && err.contains("[4]"), "{err}");
}
