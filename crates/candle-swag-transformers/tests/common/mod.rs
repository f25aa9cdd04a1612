//! What the family tests share.

use candle_core::{Device, Tensor, Var};
use candle_swag::{Error, Result};

/// Checks an f32 parameter's gradient `grad` against central differences of `loss` (computed
/// in f64 by the caller) along a fixed unit direction d, with step ε = 1e-3.
///
/// The analytic side is `Σ gᵢ (θ⁺ᵢ − θ⁻ᵢ) / 2ε` over the steps actually taken, θ± = θ ± εd
/// rounded to f32: comparing with `<g, d>` instead would add the rounding of every θ±ᵢ
/// (up to 1e-5 of the step each), which the sum's cancellation can magnify past the
/// tolerance for some random initial weights. Relative error < 1e-3 (floor 1e-3 on the
/// analytic value). `var` is restored afterwards.
pub fn check_directional_derivative(
    label: &str,
    var: &Var,
    grad: &Tensor,
    mut loss: impl FnMut() -> Result<f64>,
) -> Result<()> {
    let theta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let d: Vec<f32> = (0..theta.len())
        .map(|i| ((i * 7 + 3) % 11) as f32 / 11.0 - 0.45)
        .collect();
    let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
    let eps = 1e-3f32;
    let moved = |sign: f32| -> Vec<f32> {
        theta
            .iter()
            .zip(&d)
            .map(|(t, d)| t + sign * eps * d / norm)
            .collect()
    };
    let (plus, minus) = (moved(1.0), moved(-1.0));
    let g = grad.flatten_all()?.to_vec1::<f32>()?;
    let analytic: f64 = g
        .iter()
        .zip(plus.iter().zip(&minus))
        .map(|(g, (p, m))| f64::from(*g) * (f64::from(*p) - f64::from(*m)))
        .sum::<f64>()
        / (2.0 * f64::from(eps));
    var.set(&Tensor::from_vec(plus, var.dims(), &Device::Cpu)?)?;
    let up = loss()?;
    var.set(&Tensor::from_vec(minus, var.dims(), &Device::Cpu)?)?;
    let down = loss()?;
    var.set(&Tensor::from_vec(theta, var.dims(), &Device::Cpu)?)?;
    let numeric = (up - down) / (2.0 * f64::from(eps));
    let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
    if err >= 1e-3 {
        return Err(Error::invalid(
            "gradient",
            format!("{label}: analytic {analytic}, central difference {numeric} (rel {err})"),
        ));
    }
    Ok(())
}
