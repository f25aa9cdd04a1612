//! Classification metrics from predicted probabilities, computed in one pass.
//!
//! # Formulas (natural logarithms)
//!
//! * accuracy: fraction of rows whose arg-max class (the first one on ties) is the label;
//! * NLL: mean over rows of `−ln(max(p_y, eps))`, `eps` = [`DEFAULT_NLL_EPS`] unless set;
//! * Brier: mean over rows of `Σ_k (p_k − onehot_k)²` (ranges over `[0, 2]`);
//! * ECE, MCE, signed ECE: top-label confidence `max_k p_k` against correctness, on
//!   equal-width bins (see [`super::binning`]);
//! * equal-mass ECE: the same on equal-mass bins;
//! * classwise ECE (Kull et al. 2019): for every class `k`, the equal-width ECE of `p_k`
//!   against `1[y = k]`, averaged over the classes;
//! * L2 calibration error (Kumar et al. 2019), plug-in and debiased, of the top-label
//!   confidence on the equal-mass bins (the binning Kumar et al. recommend).
//!
//! # One pass
//!
//! [`evaluate_classification`] reads every probability exactly once: row chunks are processed
//! in parallel (rayon), each worker validating, accumulating the sums above, and binning every
//! `p_k` for the classwise ECE into its own small accumulator; the accumulators are merged at
//! the end. The equal-mass bins then sort the `N` top-label confidences (packed in a `u64`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::binning::{
    check_bins, edges_in, equal_mass_from_keys, equal_width_bin_index, equal_width_bounds,
    sort_key, BinningScheme, CalibrationBins, DEFAULT_BINS,
};
use super::{
    bad_data, check_non_empty, check_probability_row, check_same_len, label_indices, matrix_rows,
    probability_problem, row_sum_problem, ClassLabel, Probability,
};
use crate::{Error, Result};

/// Default clamp of `p_y` inside the NLL: `−ln(max(p_y, 1e-12))`, so a zero probability
/// costs about 27.6 nats instead of infinity.
pub const DEFAULT_NLL_EPS: f64 = 1e-12;

/// The settings of the classification metrics, unchecked (the crate's config shape: see
/// [`crate::swag::config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationParams {
    /// Equal-width bins for ECE, MCE, signed and classwise ECE, in `1..=MAX_BINS` (15 by
    /// default).
    pub n_bins: usize,
    /// Equal-mass bins for the adaptive ECE and the L2 errors, in `1..=MAX_BINS` (15 by
    /// default).
    pub n_bins_equal_mass: usize,
    /// Probability clamp inside the NLL, in `(0, 1)`: `−ln(max(p_y, nll_eps))` (default
    /// [`DEFAULT_NLL_EPS`]).
    pub nll_eps: f64,
}

impl Default for ClassificationParams {
    /// 15 equal-width and 15 equal-mass bins, NLL clamp [`DEFAULT_NLL_EPS`].
    fn default() -> Self {
        Self {
            n_bins: DEFAULT_BINS,
            n_bins_equal_mass: DEFAULT_BINS,
            nll_eps: DEFAULT_NLL_EPS,
        }
    }
}

impl ClassificationParams {
    /// Default settings with `n_bins` equal-width and equal-mass bins (unchecked).
    pub fn with_bins(n_bins: usize) -> Self {
        Self {
            n_bins,
            n_bins_equal_mass: n_bins,
            ..Self::default()
        }
    }

    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<ClassificationConfig> {
        check_bins(self.n_bins)?;
        check_bins(self.n_bins_equal_mass).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::invalid("n_bins_equal_mass", reason),
            other => other,
        })?;
        if !(self.nll_eps > 0.0 && self.nll_eps < 1.0) {
            return Err(Error::invalid(
                "nll_eps",
                format!("{} is not in (0, 1)", self.nll_eps),
            ));
        }
        Ok(ClassificationConfig(self.clone()))
    }
}

/// Settings of the classification metrics (from [`ClassificationParams::check`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(into = "ClassificationParams")]
pub struct ClassificationConfig(ClassificationParams);

impl From<ClassificationConfig> for ClassificationParams {
    fn from(config: ClassificationConfig) -> Self {
        config.0
    }
}

impl ClassificationConfig {
    /// Equal-width bins.
    pub fn n_bins(&self) -> usize {
        self.0.n_bins
    }

    /// Equal-mass bins.
    pub fn n_bins_equal_mass(&self) -> usize {
        self.0.n_bins_equal_mass
    }

    /// Probability clamp inside the NLL.
    pub fn nll_eps(&self) -> f64 {
        self.0.nll_eps
    }
}

/// The scalar classification metrics (the top-level keys of a report's `metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Fraction of rows whose arg-max class is the label.
    pub accuracy: f64,
    /// Mean negative log-likelihood of the label, in nats.
    pub nll: f64,
    /// Mean Brier score `Σ_k (p_k − onehot_k)²`.
    pub brier: f64,
    /// Top-label ECE on equal-width bins.
    pub ece: f64,
    /// Top-label MCE on equal-width bins.
    pub mce: f64,
    /// Top-label signed ECE (positive: over-confident).
    pub signed_ece: f64,
    /// Top-label ECE on equal-mass bins.
    pub ece_equal_mass: f64,
    /// Classwise ECE (mean over classes).
    pub classwise_ece: f64,
    /// Plug-in L2 calibration error (top-label, equal-mass bins).
    pub l2_plugin: f64,
    /// Debiased L2 calibration error (Kumar et al. 2019; top-label, equal-mass bins).
    pub l2_debiased: f64,
    /// Number of rows.
    pub n: usize,
    /// Number of classes.
    pub n_classes: usize,
    /// Equal-width bins used.
    pub n_bins: usize,
    /// Equal-mass bins used.
    pub n_bins_equal_mass: usize,
    /// NLL clamp used.
    pub nll_eps: f64,
}

/// Scalar metrics together with the reliability-diagram data they were computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationEvaluation {
    /// The scalar metrics.
    pub metrics: ClassificationMetrics,
    /// Top-label equal-width bins (reliability diagram).
    pub reliability: CalibrationBins,
    /// Top-label equal-mass bins.
    pub reliability_equal_mass: CalibrationBins,
    /// Per-class equal-width bins of `p_k` against `1[y = k]` (index = class).
    pub classwise: Vec<CalibrationBins>,
}

/// First bad value found by a worker: (0-based row, column, reason).
type Problem = (usize, String, String);

/// Per-worker sums of the one-pass evaluation.
struct Accumulator {
    n_bins: usize,
    correct: u64,
    nll: f64,
    brier: f64,
    top_counts: Vec<u64>,
    top_conf: Vec<f64>,
    top_hits: Vec<f64>,
    /// `[B, C]` count of `p_k` per bin (bin-major, so the first bin, where most entries of a
    /// many-class row fall, is one contiguous run of `C`). Kept in `f64` so the sweep over a
    /// row vectorises; exact up to 2^53 rows.
    class_count: Vec<f64>,
    /// `[B, C]` Σ `p_k` per bin, same layout.
    class_sum: Vec<f64>,
    /// `[C, B]` number of rows with label `k` per bin of `p_k`.
    class_hits: Vec<u64>,
    problem: Option<Problem>,
}

impl Accumulator {
    fn new(n_classes: usize, n_bins: usize) -> Self {
        Accumulator {
            n_bins,
            correct: 0,
            nll: 0.0,
            brier: 0.0,
            top_counts: vec![0; n_bins],
            top_conf: vec![0.0; n_bins],
            top_hits: vec![0.0; n_bins],
            class_count: vec![0.0; n_classes * n_bins],
            class_sum: vec![0.0; n_classes * n_bins],
            class_hits: vec![0; n_classes * n_bins],
            problem: None,
        }
    }

    fn note_problem(&mut self, row: usize, column: String, reason: String) {
        let earlier = match &self.problem {
            Some(p) => row < p.0,
            None => true,
        };
        if earlier {
            self.problem = Some((row, column, reason));
        }
    }

    fn merge(mut self, other: Accumulator) -> Self {
        self.correct += other.correct;
        self.nll += other.nll;
        self.brier += other.brier;
        add_into(&mut self.top_counts, &other.top_counts);
        add_into(&mut self.top_conf, &other.top_conf);
        add_into(&mut self.top_hits, &other.top_hits);
        add_into(&mut self.class_count, &other.class_count);
        add_into(&mut self.class_sum, &other.class_sum);
        add_into(&mut self.class_hits, &other.class_hits);
        if let Some((row, column, reason)) = other.problem {
            self.note_problem(row, column, reason);
        }
        self
    }
}

fn add_into<T: Copy + std::ops::AddAssign>(a: &mut [T], b: &[T]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Rows per parallel work item: large enough to amortise scheduling, small enough to balance.
const CHUNK_ROWS: usize = 4096;

/// All classification metrics and their bins, in one validated pass.
///
/// `probs` is row-major `[N, n_classes]`; `labels` holds `N` class indices.
pub fn evaluate_classification<T: Probability, L: ClassLabel>(
    probs: &[T],
    n_classes: usize,
    labels: &[L],
    options: &ClassificationConfig,
) -> Result<ClassificationEvaluation> {
    let n_bins = options.n_bins();
    let n = matrix_rows("probabilities", probs.len(), n_classes)?;
    check_non_empty("labels", labels.len())?;
    check_same_len("probabilities", n, "labels", labels.len())?;
    let labels = label_indices(labels, n_classes)?;
    let edges = edges_in::<T>(n_bins);
    let eps = options.nll_eps();
    let c = n_classes;

    // One sort key per row (top-label confidence and correctness) for the equal-mass bins.
    let mut keys = vec![0u64; n];
    let acc = probs
        .par_chunks(CHUNK_ROWS * c)
        .zip(labels.par_chunks(CHUNK_ROWS))
        .zip(keys.par_chunks_mut(CHUNK_ROWS))
        .enumerate()
        .fold(
            || Accumulator::new(c, n_bins),
            |mut acc, (chunk, ((rows, chunk_labels), chunk_keys))| {
                let first_row = chunk * CHUNK_ROWS;
                for (r, ((row, &y), key)) in rows
                    .chunks_exact(c)
                    .zip(chunk_labels)
                    .zip(chunk_keys.iter_mut())
                    .enumerate()
                {
                    accumulate_row(&mut acc, row, y, key, &edges, eps, first_row + r);
                }
                acc
            },
        )
        .reduce(|| Accumulator::new(c, n_bins), Accumulator::merge);

    if let Some((row, column, reason)) = acc.problem {
        return Err(bad_data("probabilities", row, column, reason));
    }

    let reliability = CalibrationBins::from_sums(
        BinningScheme::EqualWidth,
        equal_width_bounds(n_bins),
        &acc.top_counts,
        &acc.top_conf,
        &acc.top_hits,
    );
    let classwise: Vec<CalibrationBins> = (0..c)
        .map(|k| {
            let range = k * n_bins..(k + 1) * n_bins;
            let hits: Vec<f64> = acc.class_hits[range.clone()]
                .iter()
                .map(|&h| h as f64)
                .collect();
            let counts: Vec<u64> = (0..n_bins)
                .map(|b| acc.class_count[b * c + k] as u64)
                .collect();
            let conf: Vec<f64> = (0..n_bins).map(|b| acc.class_sum[b * c + k]).collect();
            CalibrationBins::from_sums(
                BinningScheme::EqualWidth,
                equal_width_bounds(n_bins),
                &counts,
                &conf,
                &hits,
            )
        })
        .collect();
    let classwise_ece = classwise.iter().map(|b| b.ece).sum::<f64>() / c as f64;
    let reliability_equal_mass = equal_mass_from_keys(&mut keys, options.n_bins_equal_mass());
    let nf = n as f64;
    let metrics = ClassificationMetrics {
        accuracy: acc.correct as f64 / nf,
        nll: acc.nll / nf,
        brier: acc.brier / nf,
        ece: reliability.ece,
        mce: reliability.mce,
        signed_ece: reliability.signed_ece,
        ece_equal_mass: reliability_equal_mass.ece,
        classwise_ece,
        l2_plugin: reliability_equal_mass.l2_calibration_error(false),
        l2_debiased: reliability_equal_mass.l2_calibration_error(true),
        n,
        n_classes: c,
        n_bins,
        n_bins_equal_mass: options.n_bins_equal_mass(),
        nll_eps: eps,
    };
    Ok(ClassificationEvaluation {
        metrics,
        reliability,
        reliability_equal_mass,
        classwise,
    })
}

/// The per-row work of [`evaluate_classification`].
///
/// One sweep that vectorises does the range check, the row sums and the classwise cells of
/// the first bin (`p ≤ 1/B`, where nearly every entry of a many-class row falls); a second,
/// branchy sweep bins the remaining few entries. Values are accumulated before the row is
/// known to be valid: an invalid row makes the whole call fail, so nothing wrong is reported.
// `(v >= 0.0) & (v <= 1.0)` on purpose: a non-short-circuit test keeps the loop vectorisable.
#[allow(clippy::manual_range_contains)]
#[inline(always)]
fn accumulate_row<T: Probability>(
    acc: &mut Accumulator,
    row: &[T],
    label: usize,
    key: &mut u64,
    edges: &[T],
    eps: f64,
    row_index: usize,
) {
    let c = row.len();
    let first_edge = edges[1];
    // Element-wise (vectorises): classwise cells of the first bin.
    for ((p, n), s) in row
        .iter()
        .zip(&mut acc.class_count[..c])
        .zip(&mut acc.class_sum[..c])
    {
        // A 0/1 factor rather than a branch, so the loop vectorises.
        let low = f64::from(u8::from(*p <= first_edge));
        *n += low;
        *s += low * p.to_f64();
    }
    // Reductions in eight independent lanes: range check, Σ p, Σ p² and the largest p.
    let mut in_range = true;
    let mut sum = [0.0f64; 8];
    let mut sum_sq = [0.0f64; 8];
    let mut top = [row[0]; 8];
    let mut octets = row.chunks_exact(8);
    for p8 in &mut octets {
        for j in 0..8 {
            let v = p8[j].to_f64();
            in_range &= (v >= 0.0) & (v <= 1.0);
            sum[j] += v;
            sum_sq[j] += v * v;
            top[j] = if p8[j] > top[j] { p8[j] } else { top[j] };
        }
    }
    for (j, &p) in octets.remainder().iter().enumerate() {
        let v = p.to_f64();
        in_range &= (v >= 0.0) & (v <= 1.0);
        sum[j] += v;
        sum_sq[j] += v * v;
        top[j] = if p > top[j] { p } else { top[j] };
    }
    if !in_range {
        if let Some((k, reason)) = row
            .iter()
            .enumerate()
            .find_map(|(k, p)| probability_problem(p.to_f64()).map(|r| (k, r)))
        {
            acc.note_problem(row_index, format!("class {k}"), reason);
        }
        return;
    }
    let sum: f64 = sum.iter().sum();
    let sum_sq: f64 = sum_sq.iter().sum();
    if let Some(reason) = row_sum_problem(sum) {
        acc.note_problem(row_index, "row sum".to_string(), reason);
        return;
    }
    for (k, &p) in row.iter().enumerate() {
        if p > first_edge {
            let cell = equal_width_bin_index(p, edges) * c + k;
            acc.class_count[cell] += 1.0;
            acc.class_sum[cell] += p.to_f64();
        }
    }
    let nb = acc.n_bins;
    let best = top.iter().fold(top[0], |m, &p| if p > m { p } else { m });
    // The first class holding the largest value (arg-max, first on ties).
    let best_k = row.iter().position(|&p| p == best).unwrap_or(0);
    let p_y = row[label].to_f64();
    acc.class_hits[label * nb + equal_width_bin_index(row[label], edges)] += 1;
    let correct = best_k == label;
    acc.correct += correct as u64;
    acc.nll -= p_y.max(eps).ln();
    acc.brier += sum_sq - 2.0 * p_y + 1.0;
    let b = equal_width_bin_index(best, edges);
    let conf = best.to_f64();
    acc.top_counts[b] += 1;
    acc.top_conf[b] += conf;
    acc.top_hits[b] += correct as u8 as f64;
    *key = sort_key(conf, correct);
}

/// The scalar metrics only; see [`evaluate_classification`].
pub fn classification_metrics<T: Probability, L: ClassLabel>(
    probs: &[T],
    n_classes: usize,
    labels: &[L],
    options: &ClassificationConfig,
) -> Result<ClassificationMetrics> {
    evaluate_classification(probs, n_classes, labels, options).map(|e| e.metrics)
}

/// Top-label confidence `max_k p_k` and correctness (arg-max, first on ties, equals the
/// label) of every row, validated like [`evaluate_classification`].
pub fn top_label<T: Probability, L: ClassLabel>(
    probs: &[T],
    n_classes: usize,
    labels: &[L],
) -> Result<(Vec<f64>, Vec<bool>)> {
    let n = matrix_rows("probabilities", probs.len(), n_classes)?;
    check_same_len("probabilities", n, "labels", labels.len())?;
    let labels = label_indices(labels, n_classes)?;
    let mut conf = Vec::with_capacity(n);
    let mut correct = Vec::with_capacity(n);
    for (i, (row, &y)) in probs.chunks_exact(n_classes).zip(&labels).enumerate() {
        check_probability_row(i, row)?;
        let (k, p) = argmax(row);
        conf.push(p.to_f64());
        correct.push(k == y);
    }
    Ok((conf, correct))
}

/// Index and value of the largest entry (the first one on ties).
pub(crate) fn argmax<T: Probability>(row: &[T]) -> (usize, T) {
    let mut best = row[0];
    let mut best_k = 0;
    for (k, &p) in row.iter().enumerate().skip(1) {
        if p > best {
            best = p;
            best_k = k;
        }
    }
    (best_k, best)
}

/// Validates binary input: `P(y = 1)` in `[0, 1]` and labels in `{0, 1}`.
fn check_binary<T: Probability, L: ClassLabel>(
    p_positive: &[T],
    labels: &[L],
) -> Result<Vec<usize>> {
    check_non_empty("probabilities", p_positive.len())?;
    check_same_len("probabilities", p_positive.len(), "labels", labels.len())?;
    for (i, p) in p_positive.iter().enumerate() {
        if let Some(reason) = probability_problem(p.to_f64()) {
            return Err(bad_data("probabilities", i, "p_positive", reason));
        }
    }
    label_indices(labels, 2)
}

/// Binary input, **positive-class** calibration: equal-width bins of `P(y = 1)` against
/// `y = 1` (the reliability diagram of the positive class).
pub fn calibration_bins_positive_class<T: Probability, L: ClassLabel>(
    p_positive: &[T],
    labels: &[L],
    n_bins: usize,
) -> Result<CalibrationBins> {
    let y = check_binary(p_positive, labels)?;
    let hits: Vec<bool> = y.iter().map(|&k| k == 1).collect();
    super::binning::calibration_bins(p_positive, &hits, n_bins)
}

/// Binary input, **top-label** calibration: equal-width bins of `max(p, 1 − p)` against
/// whether the predicted class (1 when `p > 0.5`, else 0, matching the first-on-ties arg-max
/// of `[1 − p, p]`) is the label. Confidences are computed in `f64`.
pub fn calibration_bins_top_label_binary<T: Probability, L: ClassLabel>(
    p_positive: &[T],
    labels: &[L],
    n_bins: usize,
) -> Result<CalibrationBins> {
    let y = check_binary(p_positive, labels)?;
    let mut conf = Vec::with_capacity(y.len());
    let mut correct = Vec::with_capacity(y.len());
    for (p, &k) in p_positive.iter().zip(&y) {
        let p = p.to_f64();
        let predicted = usize::from(p > 0.5);
        conf.push(if predicted == 1 { p } else { 1.0 - p });
        correct.push(predicted == k);
    }
    super::binning::calibration_bins(&conf, &correct, n_bins)
}
