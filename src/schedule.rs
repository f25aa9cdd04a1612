//! Learning-rate schedules for SWA and SWAG training.
//!
//! A schedule is a pure function of the (possibly fractional) epoch, so the same value comes
//! back however often it is asked and whatever happened before: a run resumed at epoch 40 gets
//! the rate it would have had without the interruption. [`apply_lr`] writes the rate into any
//! [`candle_nn::Optimizer`] through its `set_learning_rate`.
//!
//! Epochs count from 0 (the first epoch of training is epoch 0). A fractional epoch such as
//! `epoch + step / steps_per_epoch` gives per-step schedules. A negative or NaN epoch is read as 0.
//!
//! Three schedules, and a warm-up in front of any of them:
//! - [`ConstantLr`]: one rate for every epoch.
//! - [`SwaLr`]: torch's `SWALR` written in closed form: from an initial rate to `swa_lr` over
//!   `anneal_epochs` with cosine or linear annealing, then constant.
//! - [`SwagPaperLr`]: the schedule of the SWAG paper's training script
//!   (`schedule()` in `experiments/train/run_swag.py` of `wjmaddox/swa_gaussian`).
//! - [`LinearWarmup`]: any schedule, scaled up linearly from 0 over its first epochs (the
//!   warm-up of transformer fine-tuning, and a cure for early overshoot with momentum).

use crate::{Error, Result};

/// A learning rate as a function of the epoch.
pub trait LrSchedule {
    /// The learning rate for `epoch` (0-based; fractional values give per-step rates;
    /// negative or NaN values are read as 0).
    fn lr(&self, epoch: f64) -> f64;
}

/// Sets `optimizer`'s learning rate to `schedule.lr(epoch)` and returns that rate.
///
/// Call it at the start of each epoch (or step, with a fractional epoch), before the
/// optimizer steps, as the SWAG reference does with its `adjust_learning_rate`.
pub fn apply_lr<O, S>(optimizer: &mut O, schedule: &S, epoch: f64) -> f64
where
    O: candle_nn::Optimizer,
    S: LrSchedule + ?Sized,
{
    let lr = schedule.lr(epoch);
    optimizer.set_learning_rate(lr);
    lr
}

/// Reads a user-given epoch: negative and NaN become 0 (`f64::max` drops the NaN).
fn clean_epoch(epoch: f64) -> f64 {
    epoch.max(0.0)
}

/// Checks that a rate is finite and not negative, naming the parameter otherwise.
fn check_rate(name: &str, value: f64) -> Result<()> {
    if !value.is_finite() || value < 0.0 {
        return Err(Error::invalid(
            name,
            format!("a learning rate must be finite and >= 0, got {value}"),
        ));
    }
    Ok(())
}

/// The same learning rate at every epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConstantLr {
    lr: f64,
}

impl ConstantLr {
    /// A constant schedule; `lr` must be finite and >= 0 (`Error::InvalidArgument` naming `lr`).
    pub fn new(lr: f64) -> Result<Self> {
        check_rate("lr", lr)?;
        Ok(Self { lr })
    }
}

impl LrSchedule for ConstantLr {
    fn lr(&self, _epoch: f64) -> f64 {
        self.lr
    }
}

/// How [`SwaLr`] moves from the initial rate to `swa_lr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnealStrategy {
    /// alpha(t) = (1 − cos(π t)) / 2, torch's `"cos"` (its default).
    #[default]
    Cos,
    /// alpha(t) = t, torch's `"linear"`.
    Linear,
}

impl AnnealStrategy {
    /// The fraction of the way from the initial rate to `swa_lr` at progress `t` in [0, 1].
    fn alpha(self, t: f64) -> f64 {
        match self {
            AnnealStrategy::Cos => (1.0 - (std::f64::consts::PI * t).cos()) / 2.0,
            AnnealStrategy::Linear => t,
        }
    }
}

/// SWALR-style annealing to a constant SWA learning rate.
///
/// With `k = epoch − start_epoch` (the number of annealing epochs done), `A = anneal_epochs`,
/// `t = clamp(k / A, 0, 1)` and alpha from the [`AnnealStrategy`]:
///
/// ```text
/// lr(epoch) = initial_lr                                   if epoch < start_epoch
///           = (1 − alpha(t)) · initial_lr + alpha(t) · swa_lr   otherwise
/// ```
///
/// With `A = 0` the rate is `swa_lr` from `start_epoch` on (no annealing).
///
/// **Relation to torch.** `torch.optim.swa_utils.SWALR.get_lr` recovers the rate it started from
/// out of the optimizer's current rate each step, then returns
/// `swa_lr · alpha + lr_start · (1 − alpha)` with `alpha = anneal_func(clamp(step / max(1, A), 0, 1))`,
/// where `step` is the number of `scheduler.step()` calls since construction (0 at
/// construction) and `A = 0` is treated as `step = max(1, step)`, i.e. `swa_lr` at once. When
/// nothing else touches the optimizer's rate, that is exactly the formula above with
/// `k = step` and `initial_lr` = the optimizer's rate when SWALR was built. We differ in that
/// our schedule is a pure function of the epoch: torch's result depends on the optimizer's
/// current rate, so another scheduler changing the rate between steps changes torch's
/// sequence but not ours. `start_epoch` (default 0) lets one schedule cover the epochs before
/// annealing starts at a constant `initial_lr`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwaLr {
    initial_lr: f64,
    swa_lr: f64,
    anneal_epochs: usize,
    strategy: AnnealStrategy,
    start_epoch: f64,
}

impl SwaLr {
    /// Anneals from `initial_lr` to `swa_lr` over `anneal_epochs` epochs starting at epoch 0.
    ///
    /// Both rates must be finite and >= 0 (`Error::InvalidArgument` naming `initial_lr` or
    /// `swa_lr`); `anneal_epochs` may be 0.
    pub fn new(
        initial_lr: f64,
        swa_lr: f64,
        anneal_epochs: usize,
        strategy: AnnealStrategy,
    ) -> Result<Self> {
        check_rate("initial_lr", initial_lr)?;
        check_rate("swa_lr", swa_lr)?;
        Ok(Self {
            initial_lr,
            swa_lr,
            anneal_epochs,
            strategy,
            start_epoch: 0.0,
        })
    }

    /// Starts annealing at `start_epoch` instead of 0; before it the rate is `initial_lr`.
    ///
    /// `start_epoch` must be finite and >= 0 (`Error::InvalidArgument` naming `start_epoch`).
    pub fn starting_at(mut self, start_epoch: f64) -> Result<Self> {
        if !start_epoch.is_finite() || start_epoch < 0.0 {
            return Err(Error::invalid(
                "start_epoch",
                format!("must be finite and >= 0, got {start_epoch}"),
            ));
        }
        self.start_epoch = start_epoch;
        Ok(self)
    }

    /// The rate reached at the end of annealing.
    pub fn swa_lr(&self) -> f64 {
        self.swa_lr
    }
}

impl LrSchedule for SwaLr {
    fn lr(&self, epoch: f64) -> f64 {
        let epoch = clean_epoch(epoch);
        if epoch < self.start_epoch {
            return self.initial_lr;
        }
        if self.anneal_epochs == 0 {
            return self.swa_lr;
        }
        let t = ((epoch - self.start_epoch) / self.anneal_epochs as f64).clamp(0.0, 1.0);
        if t >= 1.0 {
            // Exactly swa_lr, not a value one rounding away from it.
            return self.swa_lr;
        }
        let alpha = self.strategy.alpha(t);
        (1.0 - alpha) * self.initial_lr + alpha * self.swa_lr
    }
}

/// The SWAG paper's schedule (reference: `schedule()` in `experiments/train/run_swag.py` of
/// `wjmaddox/swa_gaussian`).
///
/// With `t = epoch / swa_start` and `r = swa_lr / lr_init`:
///
/// ```text
/// factor = 1                               if t <= 0.5
///        = 1 − (1 − r) · (t − 0.5) / 0.4   if 0.5 < t <= 0.9
///        = r                               if t > 0.9
/// lr     = lr_init · factor
/// ```
///
/// So the rate is `lr_init` for the first half of the pre-SWA epochs, falls linearly to
/// `swa_lr` at 90% of `swa_start`, and stays at `swa_lr` from there on (collection starts at
/// `swa_start`). The reference passes the integer epoch index (0-based) as `epoch`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwagPaperLr {
    lr_init: f64,
    swa_lr: f64,
    swa_start: f64,
}

impl SwagPaperLr {
    /// The SWAG schedule. `lr_init` must be finite and > 0, `swa_lr` finite and >= 0,
    /// `swa_start` finite and > 0 (`Error::InvalidArgument` naming the parameter).
    pub fn new(lr_init: f64, swa_lr: f64, swa_start: f64) -> Result<Self> {
        check_rate("lr_init", lr_init)?;
        if lr_init == 0.0 {
            return Err(Error::invalid(
                "lr_init",
                "must be > 0 (the schedule is a multiple of it)",
            ));
        }
        check_rate("swa_lr", swa_lr)?;
        if !swa_start.is_finite() || swa_start <= 0.0 {
            return Err(Error::invalid(
                "swa_start",
                format!("must be finite and > 0, got {swa_start}"),
            ));
        }
        Ok(Self {
            lr_init,
            swa_lr,
            swa_start,
        })
    }

    /// The reference's schedule for plain SGD training (its branch without `--swa`):
    /// `t = epoch / epochs` and a final ratio of 0.01, i.e. `swa_lr = 0.01 · lr_init`.
    ///
    /// `lr_init` must be finite and > 0 and `epochs` > 0 (`Error::InvalidArgument`).
    pub fn sgd_baseline(lr_init: f64, epochs: usize) -> Result<Self> {
        if epochs == 0 {
            return Err(Error::invalid("epochs", "must be > 0"));
        }
        Self::new(lr_init, 0.01 * lr_init, epochs as f64)
    }
}

impl LrSchedule for SwagPaperLr {
    fn lr(&self, epoch: f64) -> f64 {
        let t = clean_epoch(epoch) / self.swa_start;
        let ratio = self.swa_lr / self.lr_init;
        let factor = if t <= 0.5 {
            1.0
        } else if t <= 0.9 {
            1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
        } else {
            ratio
        };
        self.lr_init * factor
    }
}

/// A linear warm-up in front of another schedule.
///
/// ```text
/// lr(epoch) = inner.lr(epoch) · min(1, epoch / warmup_epochs)
/// ```
///
/// So the rate is 0 at epoch 0 (the first step does not move the weights, as with the
/// warm-up of Hugging Face's `get_linear_schedule_with_warmup`), reaches the inner schedule at
/// `warmup_epochs`, and follows it from there; with `warmup_epochs = 0` it is the inner
/// schedule. Pass the fractional epoch `epoch + step / steps_per_epoch` for a per-step warm-up:
/// a warm-up of 6% of 3 epochs is `warmup_epochs = 0.18`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearWarmup<S> {
    inner: S,
    warmup_epochs: f64,
}

impl<S: LrSchedule> LinearWarmup<S> {
    /// `inner` warmed up over `warmup_epochs`, which must be finite and >= 0
    /// (`Error::InvalidArgument` naming `warmup_epochs`).
    pub fn new(inner: S, warmup_epochs: f64) -> Result<Self> {
        if !warmup_epochs.is_finite() || warmup_epochs < 0.0 {
            return Err(Error::invalid(
                "warmup_epochs",
                format!("must be finite and >= 0, got {warmup_epochs}"),
            ));
        }
        Ok(Self {
            inner,
            warmup_epochs,
        })
    }
}

impl<S: LrSchedule> LrSchedule for LinearWarmup<S> {
    fn lr(&self, epoch: f64) -> f64 {
        let epoch = clean_epoch(epoch);
        let factor = if epoch >= self.warmup_epochs {
            1.0
        } else {
            epoch / self.warmup_epochs
        };
        self.inner.lr(epoch) * factor
    }
}

impl<S: LrSchedule + ?Sized> LrSchedule for &S {
    fn lr(&self, epoch: f64) -> f64 {
        (**self).lr(epoch)
    }
}

impl<S: LrSchedule + ?Sized> LrSchedule for Box<S> {
    fn lr(&self, epoch: f64) -> f64 {
        (**self).lr(epoch)
    }
}
