//! `ops::dropout` and `ops::DropoutStream`: the mask against a slow element-by-element
//! implementation of the documented keying, the keep rate, the gradient, layouts and dtypes,
//! and bad input.

use candle_core::{DType, Device, Tensor, Var};
use candle_swag::swag::normals::philox4x32_10;
use candle_swag_transformers::ops::{dropout, DropoutStream};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The documented rule, one element at a time: element `i` is kept when word `i mod 4` of
/// Philox at counter `[g, g >> 32, call, call >> 32]`, key `[seed, seed >> 32]` (`g = i / 4`)
/// is at least `round(p · 2³²)`.
fn slow_keep(n: usize, p: f32, seed: u64, call: u64) -> Vec<bool> {
    let threshold = (f64::from(p) * 4_294_967_296.0).round();
    (0..n)
        .map(|i| {
            let g = (i / 4) as u64;
            let words = philox4x32_10(
                [g as u32, (g >> 32) as u32, call as u32, (call >> 32) as u32],
                [seed as u32, (seed >> 32) as u32],
            );
            f64::from(words[i % 4]) >= threshold
        })
        .collect()
}

/// `x` with values 1 + i/n (none is 0, so a kept element is told from a dropped one).
fn ramp(n: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / n as f32).collect();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

#[test]
fn the_mask_follows_the_documented_keying_across_blocks() -> Result<()> {
    // 3 rayon blocks of 16384 and a ragged tail; a seed and call using both 32-bit halves.
    let n = 3 * 16384 + 7;
    let (p, seed, call) = (0.3f32, 0x1234_5678_9abc_def0u64, (5u64 << 32) + 11);
    let x = ramp(n)?;
    let y = dropout(&x, p, seed, call)?.to_vec1::<f32>()?;
    let xs = x.to_vec1::<f32>()?;
    let scale = (1.0 / (1.0 - f64::from(p))) as f32;
    for (i, keep) in slow_keep(n, p, seed, call).into_iter().enumerate() {
        let want = if keep { xs[i] * scale } else { 0.0 };
        assert_eq!(y[i], want, "element {i}");
    }
    Ok(())
}

#[test]
fn the_keep_rate_is_one_minus_p() -> Result<()> {
    let n = 1_000_000;
    for p in [0.1f32, 0.5, 0.9] {
        let y = dropout(&Tensor::ones(n, DType::F32, &Device::Cpu)?, p, 3, 0)?;
        let kept = y
            .ne(0f32)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?
            / n as f64;
        // Five binomial standard errors.
        let se = (f64::from(p) * (1.0 - f64::from(p)) / n as f64).sqrt();
        assert!(
            (kept - (1.0 - f64::from(p))).abs() < 5.0 * se,
            "p = {p}: kept {kept}"
        );
        // Inverted dropout keeps the mean: E[y] = 1.
        let mean = y.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?;
        assert!(
            (mean - 1.0).abs() < 5.0 * se / (1.0 - f64::from(p)),
            "p = {p}: mean {mean}"
        );
    }
    Ok(())
}

#[test]
fn seed_and_call_select_the_mask() -> Result<()> {
    let x = ramp(4096)?;
    let a = dropout(&x, 0.5, 1, 0)?.to_vec1::<f32>()?;
    assert_eq!(a, dropout(&x, 0.5, 1, 0)?.to_vec1::<f32>()?);
    assert_ne!(a, dropout(&x, 0.5, 1, 1)?.to_vec1::<f32>()?);
    assert_ne!(a, dropout(&x, 0.5, 2, 0)?.to_vec1::<f32>()?);
    Ok(())
}

#[test]
fn the_gradient_is_the_same_mask_times_the_scale() -> Result<()> {
    let n = 20_000;
    let (p, seed, call) = (0.25f32, 9, 4);
    let x = Var::from_tensor(&ramp(n)?)?;
    let w: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 - 3.0).collect();
    let w = Tensor::from_vec(w, n, &Device::Cpu)?;
    let loss = (dropout(x.as_tensor(), p, seed, call)? * &w)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads
        .get(&x)
        .ok_or("no gradient reached x")?
        .to_vec1::<f32>()?;
    let scale = (1.0 / (1.0 - f64::from(p))) as f32;
    let w = w.to_vec1::<f32>()?;
    for (i, keep) in slow_keep(n, p, seed, call).into_iter().enumerate() {
        let want = if keep { w[i] * scale } else { 0.0 };
        assert_eq!(g[i], want, "element {i}");
    }
    Ok(())
}

#[test]
fn a_strided_input_is_masked_by_logical_index() -> Result<()> {
    // The transpose's element (r, c) has logical index r * 5 + c.
    let base = Tensor::arange(1f32, 36.0, &Device::Cpu)?.reshape((5, 7))?;
    let t = base.t()?;
    assert!(!t.is_contiguous());
    let y = dropout(&t, 0.5, 21, 2)?;
    let want = dropout(&t.contiguous()?, 0.5, 21, 2)?;
    assert_eq!(y.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn every_float_dtype_gets_the_same_mask() -> Result<()> {
    let x = ramp(1000)?;
    let keep = slow_keep(1000, 0.4, 5, 6);
    for dtype in [DType::F64, DType::F16, DType::BF16] {
        let y = dropout(&x.to_dtype(dtype)?, 0.4, 5, 6)?;
        assert_eq!(y.dtype(), dtype);
        let y = y.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let xs = x.to_dtype(dtype)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for (i, &k) in keep.iter().enumerate() {
            if k {
                // Scaled once in f32 (f64 for f64) and rounded to the dtype.
                let want = xs[i] / 0.6;
                assert!((y[i] - want).abs() <= want * 1e-2, "{dtype:?} element {i}");
            } else {
                assert_eq!(y[i], 0.0, "{dtype:?} element {i}");
            }
        }
    }
    Ok(())
}

#[test]
fn the_stream_numbers_its_calls_from_zero() -> Result<()> {
    let x = ramp(512)?;
    let s = DropoutStream::new(77);
    let first = s.apply(&x, 0.5)?.to_vec1::<f32>()?;
    // p = 0 takes no number and changes nothing.
    assert_eq!(s.apply(&x, 0.0)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
    let second = s.apply(&x, 0.5)?.to_vec1::<f32>()?;
    assert_eq!(s.calls(), 2);
    assert_eq!(first, dropout(&x, 0.5, 77, 0)?.to_vec1::<f32>()?);
    assert_eq!(second, dropout(&x, 0.5, 77, 1)?.to_vec1::<f32>()?);
    Ok(())
}

#[test]
fn bad_input_is_an_error_naming_it() -> Result<()> {
    let x = ramp(8)?;
    for p in [1.0f32, -0.1, f32::NAN] {
        let e = dropout(&x, p, 0, 0).err().ok_or("accepted a bad p")?;
        assert!(e.to_string().contains("probability"), "{e}");
    }
    let ints = Tensor::arange(0u32, 8, &Device::Cpu)?;
    let e = dropout(&ints, 0.5, 0, 0).err().ok_or("accepted u32")?;
    assert!(e.to_string().contains("U32"), "{e}");
    Ok(())
}
