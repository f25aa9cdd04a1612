//! SGD with momentum and weight decay, with PyTorch's semantics (candle-nn's `SGD` has neither).
//!
//! For every parameter θ with gradient g, one step does, in this order:
//!
//! ```text
//! g ← g + wd · θ          (L2 weight decay, coupled into the gradient)
//! v ← μ · v + g           (velocity; v starts at 0, so the first step sets v = g)
//! θ ← θ − lr · v
//! ```
//!
//! which is `torch.optim.SGD(momentum=μ, weight_decay=wd, dampening=0, nesterov=False)`.
//! On CPU with contiguous f32 tensors the update is fused into two in-place passes over the
//! buffers (no allocation per step); other devices and dtypes use plain tensor ops with the same
//! arithmetic.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use candle_nn::Optimizer;

use crate::error::{Error, Result};

/// The hyper-parameters of [`SgdMomentum`], unchecked (the crate's config shape: see
/// [`crate::swag::config`]); also how an [`SgdConfig`] is written to and read from a file.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdParams {
    /// Learning rate: finite and `> 0` (0.01 by default). A schedule changes it between epochs
    /// through `set_learning_rate`.
    pub lr: f64,
    /// Momentum `μ` in `[0, 1)` (0.9 by default; 0 disables it).
    pub momentum: f64,
    /// L2 weight decay `wd`, finite and `>= 0` (0 by default), added to the gradient as
    /// `wd · θ`.
    pub weight_decay: f64,
}

impl Default for SgdParams {
    /// lr 0.01, momentum 0.9, weight decay 0.
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }
}

impl SgdParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<SgdConfig> {
        let Self {
            lr,
            momentum,
            weight_decay,
        } = *self;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::invalid(
                "lr",
                format!("must be finite and > 0, got {lr}"),
            ));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::invalid(
                "momentum",
                format!("must be in [0, 1), got {momentum}"),
            ));
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(Error::invalid(
                "weight_decay",
                format!("must be finite and >= 0, got {weight_decay}"),
            ));
        }
        Ok(SgdConfig(*self))
    }
}

/// Checked hyper-parameters of [`SgdMomentum`] (from [`SgdParams::check`]; a config read from
/// a file is checked the same way).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "SgdParams", into = "SgdParams")]
pub struct SgdConfig(SgdParams);

impl TryFrom<SgdParams> for SgdConfig {
    type Error = Error;
    fn try_from(params: SgdParams) -> Result<Self> {
        params.check()
    }
}

impl From<SgdConfig> for SgdParams {
    fn from(config: SgdConfig) -> Self {
        config.0
    }
}

impl SgdConfig {
    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.0.lr
    }

    /// The momentum `μ`.
    pub fn momentum(&self) -> f64 {
        self.0.momentum
    }

    /// The L2 weight decay coefficient.
    pub fn weight_decay(&self) -> f64 {
        self.0.weight_decay
    }
}

/// SGD with momentum and weight decay; implements [`candle_nn::Optimizer`].
#[derive(Debug)]
pub struct SgdMomentum {
    vars: Vec<(Var, Tensor)>,
    config: SgdConfig,
}

impl SgdMomentum {
    /// The parameters being optimised, in the order given to `new`.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(v, _)| v.clone()).collect()
    }

    /// The optimiser's configuration (with the current learning rate).
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The velocity buffer of the i-th parameter (zeros before the first step).
    pub fn velocity(&self, i: usize) -> Option<&Tensor> {
        self.vars.get(i).map(|(_, v)| v)
    }

    fn step_one(&self, var: &Var, velocity: &Tensor, grad: &Tensor) -> candle_core::Result<()> {
        let SgdParams {
            lr,
            momentum,
            weight_decay,
        } = self.config.0;
        let fused = var.device().is_cpu()
            && var.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && var.is_contiguous()
            && velocity.is_contiguous();
        if fused {
            let grad = grad.contiguous()?;
            velocity.inplace_op3(
                var.as_tensor(),
                &grad,
                &VelocityUpdate {
                    momentum: momentum as f32,
                    weight_decay: weight_decay as f32,
                },
            )?;
            var.as_tensor()
                .inplace_op2(velocity, &ParamUpdate { lr: lr as f32 })?;
        } else {
            let mut g = grad.clone();
            if weight_decay != 0.0 {
                g = (g + (var.as_tensor() * weight_decay)?)?;
            }
            let v = ((velocity * momentum)? + g)?;
            let theta = (var.as_tensor() - (&v * lr)?)?;
            copy_into(velocity, &v)?;
            var.set(&theta)?;
        }
        Ok(())
    }
}

/// Writes `src` into the storage of `dst` (same shape).
fn copy_into(dst: &Tensor, src: &Tensor) -> candle_core::Result<()> {
    dst.slice_set(src, 0, 0)
}

impl Optimizer for SgdMomentum {
    type Config = SgdConfig;

    /// Keeps the floating-point Vars and gives each a zero velocity buffer.
    fn new(vars: Vec<Var>, config: SgdConfig) -> candle_core::Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|v| {
                let vel = v.zeros_like()?;
                Ok((v, vel))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { vars, config })
    }

    /// One step for every parameter that has a gradient in `grads` (others are left as they are,
    /// velocity included).
    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        for (var, velocity) in &self.vars {
            if let Some(grad) = grads.get(var) {
                self.step_one(var, velocity, grad)?;
            }
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.0.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.0.lr = lr;
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{name}: expected contiguous f32 storage"),
    }
}

fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    name: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{name}: expected contiguous f32 storage"),
    }
}

/// `v ← μ·v + g + wd·θ`, in place on v.
struct VelocityUpdate {
    momentum: f32,
    weight_decay: f32,
}

impl InplaceOp3 for VelocityUpdate {
    fn name(&self) -> &'static str {
        "sgd-velocity-update"
    }

    fn cpu_fwd(
        &self,
        v: &mut CpuStorage,
        lv: &Layout,
        theta: &CpuStorage,
        lt: &Layout,
        grad: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let v = f32_slice_mut(v, lv, self.name())?;
        let theta = f32_slice(theta, lt, self.name())?;
        let grad = f32_slice(grad, lg, self.name())?;
        if v.len() != theta.len() || v.len() != grad.len() {
            candle_core::bail!("{}: buffers differ in length", self.name());
        }
        let (mu, wd) = (self.momentum, self.weight_decay);
        for ((v, t), g) in v.iter_mut().zip(theta).zip(grad) {
            *v = mu * *v + (g + wd * t);
        }
        Ok(())
    }
}

/// `θ ← θ − lr·v`, in place on θ.
struct ParamUpdate {
    lr: f32,
}

impl InplaceOp2 for ParamUpdate {
    fn name(&self) -> &'static str {
        "sgd-param-update"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        lt: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<()> {
        let theta = f32_slice_mut(theta, lt, self.name())?;
        let v = f32_slice(v, lv, self.name())?;
        if v.len() != theta.len() {
            candle_core::bail!("{}: buffers differ in length", self.name());
        }
        for (t, v) in theta.iter_mut().zip(v) {
            *t -= self.lr * v;
        }
        Ok(())
    }
}
