//! Predictions with uncertainty from any candle model: the SGD iterate, the SWA mean, SWAG and
//! MultiSWAG behind one type, [`Predictive`].
//!
//! A [`Predictive`] holds the model's [`ParamSet`], where its weights come from (a fixed weight
//! vector, the SWA mean of a posterior, or `S` samples from one posterior or several), and an
//! optional [`BatchNormRefresh`]. For each weight sample it writes the weights into the model's
//! `Var`s, refreshes the BatchNorm statistics when asked, and runs the model over the input
//! batches in evaluation mode (`forward_t(batch, false)`). The model is any
//! [`candle_core::ModuleT`]; a model with another forward signature is wrapped with
//! [`candle_nn::func_t`] (a closure that may borrow, `Send + Sync`). Inputs come as a `Clone` iterator of batches (each pass over the samples
//! clones it), so a test set larger than memory streams from disk; [`batches`] cuts an
//! in-memory tensor. Outputs are candle tensors on the model's device, accumulated in f32 on
//! that device, one pass over the samples (memory does not grow with `S`).
//!
//! - **Classification** ([`Predictive::classify`]): softmax per sample, probabilities averaged
//!   over the `S` samples (not logits), and per row the predictive entropy `H[p̄]`, the expected
//!   entropy `(1/S) Σ_s H[p_s]` (aleatoric), the mutual information `H[p̄] − (1/S) Σ_s H[p_s]`
//!   (epistemic, clamped at 0 against rounding) and the variation ratio (see
//!   [`crate::metrics::uncertainty`] for the same quantities from prediction files).
//! - **Regression** ([`Predictive::regress`]): the predictive is the equal-weight mixture of the
//!   `S` Gaussians `N(μ_s, σ²_s)`, summarised by its moments: mean `μ̄ = (1/S) Σ μ_s`, epistemic
//!   variance `(1/S) Σ (μ_s − μ̄)²` (divisor `S`, Welford's update), aleatoric variance
//!   `(1/S) Σ σ²_s`; the total variance is their sum. [`Noise`] says where `σ²_s` comes from:
//!   one homoscedastic value, or a second network output per row (heteroscedastic).
//!
//! **After a prediction** the model's weights and the refreshed BatchNorm statistics are what
//! they were before (they are saved first and written back, also when an error ends the pass),
//! unless [`Predictive::leave_swa_mean`] asks for the SWA mean (with refreshed statistics).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use candle_swag::predictive::{batches, BmaParams, Predictive};
//! use candle_swag::{ParamSet, SampleParams, SwagParams, SwagPosterior};
//!
//! # fn main() -> candle_swag::Result<()> {
//! let varmap = VarMap::new();
//! let model = candle_nn::linear(3, 4, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
//! let params = ParamSet::from_varmap(&varmap)?;
//! let config = SwagParams { rank: 2, ..Default::default() }.check()?;
//! let mut posterior = SwagPosterior::for_params(&params, config)?;
//! for _ in 0..3 {
//!     // ... an epoch of training ...
//!     posterior.collect(&params)?;
//! }
//! let x = Tensor::zeros((10, 3), DType::F32, &Device::Cpu)?;
//! let sample = SampleParams { scale: 0.5, ..Default::default() };
//! let bma_config = BmaParams { sample, samples: 8, seed: 0 }.check()?;
//! let swag = Predictive::swag(&params, &posterior, bma_config)?;
//! let out = swag.classify(&model, batches(&x, 4)?)?;
//! assert_eq!(out.probs.dims(), &[10, 4]);
//! # Ok(()) }
//! ```

use std::borrow::Borrow;

use crate::batchnorm::BatchNormRefresh;
use crate::error::{Error, Result};
use crate::layout::ParamSet;
use crate::swag::multi::assignment;
use crate::swag::{MultiSwag, SwagPosterior};
use candle_core::{DType, ModuleT, Tensor, D};
use rand::SeedableRng;

mod config;
mod output;

pub use config::{BmaConfig, BmaParams};
use output::cat_field;
pub use output::{
    batches, ClassificationOutput, Noise, RegressionOutput, RegressionPrediction, VarianceLink,
};

/// Where the weights of each forward pass come from.
#[derive(Debug, Clone)]
enum Source<'a> {
    /// One fixed flat weight vector.
    Point(Tensor),
    /// The SWA mean of a posterior.
    SwaMean(&'a SwagPosterior),
    /// `samples` draws spread over `posteriors` with [`assignment`].
    Samples {
        posteriors: Vec<&'a SwagPosterior>,
        bma: BmaConfig,
    },
}

/// What the model's weights are after a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// The weights and BatchNorm statistics from before the prediction.
    Restore,
    /// The SWA mean of the first posterior, BatchNorm refreshed for it.
    SwaMean,
}

/// Bayesian model averaging over a model's weights: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Predictive<'a> {
    params: ParamSet,
    source: Source<'a>,
    refresh: Option<BatchNormRefresh<'a>>,
    /// Set by [`Predictive::without_refresh`]: the user keeps stale BatchNorm statistics on
    /// purpose.
    stale_statistics_ok: bool,
    finish: Finish,
}

impl<'a> Predictive<'a> {
    /// One forward pass with the fixed weights `weights` (`[d]`, in the layout of `params`, e.g.
    /// the last SGD iterate saved with [`ParamSet::flatten`]).
    ///
    /// Errors: `weights` not of shape `[params.numel()]` (`Error::LayoutMismatch`).
    pub fn point(params: &ParamSet, weights: &Tensor) -> Result<Self> {
        if weights.dims() != [params.numel()] {
            return Err(Error::LayoutMismatch(format!(
                "point weights have shape {:?}, the model's parameters need [{}]",
                weights.dims(),
                params.numel()
            )));
        }
        Ok(Self::with_source(params, Source::Point(weights.clone())))
    }

    /// One forward pass with the SWA mean of `posterior`.
    ///
    /// Errors: a posterior over another parameter layout (`Error::LayoutMismatch`).
    pub fn swa(params: &ParamSet, posterior: &'a SwagPosterior) -> Result<Self> {
        check_layout(params, posterior, 0)?;
        Ok(Self::with_source(params, Source::SwaMean(posterior)))
    }

    /// `S` SWAG samples from `posterior`, drawn as `bma` says ([`BmaConfig`]: the sample
    /// settings, `S`, and the seed of the one `StdRng` they draw from, so a seed fixes the
    /// whole prediction).
    ///
    /// Errors: a posterior over another layout (`Error::LayoutMismatch`).
    pub fn swag(params: &ParamSet, posterior: &'a SwagPosterior, bma: BmaConfig) -> Result<Self> {
        Self::samples(params, vec![posterior], bma)
    }

    /// MultiSWAG: `S` samples spread over the posteriors of `multi` with [`assignment`]
    /// (posterior `i` gets `⌊S/M⌋` samples, one more for the first `S mod M`), in that order,
    /// from one `StdRng` seeded with `bma`'s seed.
    ///
    /// Errors as [`Predictive::swag`].
    pub fn multi_swag<P: Borrow<SwagPosterior>>(
        params: &ParamSet,
        multi: &'a MultiSwag<P>,
        bma: BmaConfig,
    ) -> Result<Self> {
        let posteriors = multi.posteriors().iter().map(|p| p.borrow()).collect();
        Self::samples(params, posteriors, bma)
    }

    fn samples(
        params: &ParamSet,
        posteriors: Vec<&'a SwagPosterior>,
        bma: BmaConfig,
    ) -> Result<Self> {
        for (i, p) in posteriors.iter().enumerate() {
            check_layout(params, p, i)?;
        }
        Ok(Self::with_source(
            params,
            Source::Samples { posteriors, bma },
        ))
    }

    fn with_source(params: &ParamSet, source: Source<'a>) -> Self {
        Self {
            params: params.clone(),
            source,
            refresh: None,
            stale_statistics_ok: false,
            finish: Finish::Restore,
        }
    }

    /// Refreshes the BatchNorm statistics after every weight sample (and for the SGD iterate and
    /// the SWA mean).
    ///
    /// A model with BatchNorm statistics (a `ParamSet` from a VarMap holding `running_mean` /
    /// `running_var`, see [`ParamSet::batchnorm_buffers`]) needs one: its statistics were
    /// computed for the trained weights, not for the SWA mean or a sample. Predicting from a
    /// posterior over such a model without a refresh is an error unless
    /// [`Predictive::without_refresh`] says it is meant.
    pub fn with_refresh(mut self, refresh: BatchNormRefresh<'a>) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// Predicts with the BatchNorm statistics the layers hold now, for every sample: an explicit
    /// opt-out of the refresh a model with BatchNorm otherwise requires. Stale statistics can
    /// silently degrade a prediction (on one user's network, RMSE 0.38 became 0.69, while the
    /// wider variance made the NLL look better), so use it only when the statistics do not
    /// depend on the weights the posterior covers (e.g. SWAG over a head after the last
    /// BatchNorm).
    pub fn without_refresh(mut self) -> Self {
        self.refresh = None;
        self.stale_statistics_ok = true;
        self
    }

    /// Refuses a posterior prediction over a model with BatchNorm statistics and no refresh,
    /// unless opted out (see [`Predictive::with_refresh`]).
    fn check_refresh(&self) -> Result<()> {
        let buffers = self.params.batchnorm_buffers();
        if matches!(self.source, Source::Point(_))
            || self.refresh.is_some()
            || self.stale_statistics_ok
            || buffers.is_empty()
        {
            return Ok(());
        }
        let shown: Vec<&str> = buffers.iter().take(3).map(String::as_str).collect();
        let more = if buffers.len() > 3 { ", ..." } else { "" };
        Err(Error::invalid(
            "refresh",
            format!(
                "the model has BatchNorm statistics ({}{more}) computed for other weights; add \
                 .with_refresh(BatchNormRefresh::new(..)) to refresh them for each sample, or \
                 .without_refresh() to keep them as they are",
                shown.join(", ")
            ),
        ))
    }

    /// After a prediction, leaves the SWA mean of the (first) posterior in the model, with its
    /// BatchNorm statistics refreshed when a refresh is set, instead of restoring the weights.
    ///
    /// Errors: a [`Predictive::point`], which has no posterior (`Error::InvalidArgument`).
    pub fn leave_swa_mean(mut self) -> Result<Self> {
        if matches!(self.source, Source::Point(_)) {
            return Err(Error::invalid(
                "leave_swa_mean",
                "a point prediction has no posterior whose SWA mean could be left in the model",
            ));
        }
        self.finish = Finish::SwaMean;
        Ok(self)
    }

    /// Number of forward passes over the inputs: 1 for a point or the SWA mean, `S` otherwise.
    pub fn num_samples(&self) -> usize {
        match &self.source {
            Source::Point(_) | Source::SwaMean(_) => 1,
            Source::Samples { bma, .. } => bma.samples(),
        }
    }

    /// The parameters the weights are written into.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Runs `model` over every input batch once per weight sample and hands each output to
    /// `each(sample, batch, output)`: the loop under [`Predictive::classify`] and
    /// [`Predictive::regress`], for other summaries. Returns the number of samples.
    ///
    /// Errors: an input iterator with no batch, or with a different number of batches on a later
    /// pass (`Error::InvalidArgument` naming `inputs`); errors of the model, the iterator, the
    /// sampler or the refresh. The weights are restored in every case (see the module docs).
    pub fn for_each_output<M, I, F>(&self, model: &M, inputs: I, mut each: F) -> Result<usize>
    where
        M: ModuleT + ?Sized,
        I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
        F: FnMut(usize, usize, &Tensor) -> Result<()>,
    {
        self.check_refresh()?;
        let saved_weights = self.params.flatten()?;
        let saved_stats = match &self.refresh {
            Some(r) => r
                .layers()
                .iter()
                .map(|l| Ok((l.running_mean().copy()?, l.running_var().copy()?)))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let result = self.run_passes(model, inputs, &mut each);
        let finished = match (self.finish, &result) {
            (Finish::SwaMean, Ok(_)) => self.write_swa_mean(model),
            _ => self.restore(&saved_weights, &saved_stats),
        };
        let s = result?;
        finished?;
        Ok(s)
    }

    fn run_passes<M, I, F>(&self, model: &M, inputs: I, each: &mut F) -> Result<usize>
    where
        M: ModuleT + ?Sized,
        I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
        F: FnMut(usize, usize, &Tensor) -> Result<()>,
    {
        let mut batches_per_pass: Option<usize> = None;
        let mut pass = |sample: usize, each: &mut F| -> Result<()> {
            if let Some(r) = &self.refresh {
                r.run(model)?;
            }
            let mut n = 0;
            for (b, batch) in inputs.clone().enumerate() {
                // Detached: the accumulators below outlive the pass, and an output that kept
                // its op graph would keep every activation of every sample alive with it.
                let out = model.forward_t(&batch?, false)?.detach();
                each(sample, b, &out)?;
                n += 1;
            }
            match batches_per_pass {
                _ if n == 0 => Err(Error::invalid(
                    "inputs",
                    "the input iterator yielded no batch",
                )),
                Some(first) if first != n => Err(Error::invalid(
                    "inputs",
                    format!("the input iterator yielded {first} batches on the first pass and {n} on pass {}", sample + 1),
                )),
                _ => {
                    batches_per_pass = Some(n);
                    Ok(())
                }
            }
        };
        match &self.source {
            Source::Point(w) => {
                self.params.write_flat(w)?;
                pass(0, each)?;
            }
            Source::SwaMean(p) => {
                p.write_mean_into(&self.params)?;
                pass(0, each)?;
            }
            Source::Samples { posteriors, bma } => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(bma.seed());
                for (i, which) in assignment(posteriors.len(), bma.samples())
                    .into_iter()
                    .enumerate()
                {
                    posteriors[which].sample_into(&self.params, &bma.sample(), &mut rng)?;
                    pass(i, each)?;
                }
            }
        }
        Ok(self.num_samples())
    }

    fn restore(&self, weights: &Tensor, stats: &[(Tensor, Tensor)]) -> Result<()> {
        self.params.write_flat(weights)?;
        if let Some(r) = &self.refresh {
            for (l, (m, v)) in r.layers().iter().zip(stats) {
                l.running_mean().set(m)?;
                l.running_var().set(v)?;
            }
        }
        Ok(())
    }

    fn write_swa_mean<M: ModuleT + ?Sized>(&self, model: &M) -> Result<()> {
        let first = match &self.source {
            Source::SwaMean(p) => *p,
            Source::Samples { posteriors, .. } => posteriors[0],
            Source::Point(_) => unreachable!("leave_swa_mean refuses a point prediction"),
        };
        first.write_mean_into(&self.params)?;
        if let Some(r) = &self.refresh {
            r.run(model)?;
        }
        Ok(())
    }

    /// Classification BMA: the model's outputs are logits `[n, C]` per batch; see the
    /// [module docs](self) for what is averaged.
    ///
    /// Errors: outputs that are not `[n, C]` with the same `C` in every batch
    /// (`Error::InvalidArgument` naming `outputs`), and those of
    /// [`Predictive::for_each_output`].
    pub fn classify<M, I>(&self, model: &M, inputs: I) -> Result<ClassificationOutput>
    where
        M: ModuleT + ?Sized,
        I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
    {
        // Per batch: sum over samples of the probabilities, of the entropies, of the votes.
        let mut acc: Vec<(Tensor, Tensor, Tensor)> = Vec::new();
        let mut classes: Option<usize> = None;
        let s = self.for_each_output(model, inputs, |sample, b, logits| {
            let (_, c) = logits.dims2().map_err(|_| {
                Error::invalid(
                    "outputs",
                    format!(
                        "classification logits must be [n, C], got {:?}",
                        logits.dims()
                    ),
                )
            })?;
            if c < 2 {
                return Err(Error::invalid(
                    "outputs",
                    format!(
                        "classification needs logits [n, C] with C >= 2 classes, got C = {c}; \
                         for one output (binary logit), output [logit, 0] per row or use regress"
                    ),
                ));
            }
            match classes {
                Some(first) if first != c => {
                    return Err(Error::invalid(
                        "outputs",
                        format!("batch {b} has {c} classes, batch 0 has {first}"),
                    ))
                }
                _ => classes = Some(c),
            }
            let logits = logits.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let entropy = (&probs * &log_probs)?.sum(1)?.neg()?;
            let votes = one_hot_argmax(&probs)?;
            if sample == 0 {
                acc.push((probs, entropy, votes));
            } else {
                let slot = &mut acc[b];
                *slot = ((&slot.0 + probs)?, (&slot.1 + entropy)?, (&slot.2 + votes)?);
            }
            Ok(())
        })?;
        let inv = 1.0 / s as f64;
        let probs = (cat_field(&acc, |a| &a.0)? * inv)?;
        let expected_entropy = (cat_field(&acc, |a| &a.1)? * inv)?;
        let votes = cat_field(&acc, |a| &a.2)?;
        // 0·ln 0 = 0: the clamp only changes zero probabilities.
        let predictive_entropy = (&probs * probs.clamp(f32::MIN_POSITIVE, 1f32)?.log()?)?
            .sum(1)?
            .neg()?;
        let mutual_information = (&predictive_entropy - &expected_entropy)?.relu()?;
        let variation_ratio = (1.0 - (votes.max(1)? * inv)?)?;
        Ok(ClassificationOutput {
            n_samples: s,
            probs,
            predictive_entropy,
            expected_entropy,
            mutual_information,
            variation_ratio,
        })
    }

    /// Regression BMA: the mixture moments of the [module docs](self), per output value.
    ///
    /// With [`Noise::Homoscedastic`] the model's output (any shape `[n, ...]`) is the mean and
    /// the prediction has that shape. With [`Noise::Heteroscedastic`] the last dimension of the
    /// output has size 2: index 0 the mean, index 1 the raw variance parameter mapped by the
    /// [`VarianceLink`]; the prediction has the output's shape without that last dimension.
    ///
    /// Errors: a heteroscedastic output whose last dimension is not 2 (`Error::InvalidArgument`
    /// naming `outputs`), and those of [`Predictive::for_each_output`].
    pub fn regress<M, I>(&self, model: &M, inputs: I, noise: Noise) -> Result<RegressionOutput>
    where
        M: ModuleT + ?Sized,
        I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
    {
        noise.check()?;
        // Per batch: Welford's running mean and sum of squared deviations of the means, and the
        // sum over samples of the aleatoric variances.
        let mut acc: Vec<(Tensor, Tensor, Tensor)> = Vec::new();
        let s = self.for_each_output(model, inputs, |sample, b, out| {
            let out = out.to_dtype(DType::F32)?;
            let (mean, var) = match noise {
                Noise::Homoscedastic { variance } => {
                    let var = (out.ones_like()? * variance)?;
                    (out, var)
                }
                Noise::Heteroscedastic(link) => {
                    let last = out.dims().last().copied();
                    if last != Some(2) || out.rank() < 2 {
                        return Err(Error::invalid(
                            "outputs",
                            format!(
                                "a heteroscedastic model outputs [..., 2] (mean, variance parameter), got {:?}",
                                out.dims()
                            ),
                        ));
                    }
                    let mean = out.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                    let raw = out.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                    (mean, link.variance(&raw)?)
                }
            };
            if sample == 0 {
                acc.push((mean.clone(), mean.zeros_like()?, var));
            } else {
                let k = (sample + 1) as f64;
                let (m, m2, v) = &acc[b];
                let delta = (&mean - m)?;
                let new_m = (m + (&delta / k)?)?;
                let new_m2 = (m2 + (&delta * (&mean - &new_m)?)?)?;
                acc[b] = (new_m, new_m2, (v + var)?);
            }
            Ok(())
        })?;
        let inv = 1.0 / s as f64;
        Ok(RegressionOutput {
            n_samples: s,
            mean: cat_field(&acc, |a| &a.0)?,
            var_epistemic: (cat_field(&acc, |a| &a.1)? * inv)?,
            var_aleatoric: (cat_field(&acc, |a| &a.2)? * inv)?,
        })
    }
}

fn check_layout(params: &ParamSet, posterior: &SwagPosterior, index: usize) -> Result<()> {
    posterior
        .layout()
        .check_same(params.layout())
        .map_err(|e| match e {
            // One prefix: the inner message, not its Display (which repeats the variant's).
            Error::LayoutMismatch(inner) => Error::LayoutMismatch(format!(
                "posterior #{index} does not match the model's parameters: {inner}"
            )),
            other => other,
        })
}

/// `[n, C]` f32 one-hot of the arg-max of each row (first index on ties, as
/// [`crate::metrics::uncertainty`] counts votes).
fn one_hot_argmax(probs: &Tensor) -> Result<Tensor> {
    let c = probs.dim(1)?;
    let arg = probs.argmax_keepdim(1)?;
    let classes = Tensor::arange(0u32, c as u32, probs.device())?.unsqueeze(0)?;
    Ok(arg.broadcast_eq(&classes)?.to_dtype(DType::F32)?)
}
