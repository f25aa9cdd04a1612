//! SWA and EMA averages against hand computations.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_swag::averaging::{AveragingRule, ParameterAverage};
use candle_swag::layout::ParamSet;
use candle_swag::Error;

/// Two parameters: `a` [2, 2] and `b` [3]; layout order as given.
fn params() -> (ParamSet, Var, Var) {
    let a = Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let b = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let set =
        ParamSet::from_named_vars(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
    (set, a, b)
}

/// Three snapshots of the 7 scalars (a row-major, then b).
fn snapshots() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, 2.0, 3.0, 4.0, 10.0, -1.0, 0.5],
        vec![-3.0, 0.25, 7.0, 4.0, 20.0, 1.0, 0.0],
        vec![0.5, 8.0, -6.0, 1.0, -15.0, 2.5, 3.5],
    ]
}

fn load(a: &Var, b: &Var, values: &[f32]) {
    a.set(&Tensor::from_slice(&values[..4], (2, 2), &Device::Cpu).unwrap())
        .unwrap();
    b.set(&Tensor::from_slice(&values[4..], 3, &Device::Cpu).unwrap())
        .unwrap();
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn flat_of(a: &Var, b: &Var) -> Vec<f32> {
    let mut v: Vec<f32> = a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    v.extend(b.as_tensor().to_vec1::<f32>().unwrap());
    v
}

#[test]
fn swa_equals_hand_mean_of_three_snapshots() -> Result<()> {
    let (set, a, b) = params();
    let mut swa = ParameterAverage::swa(&set)?;
    assert_eq!(swa.rule(), AveragingRule::Swa);
    assert_eq!(swa.count(), 0);
    for s in snapshots() {
        load(&a, &b, &s);
        swa.update(&set)?;
    }
    assert_eq!(swa.count(), 3);
    let want: Vec<f64> = (0..7)
        .map(|i| snapshots().iter().map(|s| s[i] as f64).sum::<f64>() / 3.0)
        .collect();
    let avg: Vec<f32> = swa.average()?.to_vec1()?;
    assert_close(&avg, &want, "swa average");

    // Written back under the parameters' shapes.
    swa.write_into(&set)?;
    assert_close(&flat_of(&a, &b), &want, "written weights");
    assert_eq!(a.dims(), [2, 2]);
    Ok(())
}

#[test]
fn ema_matches_hand_recursion() -> Result<()> {
    let decay = 0.75;
    let (set, a, b) = params();
    let mut ema = ParameterAverage::ema(&set, decay)?;
    let mut want: Vec<f64> = Vec::new();
    for (k, s) in snapshots().iter().enumerate() {
        load(&a, &b, s);
        ema.update(&set)?;
        if k == 0 {
            want = s.iter().map(|&x| x as f64).collect();
        } else {
            for (w, &x) in want.iter_mut().zip(s) {
                *w = decay * *w + (1.0 - decay) * x as f64;
            }
        }
        let got: Vec<f32> = ema.average()?.to_vec1()?;
        assert_close(&got, &want, &format!("ema after {} updates", k + 1));
    }
    // Spot check one value fully by hand: a[0] = 0.75*(0.75*1 + 0.25*-3) + 0.25*0.5 = 0.125.
    let got: Vec<f32> = ema.average()?.to_vec1()?;
    assert!((got[0] - 0.125).abs() < 1e-6, "{}", got[0]);
    assert_eq!(ema.count(), 3);
    Ok(())
}

#[test]
fn single_parameter_average_is_not_a_view_of_the_weights() -> Result<()> {
    // Flattening one contiguous parameter is a view; the first update must copy it.
    let w = Var::from_slice(&[1.0f32, 2.0], 2, &Device::Cpu)?;
    let set = ParamSet::from_named_vars(vec![("w".into(), w.clone())])?;
    let mut swa = ParameterAverage::swa(&set)?;
    swa.update(&set)?;
    w.set(&Tensor::from_slice(&[5.0f32, 6.0], 2, &Device::Cpu)?)?;
    assert_eq!(swa.average()?.to_vec1::<f32>()?, [1.0, 2.0]);
    swa.update(&set)?;
    assert_eq!(swa.average()?.to_vec1::<f32>()?, [3.0, 4.0]);
    // Writing back into the same Var works (no shared storage).
    swa.write_into(&set)?;
    assert_eq!(w.as_tensor().to_vec1::<f32>()?, [3.0, 4.0]);
    Ok(())
}

#[test]
fn buffers_are_averaged_with_the_same_rule_and_written_by_name() -> Result<()> {
    let (set, a, b) = params();
    let rm = Var::zeros(2, DType::F32, &Device::Cpu)?;
    let rv = Var::ones(2, DType::F32, &Device::Cpu)?;
    let buffers = vec![
        ("bn.running_mean".to_string(), rm.clone()),
        ("bn.running_var".to_string(), rv.clone()),
    ];
    let mut swa = ParameterAverage::swa(&set)?.with_buffers(buffers.clone())?;
    let means = [[1.0f32, 2.0], [3.0, -2.0], [8.0, 0.0]];
    let vars = [[1.0f32, 4.0], [2.0, 2.0], [6.0, 0.0]];
    for (i, s) in snapshots().iter().enumerate() {
        load(&a, &b, s);
        rm.set(&Tensor::from_slice(&means[i], 2, &Device::Cpu)?)?;
        rv.set(&Tensor::from_slice(&vars[i], 2, &Device::Cpu)?)?;
        swa.update(&set)?;
    }
    let got_mean: Vec<f32> = swa.buffer_average("bn.running_mean").unwrap().to_vec1()?;
    assert_close(&got_mean, &[4.0, 0.0], "running_mean average");
    assert!(swa.buffer_average("nope").is_none());

    // Written into a second model's buffers, by name.
    let other_rm = Var::zeros(2, DType::F32, &Device::Cpu)?;
    let other_rv = Var::zeros(2, DType::F32, &Device::Cpu)?;
    swa.write_buffers_into(&[
        ("bn.running_var".to_string(), other_rv.clone()),
        ("bn.running_mean".to_string(), other_rm.clone()),
    ])?;
    assert_close(&other_rm.as_tensor().to_vec1()?, &[4.0, 0.0], "rm written");
    assert_close(&other_rv.as_tensor().to_vec1()?, &[3.0, 2.0], "rv written");

    // A missing or mis-shaped target buffer is named and nothing is written.
    let err = swa
        .write_buffers_into(&[("bn.running_mean".to_string(), other_rm.clone())])
        .unwrap_err();
    assert!(
        matches!(&err, Error::LayoutMismatch(m) if m.contains("bn.running_var")),
        "{err}"
    );
    let wrong = Var::zeros(3, DType::F32, &Device::Cpu)?;
    let err = swa
        .write_buffers_into(&[
            ("bn.running_mean".to_string(), other_rm.clone()),
            ("bn.running_var".to_string(), wrong),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, Error::LayoutMismatch(m) if m.contains("bn.running_var")),
        "{err}"
    );

    // Registering buffers after the first update is refused.
    let err = swa.clone().with_buffers(buffers).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { ref name, .. } if name == "buffers"));
    Ok(())
}

#[test]
fn errors_are_named_and_leave_the_average_untouched() -> Result<()> {
    let (set, a, b) = params();
    assert!(matches!(
        ParameterAverage::ema(&set, 1.5),
        Err(Error::InvalidArgument { ref name, .. }) if name == "decay"
    ));
    assert!(matches!(
        ParameterAverage::ema(&set, f64::NAN),
        Err(Error::InvalidArgument { ref name, .. }) if name == "decay"
    ));

    let mut swa = ParameterAverage::swa(&set)?;
    assert!(matches!(swa.average(), Err(Error::NotEnoughSnapshots(_))));
    assert!(matches!(
        swa.write_into(&set),
        Err(Error::NotEnoughSnapshots(_))
    ));

    load(&a, &b, &snapshots()[0]);
    swa.update(&set)?;
    let before: Vec<f32> = swa.average()?.to_vec1()?;

    // NaN in b[1] (flat index 5): refused, named, nothing changes.
    let mut bad = snapshots()[1].clone();
    bad[5] = f32::NAN;
    load(&a, &b, &bad);
    let err = swa.update(&set).unwrap_err();
    match &err {
        Error::NonFinite {
            parameter, index, ..
        } => {
            assert_eq!(parameter, "b");
            assert_eq!(*index, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(swa.count(), 1);
    assert_eq!(swa.average()?.to_vec1::<f32>()?, before);

    // A parameter set with another layout is refused.
    let c = Var::zeros(4, DType::F32, &Device::Cpu)?;
    let other = ParamSet::from_named_vars(vec![("a".into(), c)])?;
    assert!(matches!(swa.update(&other), Err(Error::LayoutMismatch(_))));
    assert!(matches!(
        swa.write_into(&other),
        Err(Error::LayoutMismatch(_))
    ));
    assert_eq!(swa.count(), 1);
    Ok(())
}
