//! Training losses: softmax cross-entropy as one fused op, and the Gaussian negative
//! log-likelihood of a mean-variance (heteroscedastic) regression network.
//!
//! # Cross-entropy
//!
//! `loss = (1/n) Σ_i [ logsumexp(z_i) − z_i[y_i] ]`, computed with the row maximum subtracted
//! first (so large logits do not overflow); its gradient with respect to the logits is
//! `(softmax(z_i) − onehot(y_i)) / n`. This replaces the dozen small tensor ops of the generic
//! `log_softmax` + `nll` path, which dominate the cost on batches of 32 rows. Other devices and
//! dtypes use `candle_nn::loss::cross_entropy` (identical up to rounding).
//!
//! # Heteroscedastic Gaussian NLL
//!
//! A network with output `[n, 2]` predicts, per row, a mean `μ` (column 0) and a raw variance
//! parameter `r` (column 1), made positive by **softplus with a floor**:
//! `σ² = softplus(r) + `[`VARIANCE_FLOOR`], `softplus(r) = ln(1 + eʳ)` computed as
//! `max(r, 0) + ln_1p(e^{−|r|})` (one op on CPU for f32 and f64, with `ln_1p` so that a very
//! negative `r` keeps full relative precision and a large one does not overflow; on other
//! devices the same formula from tensor ops with `ln(1 + ·)`, whose absolute error there is one
//! rounding of `1`, below the floor in f64). Its derivative is the sigmoid
//! `σ(r) = exp(r − softplus(r))`.
//! Softplus rather than `exp` of a log-variance: its growth is linear, not exponential, so a
//! large raw output early in training cannot make `σ²` (and the gradient `∂/∂μ = (μ − y)/σ²`)
//! explode or vanish; the floor keeps `1/σ²` bounded when the network drives `r → −∞` on a
//! training row it fits exactly. The loss is
//! `(1/n) Σ_i [ ½ ln(2π) + ½ ln σ²_i + (y_i − μ_i)² / (2σ²_i) ]` (natural logarithms, the
//! constant included so the value is the mean NLL per row in nats, in the units of the
//! targets the network is trained on).
//!
//! The network trains with the **β-NLL** ([`beta_nll`], β = [`BETA_NLL`]): the same per-row
//! NLL weighted by the row's predicted variance to the power β, the weight detached. Plain NLL
//! lets the variance head explain away the mean's errors (a large σ² makes a row's error
//! cheap, so the mean stops fitting it); the weight gives every row's mean the squared-error
//! gradient back at β = 1. Predictions and every reported NLL use the plain likelihood.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

/// The β of the β-NLL a heteroscedastic network trains with ([`beta_nll`]). Measured with
/// `swag bench-uci` on the diabetes, car and Engel tables (README, "Regression: the UCI
/// protocol"): the plain NLL (β = 0) let the variance head explain away the mean's errors (the
/// heteroscedastic SWAG lost 0.04 and 0.22 nats to homoscedastic SWAG on diabetes and cars, and
/// blew up on a car split in `swag fit`); β = 0.5, 0.75 and 1 all fixed the car table, and
/// β = 1 was the one that kept `swag fit`'s heteroscedastic diabetes fit within 0.05 nats of the
/// homoscedastic one.
pub const BETA_NLL: f64 = 1.0;

/// Smallest predicted variance, added to `softplus(r)`: `1e-6` in the (squared) units of the
/// training targets, i.e. a standard deviation of `1e-3` of a standardised target.
pub const VARIANCE_FLOOR: f64 = 1e-6;

/// The [`candle_swag::predictive::VarianceLink`] matching [`gaussian_nll`]: softplus with
/// [`VARIANCE_FLOOR`], so a network trained with this loss predicts with the same variances
/// (the predictive computes the softplus tail as `ln(1 + ·)` rather than `ln_1p`: the two
/// differ by at most one rounding of 1, far below the floor in f64).
pub const VARIANCE_LINK: candle_swag::predictive::VarianceLink =
    candle_swag::predictive::VarianceLink::Softplus {
        min_variance: VARIANCE_FLOOR,
    };

/// The predicted variance `softplus(raw) + VARIANCE_FLOOR` of a raw variance output (any
/// shape, any float dtype; module docs).
pub fn softplus_variance(raw: &Tensor) -> candle_core::Result<Tensor> {
    if raw.device().is_cpu() && matches!(raw.dtype(), DType::F32 | DType::F64) {
        return raw.contiguous()?.apply_op1(SoftplusFloorOp);
    }
    let pos = raw.relu()?;
    let tail = raw.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    pos.add(&tail)?.affine(1.0, VARIANCE_FLOOR)
}

/// `softplus(x) + VARIANCE_FLOOR` element-wise on CPU, in the input's precision.
struct SoftplusFloorOp;

fn softplus_f64(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

impl candle_core::CustomOp1 for SoftplusFloorOp {
    fn name(&self) -> &'static str {
        "softplus-variance"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("softplus-variance: input must be contiguous")
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(
                v[a..b]
                    .iter()
                    .map(|&x| (x.max(0.0) + (-x.abs()).exp().ln_1p()) + VARIANCE_FLOOR as f32)
                    .collect(),
            ),
            CpuStorage::F64(v) => CpuStorage::F64(
                v[a..b]
                    .iter()
                    .map(|&x| softplus_f64(x) + VARIANCE_FLOOR)
                    .collect(),
            ),
            _ => candle_core::bail!("softplus-variance: input must be f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d softplus / dx = sigmoid(x) = exp(x − softplus(x)), and softplus(x) = res − floor.
        let sigmoid = arg.sub(res)?.affine(1.0, VARIANCE_FLOOR)?.exp()?;
        Ok(Some(grad_res.mul(&sigmoid)?))
    }
}

/// Mean heteroscedastic Gaussian NLL of `output` `[n, 2]` (mean, raw variance) against
/// `targets` `[n]` or `[n, 1]` of the same float dtype (module docs).
pub fn gaussian_nll(output: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let (y, mean, var) = mean_variance_targets(output, targets)?;
    let sq = mean.sub(&y)?.sqr()?;
    let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    let per_row = var.log()?.add(&sq.div(&var)?)?;
    per_row.mean_all()?.affine(0.5, half_ln_2pi)
}

/// The β-NLL (Seitzer et al., ICLR 2022) of `output` `[n, 2]` against `targets`, the loss a
/// heteroscedastic network trains with (at [`BETA_NLL`]): each row's Gaussian NLL (as in
/// [`gaussian_nll`]) weighted by its predicted variance to the power `beta`, the weight held
/// constant (no gradient flows through it), then averaged:
/// `(1/n) Σ_i sg(σ²_i)^β · [½ ln(2π) + ½ ln σ²_i + (y_i − μ_i)²/(2σ²_i)]`.
/// `beta = 0` is the NLL itself; `beta = 1` gives the mean the gradient of the squared error,
/// `μ_i − y_i`, whatever the predicted variance, so a row cannot escape its error by claiming a
/// large variance. `beta` must be finite and in `[0, 1]`.
pub fn beta_nll(output: &Tensor, targets: &Tensor, beta: f64) -> candle_core::Result<Tensor> {
    if !(0.0..=1.0).contains(&beta) {
        candle_core::bail!("beta-NLL: beta must be in [0, 1], got {beta}");
    }
    let (y, mean, var) = mean_variance_targets(output, targets)?;
    let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    let per_row = var
        .log()?
        .add(&mean.sub(&y)?.sqr()?.div(&var)?)?
        .affine(0.5, half_ln_2pi)?;
    let weight = var.detach().powf(beta)?;
    per_row.mul(&weight)?.mean_all()
}

/// The targets `[n]`, means `[n]` and variances `[n]` (softplus with the floor) of a
/// heteroscedastic network's `output` `[n, 2]`, after checking the shapes (the losses' one
/// place for it).
fn mean_variance_targets(
    output: &Tensor,
    targets: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (n, c) = output.dims2()?;
    if c != 2 {
        candle_core::bail!(
            "gaussian NLL: output has {c} columns; a heteroscedastic network needs 2 (mean, raw variance)"
        );
    }
    if n == 0 {
        candle_core::bail!("gaussian NLL: no rows");
    }
    if targets.elem_count() != n {
        candle_core::bail!(
            "gaussian NLL: {} targets for {n} rows",
            targets.elem_count()
        );
    }
    let y = targets.reshape(n)?;
    let mean = output.narrow(1, 0, 1)?.reshape(n)?;
    let var = softplus_variance(&output.narrow(1, 1, 1)?.reshape(n)?)?;
    Ok((y, mean, var))
}

/// Mean softmax cross-entropy of `logits` `[n, C]` against class indices `labels` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let fused = logits.device().is_cpu()
        && logits.dtype() == DType::F32
        && labels.dtype() == DType::U32
        && logits.rank() == 2;
    if fused {
        logits
            .contiguous()?
            .apply_op2(&labels.contiguous()?, CrossEntropyOp)
    } else {
        candle_nn::loss::cross_entropy(logits, labels)
    }
}

struct CrossEntropyOp;

fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (n, c) = l.shape().dims2()?;
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok((&v[a..b], n, c)),
        _ => candle_core::bail!("cross-entropy: logits must be contiguous f32"),
    }
}

fn labels<'a>(s: &'a CpuStorage, l: &Layout, n: usize, c: usize) -> candle_core::Result<&'a [u32]> {
    let y = match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => &v[a..b],
        _ => candle_core::bail!("cross-entropy: labels must be contiguous u32"),
    };
    if y.len() != n {
        candle_core::bail!("cross-entropy: {} labels for {n} rows", y.len());
    }
    if let Some(bad) = y.iter().find(|&&k| k as usize >= c) {
        candle_core::bail!("cross-entropy: label {bad} out of range for {c} classes");
    }
    Ok(y)
}

/// Row maximum and log-sum-exp of a row.
fn max_and_lse(row: &[f32]) -> (f32, f32) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s: f32 = row.iter().map(|&z| (z - m).exp()).sum();
    (m, m + s.ln())
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, n, c) = rows(zs, zl)?;
        let y = labels(ys, yl, n, c)?;
        if n == 0 {
            candle_core::bail!("cross-entropy: no rows");
        }
        let total: f64 = z
            .chunks_exact(c)
            .zip(y)
            .map(|(row, &k)| (max_and_lse(row).1 - row[k as usize]) as f64)
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c) = logits.dims2()?;
        let z: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let y: Vec<u32> = labels_t.to_vec1()?;
        let scale = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let mut g = Vec::with_capacity(n * c);
        for (row, &k) in z.chunks_exact(c).zip(&y) {
            let (_, lse) = max_and_lse(row);
            g.extend(row.iter().map(|&v| (v - lse).exp() * scale));
            let last = g.len() - c + k as usize;
            g[last] -= scale;
        }
        Ok((Some(Tensor::from_vec(g, (n, c), logits.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_nn_value_and_gradient() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.7).collect();
        let z = Var::from_vec(vals, (5, 3), &dev)?;
        let y = Tensor::new(&[0u32, 2, 1, 1, 0], &dev)?;
        let a = cross_entropy(z.as_tensor(), &y)?;
        let b = candle_nn::loss::cross_entropy(z.as_tensor(), &y)?;
        let (va, vb) = (a.to_scalar::<f32>()?, b.to_scalar::<f32>()?);
        assert!((va - vb).abs() < 1e-6, "{va} vs {vb}");
        let grad = |loss: &Tensor| -> Vec<f32> {
            let g = loss.backward().unwrap();
            g.get(&z).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let (ga, gb) = (grad(&a), grad(&b));
        for (p, q) in ga.iter().zip(&gb) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
        Ok(())
    }

    #[test]
    fn large_logits_do_not_overflow_and_bad_labels_are_refused() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        // Row (1000, 0): loss of label 0 is ln(1 + e^-1000) ≈ 0; of label 1 it is 1000.
        let z = Tensor::new(&[[1000f32, 0.0], [1000.0, 0.0]], &dev)?;
        let y = Tensor::new(&[0u32, 1], &dev)?;
        let l = cross_entropy(&z, &y)?.to_scalar::<f32>()?;
        assert!((l - 500.0).abs() < 1e-3, "{l}");
        let bad = Tensor::new(&[0u32, 2], &dev)?;
        assert!(cross_entropy(&z, &bad).is_err());
        Ok(())
    }
}
