//! The heteroscedastic Gaussian NLL against a direct f64 computation of its value, and its
//! autograd gradient against central finite differences of that f64 computation.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_swag_cli::train::loss::{beta_nll, gaussian_nll, softplus_variance, VARIANCE_FLOOR};

/// `softplus(r) + floor`, written the naive way (fine for the moderate `r` used here).
fn variance(r: f64) -> f64 {
    (1.0 + r.exp()).ln() + VARIANCE_FLOOR
}

/// Mean of `½ ln(2π σ²) + (y − μ)²/(2σ²)` over rows `(μ, r)`.
fn nll_f64(out: &[f64], y: &[f64]) -> f64 {
    let n = y.len() as f64;
    out.chunks(2)
        .zip(y)
        .map(|(row, t)| {
            let v = variance(row[1]);
            0.5 * (2.0 * std::f64::consts::PI * v).ln() + (t - row[0]).powi(2) / (2.0 * v)
        })
        .sum::<f64>()
        / n
}

/// The β-NLL with the weights `w_i = σ²_i^β` taken at `at` and held fixed, evaluated at `out`:
/// its gradient at `out = at` is the β-NLL's (the weights carry no gradient).
fn beta_nll_f64(out: &[f64], at: &[f64], y: &[f64], beta: f64) -> f64 {
    let n = y.len() as f64;
    out.chunks(2)
        .zip(at.chunks(2))
        .zip(y)
        .map(|((row, fixed), t)| {
            let v = variance(row[1]);
            let w = variance(fixed[1]).powf(beta);
            w * (0.5 * (2.0 * std::f64::consts::PI * v).ln() + (t - row[0]).powi(2) / (2.0 * v))
        })
        .sum::<f64>()
        / n
}

fn data() -> (Vec<f64>, Vec<f64>) {
    // Means, raw variances from −3 to 4 (σ² from about 0.05 to 4), targets off by various amounts.
    let out = vec![
        0.5, -3.0, -1.2, 0.3, 2.0, 4.0, 0.0, -0.7, 3.1, 1.5, -2.2, -1.9,
    ];
    let y = vec![0.7, -2.0, 1.1, 0.05, 2.0, -1.0];
    (out, y)
}

#[test]
fn value_and_gradient_match_direct_f64_computation() -> Result<()> {
    let (out, y) = data();
    let n = y.len();
    let expected = nll_f64(&out, &y);
    // Central differences, step 1e-6: truncation error O(h²) and rounding O(ε/h) both < 1e-8.
    let h = 1e-6;
    let fd: Vec<f64> = (0..out.len())
        .map(|i| {
            let mut a = out.clone();
            let mut b = out.clone();
            a[i] += h;
            b[i] -= h;
            (nll_f64(&a, &y) - nll_f64(&b, &y)) / (2.0 * h)
        })
        .collect();
    let dev = Device::Cpu;
    for dtype in [DType::F64, DType::F32] {
        // f32 holds 7 digits; f64 should agree to rounding.
        let tol = if dtype == DType::F64 { 1e-8 } else { 2e-5 };
        let o = Var::from_tensor(&Tensor::from_vec(out.clone(), (n, 2), &dev)?.to_dtype(dtype)?)?;
        let t = Tensor::from_vec(y.clone(), n, &dev)?.to_dtype(dtype)?;
        let loss = gaussian_nll(o.as_tensor(), &t)?;
        let v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        assert!(
            (v - expected).abs() < tol * expected.abs().max(1.0),
            "{dtype:?}: {v} vs {expected}"
        );
        let g: Vec<f64> = loss
            .backward()?
            .get(&o)
            .unwrap()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        for (i, (a, b)) in g.iter().zip(&fd).enumerate() {
            assert!(
                (a - b).abs() < tol.max(1e-6) * b.abs().max(1.0),
                "{dtype:?} [{i}]: {a} vs {b}"
            );
        }
        // Targets as a column [n, 1] give the same loss.
        let col = t.reshape((n, 1))?;
        let v2 = gaussian_nll(o.as_tensor(), &col)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert_eq!(v, v2);
    }
    Ok(())
}

#[test]
fn softplus_is_stable_and_floored() -> Result<()> {
    let dev = Device::Cpu;
    let r = Tensor::new(&[-1000f64, -30.0, 0.0, 30.0, 1000.0], &dev)?;
    let v: Vec<f64> = softplus_variance(&r)?.to_vec1()?;
    // softplus(−1000) underflows to 0: the floor is what is left.
    assert_eq!(v[0], VARIANCE_FLOOR);
    assert!((v[1] - ((-30f64).exp() + VARIANCE_FLOOR)).abs() < 1e-20);
    assert!((v[2] - (2f64.ln() + VARIANCE_FLOOR)).abs() < 1e-15);
    assert!((v[3] - (30.0 + (-30f64).exp() + VARIANCE_FLOOR)).abs() < 1e-12);
    assert_eq!(v[4], 1000.0 + VARIANCE_FLOOR); // no overflow
                                               // The gradient is the sigmoid, also far out in the tails.
    let r = Var::new(&[-40f64, 0.0, 40.0], &dev)?;
    let g: Vec<f64> = softplus_variance(r.as_tensor())?
        .sum_all()?
        .backward()?
        .get(&r)
        .unwrap()
        .to_vec1()?;
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for (a, x) in g.iter().zip([-40.0, 0.0, 40.0]) {
        assert!((a - sig(x)).abs() <= 1e-12 * sig(x), "{a} vs {}", sig(x));
    }
    Ok(())
}

#[test]
fn wrong_shapes_are_refused() -> Result<()> {
    let dev = Device::Cpu;
    let y = Tensor::new(&[1f32, 2.0], &dev)?;
    let one_col = Tensor::new(&[[1f32], [2.0]], &dev)?;
    assert!(gaussian_nll(&one_col, &y).is_err());
    let out = Tensor::new(&[[1f32, 0.0], [2.0, 0.0]], &dev)?;
    let three = Tensor::new(&[1f32, 2.0, 3.0], &dev)?;
    let e = gaussian_nll(&out, &three).unwrap_err();
    assert!(e.to_string().contains("3 targets for 2 rows"), "{e}");
    Ok(())
}

#[test]
fn beta_nll_matches_the_fixed_weight_f64_loss_and_its_gradient() -> Result<()> {
    let (out, y) = data();
    let n = y.len();
    let dev = Device::Cpu;
    let h = 1e-6;
    for beta in [0.0, 0.5, 1.0] {
        let expected = beta_nll_f64(&out, &out, &y, beta);
        let fd: Vec<f64> = (0..out.len())
            .map(|i| {
                let mut a = out.clone();
                let mut b = out.clone();
                a[i] += h;
                b[i] -= h;
                (beta_nll_f64(&a, &out, &y, beta) - beta_nll_f64(&b, &out, &y, beta)) / (2.0 * h)
            })
            .collect();
        let o = Var::from_tensor(&Tensor::from_vec(out.clone(), (n, 2), &dev)?)?;
        let t = Tensor::from_vec(y.clone(), n, &dev)?;
        let loss = beta_nll(o.as_tensor(), &t, beta)?;
        let v = loss.to_scalar::<f64>()?;
        assert!(
            (v - expected).abs() < 1e-10,
            "beta {beta}: {v} vs {expected}"
        );
        let grads = loss.backward()?;
        let g: Vec<f64> = grads
            .get(&o)
            .ok_or_else(|| anyhow::anyhow!("no gradient"))?
            .flatten_all()?
            .to_vec1()?;
        for (i, (a, b)) in g.iter().zip(&fd).enumerate() {
            assert!(
                (a - b).abs() < 1e-6 * b.abs().max(1.0),
                "beta {beta} [{i}]: {a} vs {b}"
            );
        }
        if beta == 0.0 {
            assert_eq!(v, gaussian_nll(o.as_tensor(), &t)?.to_scalar::<f64>()?);
        }
        if beta == 1.0 {
            // The mean's gradient is the squared error's, (μ − y)/n, whatever the variance.
            for (i, (row, t)) in out.chunks(2).zip(&y).enumerate() {
                let want = (row[0] - t) / n as f64;
                assert!(
                    (g[2 * i] - want).abs() < 1e-12,
                    "row {i}: {} vs {want}",
                    g[2 * i]
                );
            }
        }
    }
    let o = Tensor::from_vec(out, (n, 2), &dev)?;
    let t = Tensor::from_vec(y, n, &dev)?;
    for bad in [-0.1, 1.5, f64::NAN] {
        let e = beta_nll(&o, &t, bad).unwrap_err().to_string();
        assert!(e.contains("beta"), "{e}");
    }
    Ok(())
}
