//! Split-conformal prediction on top of SWAG predictions: intervals for regression, prediction
//! sets for classification, each with a finite-sample coverage guarantee.
//!
//! # The guarantee and the quantile
//!
//! A score `s(x, y)` is computed on a held-out calibration set of `n` rows that the model never
//! trained on. With `k = ⌈(n + 1)(1 − α)⌉` ([`conformal_rank`]) and `q̂` the `k`-th smallest
//! calibration score (the `k/n` empirical quantile, no interpolation), the set
//! `{y : s(x, y) ≤ q̂}` of a new exchangeable row contains its target with probability at least
//! `1 − α`, and, when the scores have no ties, at most `1 − α + 1/(n + 1)`.
//!
//! **When `k > n`** (that is `α < 1/(n + 1)`), no calibration score is large enough: `q̂ = +∞`,
//! regression intervals are `(−∞, +∞)` and classification sets hold every class. That is the
//! only answer that keeps the guarantee; [`ConformalRegressor::infinite`] says when it happened,
//! so a caller can warn or ask for a larger calibration set.
//!
//! `k` is computed in `f64` as `⌈(n + 1)(1 − α) − 1e-9⌉`: the small slack makes a level written
//! as a decimal (`α = 0.1`, where `(1 − 0.1)·20` rounds to `18.000000000000004`) give the exact
//! rational rank (18), not one more.
//!
//! # Regression: normalized scores
//!
//! `s = |y − μ| / σ` with the SWAG predictive mean `μ` and standard deviation `σ`, so the
//! interval `μ ± q̂·σ` keeps the adaptivity of `σ` (wider where the model is less sure) while
//! `q̂` corrects its overall scale. Intervals are closed.
//!
//! # Classification: APS and RAPS, non-randomised
//!
//! Classes are ranked by decreasing BMA probability (ties by increasing class index, the order
//! of the crate's arg-max). The score of class `k` is the probability mass of the classes
//! ranked up to and including `k` (APS, Romano et al. 2020), plus, for RAPS (Angelopoulos et
//! al. 2021), `λ · max(0, rank(k) − k_reg)` with the 1-based rank. The set is every class whose
//! score is `≤ q̂`, which is a prefix of the ranking because the scores increase along it; the
//! top-ranked class is always included, so a set is never empty (adding classes only raises
//! coverage).
//!
//! The variant is **non-randomised** (the `U = 1` end of the randomised score): the same
//! probabilities always give the same set, which is what a user reading a CSV of sets expects
//! and what makes runs reproducible. The guarantee `≥ 1 − α` still holds; the price is that
//! coverage and set size sit somewhat above what the randomised variant would give (the upper
//! bound `1 − α + 1/(n + 1)` does not apply to sets).

use serde::{Deserialize, Serialize};

use super::{check_gaussian, check_probability_row, check_std, check_values};
use super::{check_same_len, label_indices, matrix_rows, ClassLabel, Probability};
use crate::{Error, Result};

/// Fewest calibration rows accepted: below this the quantile rests on too few scores (with
/// `n = 19` and `α = 0.05` the interval is already infinite).
pub const MIN_CALIBRATION_ROWS: usize = 20;

/// Slack subtracted before the ceiling in [`conformal_rank`] (see the module docs).
const RANK_SLACK: f64 = 1e-9;

/// The settings of a conformal method, unchecked (the crate's config shape: see
/// [`crate::swag::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConformalParams {
    /// The miscoverage level `α` in `(0, 1)`: the target coverage is `1 − α` (0.1 by default).
    pub alpha: f64,
}

impl Default for ConformalParams {
    /// `α = 0.1` (90% coverage).
    fn default() -> Self {
        Self { alpha: 0.1 }
    }
}

impl ConformalParams {
    /// The params for target coverage `coverage`, i.e. `alpha = 1 − coverage` (unchecked).
    pub fn with_coverage(coverage: f64) -> Self {
        Self {
            alpha: 1.0 - coverage,
        }
    }

    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<ConformalConfig> {
        let alpha = self.alpha;
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(Error::invalid(
                "alpha",
                format!(
                    "{alpha} is not in (0, 1) (coverage 1 − alpha = {} must be in (0, 1))",
                    1.0 - alpha
                ),
            ));
        }
        Ok(ConformalConfig(*self))
    }
}

/// The miscoverage level `α` of a conformal method (from [`ConformalParams::check`]; a config
/// read from a file is checked the same way).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "ConformalParams", into = "ConformalParams")]
pub struct ConformalConfig(ConformalParams);

impl TryFrom<ConformalParams> for ConformalConfig {
    type Error = Error;
    fn try_from(params: ConformalParams) -> Result<Self> {
        params.check()
    }
}

impl From<ConformalConfig> for ConformalParams {
    fn from(config: ConformalConfig) -> Self {
        config.0
    }
}

impl ConformalConfig {
    /// The miscoverage level `α`.
    pub fn alpha(&self) -> f64 {
        self.0.alpha
    }
}

/// The 1-based rank `⌈(n + 1)(1 − α)⌉` of the conformal quantile among `n` calibration scores,
/// or `None` when it exceeds `n` (the quantile is then `+∞`; module docs).
pub fn conformal_rank(n: usize, alpha: f64) -> Option<usize> {
    let k = ((n as f64 + 1.0) * (1.0 - alpha) - RANK_SLACK)
        .ceil()
        .max(1.0) as usize;
    (k <= n).then_some(k)
}

/// Refuses a calibration set smaller than [`MIN_CALIBRATION_ROWS`].
pub(crate) fn check_calibration_size(n: usize) -> Result<()> {
    if n < MIN_CALIBRATION_ROWS {
        return Err(Error::invalid(
            "calibration set",
            format!("has {n} rows; split-conformal needs at least {MIN_CALIBRATION_ROWS}"),
        ));
    }
    Ok(())
}

/// The conformal quantile of calibration `scores`: the [`conformal_rank`]-th smallest, or `+∞`
/// when that rank exceeds `n`. Scores must be non-NaN; at least [`MIN_CALIBRATION_ROWS`].
pub fn conformal_quantile(scores: &[f64], config: &ConformalConfig) -> Result<f64> {
    check_calibration_size(scores.len())?;
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(super::bad_data("scores", i, "score", "score is NaN"));
    }
    Ok(match conformal_rank(scores.len(), config.alpha()) {
        Some(k) => {
            let mut s = scores.to_vec();
            let (_, kth, _) = s.select_nth_unstable_by(k - 1, f64::total_cmp);
            *kth
        }
        None => f64::INFINITY,
    })
}

/// Normalized regression scores `|y − μ| / σ` (inputs validated like the regression metrics).
pub fn normalized_scores(mean: &[f64], std: &[f64], y: &[f64]) -> Result<Vec<f64>> {
    check_gaussian(mean, std, y)?;
    Ok(mean
        .iter()
        .zip(std)
        .zip(y)
        .map(|((m, s), t)| (t - m).abs() / s)
        .collect())
}

/// Reads a quantile that JSON wrote as `null` (serde_json's spelling of `+∞`) back as `+∞`.
fn null_as_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// Empirical coverage and mean width of intervals or sets on a test set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConformalEvaluation {
    /// Target coverage `1 − α`.
    pub target: f64,
    /// Fraction of test rows whose target is inside (closed intervals) or in the set.
    pub coverage: f64,
    /// Mean interval width `upper − lower` (regression; `+∞` when the quantile is), or mean
    /// number of classes per set (classification).
    pub mean_size: f64,
    /// Test rows.
    pub n: usize,
}

/// Split-conformal intervals `μ ± q̂·σ` from normalized scores (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConformalRegressor {
    /// Miscoverage level `α`.
    pub alpha: f64,
    /// Calibration rows `n`.
    pub n_calibration: usize,
    /// 1-based rank of `q̂` among the calibration scores; `None` when `q̂ = +∞`.
    pub rank: Option<usize>,
    /// The conformal quantile `q̂` of the normalized scores (`+∞` when `rank` is `None`;
    /// JSON writes that as `null`, which reads back as `+∞`).
    #[serde(deserialize_with = "null_as_infinity")]
    pub quantile: f64,
}

impl ConformalRegressor {
    /// Fits `q̂` on calibration means, standard deviations and targets.
    pub fn fit(config: &ConformalConfig, mean: &[f64], std: &[f64], y: &[f64]) -> Result<Self> {
        let scores = normalized_scores(mean, std, y)?;
        let quantile = conformal_quantile(&scores, config)?;
        Ok(ConformalRegressor {
            alpha: config.alpha(),
            n_calibration: scores.len(),
            rank: conformal_rank(scores.len(), config.alpha()),
            quantile,
        })
    }

    /// Whether the calibration set was too small for `α`, making every interval infinite.
    pub fn infinite(&self) -> bool {
        self.rank.is_none()
    }

    /// The closed intervals `(μ − q̂σ, μ + q̂σ)` of every row (`(−∞, +∞)` when [`Self::infinite`]).
    pub fn intervals(&self, mean: &[f64], std: &[f64]) -> Result<Vec<(f64, f64)>> {
        check_values("mean", mean)?;
        check_std(std, mean.len())?;
        Ok(mean
            .iter()
            .zip(std)
            .map(|(m, s)| {
                if self.infinite() {
                    (f64::NEG_INFINITY, f64::INFINITY)
                } else {
                    (m - self.quantile * s, m + self.quantile * s)
                }
            })
            .collect())
    }

    /// Coverage and mean width of the intervals on test data.
    pub fn evaluate(&self, mean: &[f64], std: &[f64], y: &[f64]) -> Result<ConformalEvaluation> {
        check_gaussian(mean, std, y)?;
        let iv = self.intervals(mean, std)?;
        let target = 1.0 - self.alpha;
        let c = super::coverage_of_intervals(&iv, y, target)?;
        Ok(ConformalEvaluation {
            target,
            coverage: c.picp,
            mean_size: c.mpiw,
            n: y.len(),
        })
    }
}

/// Score of a classification prediction set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SetScore {
    /// Adaptive prediction sets: cumulative ranked probability mass.
    Aps,
    /// Regularised APS: APS plus `lambda · max(0, rank − k_reg)`.
    Raps {
        /// Penalty per class ranked beyond `k_reg` (finite, `≥ 0`).
        lambda: f64,
        /// Number of classes ranked first that carry no penalty.
        k_reg: usize,
    },
}

impl SetScore {
    /// RAPS with its penalty checked (`lambda` finite and `≥ 0`).
    pub fn raps(lambda: f64, k_reg: usize) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(Error::invalid(
                "lambda",
                format!("{lambda} is not a finite number >= 0"),
            ));
        }
        Ok(SetScore::Raps { lambda, k_reg })
    }

    fn penalty(&self, rank: usize) -> f64 {
        match *self {
            SetScore::Aps => 0.0,
            SetScore::Raps { lambda, k_reg } => lambda * rank.saturating_sub(k_reg) as f64,
        }
    }

    fn check(&self) -> Result<()> {
        match *self {
            SetScore::Aps => Ok(()),
            SetScore::Raps { lambda, k_reg } => Self::raps(lambda, k_reg).map(|_| ()),
        }
    }
}

/// Class indices of one row by decreasing probability, ties by increasing index.
fn ranking<T: Probability>(row: &[T]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    // Stable sort: equal probabilities keep increasing class order.
    order.sort_by(|&a, &b| row[b].to_f64().total_cmp(&row[a].to_f64()));
    order
}

/// The scores of every class of one row along its ranking: `(class, score)` pairs.
fn ranked_scores<T: Probability>(row: &[T], score: &SetScore) -> Vec<(usize, f64)> {
    let mut mass = 0.0;
    ranking(row)
        .into_iter()
        .enumerate()
        .map(|(r, k)| {
            mass += row[k].to_f64();
            (k, mass + score.penalty(r + 1))
        })
        .collect()
}

/// Split-conformal prediction sets by APS or RAPS on probabilities (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConformalClassifier {
    /// Miscoverage level `α`.
    pub alpha: f64,
    /// The set score.
    pub score: SetScore,
    /// Number of classes.
    pub n_classes: usize,
    /// Calibration rows `n`.
    pub n_calibration: usize,
    /// 1-based rank of `q̂` among the calibration scores; `None` when `q̂ = +∞`.
    pub rank: Option<usize>,
    /// The conformal quantile `q̂` of the calibration scores (`+∞` when `rank` is `None`;
    /// JSON `null`, as for [`ConformalRegressor::quantile`]).
    #[serde(deserialize_with = "null_as_infinity")]
    pub quantile: f64,
}

impl ConformalClassifier {
    /// Fits `q̂` on calibration probabilities (row-major `[n, n_classes]`) and labels.
    pub fn fit<T: Probability, L: ClassLabel>(
        config: &ConformalConfig,
        score: SetScore,
        probs: &[T],
        n_classes: usize,
        labels: &[L],
    ) -> Result<Self> {
        score.check()?;
        let n = matrix_rows("probabilities", probs.len(), n_classes)?;
        check_same_len("probabilities", n, "labels", labels.len())?;
        let labels = label_indices(labels, n_classes)?;
        let mut scores = Vec::with_capacity(n);
        for (i, (row, &y)) in probs.chunks_exact(n_classes).zip(&labels).enumerate() {
            check_probability_row(i, row)?;
            let ranked = ranked_scores(row, &score);
            // `ranked` holds every class once, so the label is always found.
            let s = ranked
                .iter()
                .find(|(k, _)| *k == y)
                .map_or(f64::INFINITY, |(_, s)| *s);
            scores.push(s);
        }
        let quantile = conformal_quantile(&scores, config)?;
        Ok(ConformalClassifier {
            alpha: config.alpha(),
            score,
            n_classes,
            n_calibration: n,
            rank: conformal_rank(n, config.alpha()),
            quantile,
        })
    }

    /// The prediction set of every row: class indices in ranking order (most probable first),
    /// never empty.
    pub fn sets<T: Probability>(&self, probs: &[T]) -> Result<Vec<Vec<usize>>> {
        let n_classes = self.n_classes;
        matrix_rows("probabilities", probs.len(), n_classes)?;
        probs
            .chunks_exact(n_classes)
            .enumerate()
            .map(|(i, row)| {
                check_probability_row(i, row)?;
                let ranked = ranked_scores(row, &self.score);
                let keep = ranked
                    .iter()
                    .take_while(|(_, s)| *s <= self.quantile)
                    .count()
                    .max(1);
                Ok(ranked[..keep].iter().map(|(k, _)| *k).collect())
            })
            .collect()
    }

    /// Coverage and mean set size on test probabilities and labels.
    pub fn evaluate<T: Probability, L: ClassLabel>(
        &self,
        probs: &[T],
        labels: &[L],
    ) -> Result<ConformalEvaluation> {
        let n = matrix_rows("probabilities", probs.len(), self.n_classes)?;
        check_same_len("probabilities", n, "labels", labels.len())?;
        let labels = label_indices(labels, self.n_classes)?;
        let sets = self.sets(probs)?;
        let covered = sets
            .iter()
            .zip(&labels)
            .filter(|(s, y)| s.contains(y))
            .count();
        let size = sets.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
        Ok(ConformalEvaluation {
            target: 1.0 - self.alpha,
            coverage: covered as f64 / n as f64,
            mean_size: size,
            n,
        })
    }
}
