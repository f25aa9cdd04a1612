//! Out-of-distribution detection from any score (higher = more out-of-distribution).
//!
//! Out-of-distribution rows are the **positive** class. Conventions:
//!
//! * AUROC is exact: the Mann–Whitney statistic `P(score_out > score_in) + ½ P(equal)` from
//!   tie-averaged ranks, O(N log N). It equals the trapezoidal area under [`roc_curve`].
//! * Average precision follows scikit-learn: `Σ_t (R_t − R_{t−1}) P_t` over the distinct
//!   score thresholds `t` in decreasing order (a row is flagged when `score ≥ t`), so tied
//!   scores enter together.
//! * FPR at a TPR target: the smallest false-positive rate among the ROC points whose true-
//!   positive rate is at least the target (no interpolation between points).

use serde::{Deserialize, Serialize};

use super::{check_same_len, check_values};
use crate::{Error, Result};

/// ROC curve points for plotting, from the flag-nothing point `(0, 0)` to `(1, 1)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// False-positive rate of each point.
    pub fpr: Vec<f64>,
    /// True-positive rate of each point.
    pub tpr: Vec<f64>,
    /// Threshold of each point (rows with `score ≥ threshold` are flagged); the first point
    /// uses `f64::MAX`, above every finite score (JSON cannot hold infinity).
    pub thresholds: Vec<f64>,
    /// Exact AUROC (equal to the trapezoidal area under these points).
    pub auroc: f64,
}

/// The usual OOD-detection summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    /// Exact AUROC, ties averaged.
    pub auroc: f64,
    /// Average precision with OOD as the positive class.
    pub average_precision: f64,
    /// False-positive rate at 95% true-positive rate.
    pub fpr_at_95_tpr: f64,
    /// Number of in-distribution rows.
    pub n_in: usize,
    /// Number of out-of-distribution rows.
    pub n_out: usize,
}

/// Validates scores and flags; returns (positives, negatives).
fn check_scores(scores: &[f64], is_ood: &[bool]) -> Result<(usize, usize)> {
    check_values("scores", scores)?;
    check_same_len("scores", scores.len(), "is_ood", is_ood.len())?;
    let pos = is_ood.iter().filter(|&&b| b).count();
    let neg = is_ood.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(Error::invalid(
            "is_ood",
            format!("needs both in- and out-of-distribution rows (got {neg} in, {pos} out)"),
        ));
    }
    Ok((pos, neg))
}

/// Groups of tied scores in decreasing order: (score, positives, negatives) per group.
fn tie_groups(scores: &[f64], is_ood: &[bool]) -> Vec<(f64, usize, usize)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut groups: Vec<(f64, usize, usize)> = Vec::new();
    for i in order {
        let s = scores[i];
        match groups.last_mut() {
            Some(g) if g.0 == s => {
                if is_ood[i] {
                    g.1 += 1
                } else {
                    g.2 += 1
                }
            }
            _ => groups.push((s, is_ood[i] as usize, (!is_ood[i]) as usize)),
        }
    }
    groups
}

/// Exact AUROC from tie groups: every (out, in) pair scores 1 when out is higher, ½ on ties.
fn auroc_from_groups(groups: &[(f64, usize, usize)], pos: usize, neg: usize) -> f64 {
    // Walking from the highest score down, negatives seen so far rank above later positives.
    let mut neg_above = 0u64;
    let mut wins = 0.0f64;
    for &(_, p, n) in groups {
        // Positives in this group beat every negative below; count from the other side:
        // pairs (positive here, negative strictly below) = p * (neg - neg_above - n).
        let below = (neg as u64 - neg_above - n as u64) as f64;
        wins += p as f64 * below + 0.5 * p as f64 * n as f64;
        neg_above += n as u64;
    }
    wins / (pos as f64 * neg as f64)
}

/// Exact AUROC of `scores` for detecting `is_ood` rows, ties averaged.
pub fn auroc(scores: &[f64], is_ood: &[bool]) -> Result<f64> {
    let (pos, neg) = check_scores(scores, is_ood)?;
    Ok(auroc_from_groups(&tie_groups(scores, is_ood), pos, neg))
}

/// ROC curve points, one per distinct score, and the exact AUROC.
pub fn roc_curve(scores: &[f64], is_ood: &[bool]) -> Result<RocCurve> {
    let (pos, neg) = check_scores(scores, is_ood)?;
    let groups = tie_groups(scores, is_ood);
    let mut fpr = vec![0.0];
    let mut tpr = vec![0.0];
    let mut thresholds = vec![f64::MAX];
    let (mut tp, mut fp) = (0usize, 0usize);
    for &(s, p, n) in &groups {
        tp += p;
        fp += n;
        fpr.push(fp as f64 / neg as f64);
        tpr.push(tp as f64 / pos as f64);
        thresholds.push(s);
    }
    Ok(RocCurve {
        fpr,
        tpr,
        thresholds,
        auroc: auroc_from_groups(&groups, pos, neg),
    })
}

/// Average precision with OOD rows as positives (scikit-learn's step-wise definition).
pub fn average_precision(scores: &[f64], is_ood: &[bool]) -> Result<f64> {
    let (pos, _) = check_scores(scores, is_ood)?;
    let (mut tp, mut flagged) = (0usize, 0usize);
    let mut ap = 0.0;
    for (_, p, n) in tie_groups(scores, is_ood) {
        tp += p;
        flagged += p + n;
        ap += (p as f64 / pos as f64) * (tp as f64 / flagged as f64);
    }
    Ok(ap)
}

/// Smallest false-positive rate among ROC points with true-positive rate ≥ `target_tpr`.
pub fn fpr_at_tpr(scores: &[f64], is_ood: &[bool], target_tpr: f64) -> Result<f64> {
    if !(target_tpr > 0.0 && target_tpr <= 1.0) {
        return Err(Error::invalid("target_tpr", "must be in (0, 1]"));
    }
    let curve = roc_curve(scores, is_ood)?;
    // TPR and FPR both grow along the curve, so the first point reaching the target wins.
    Ok(curve
        .tpr
        .iter()
        .zip(&curve.fpr)
        .find(|(&t, _)| t >= target_tpr)
        .map_or(1.0, |(_, &f)| f))
}

/// AUROC, average precision and FPR at 95% TPR of `scores` against `is_ood`.
pub fn ood_metrics(scores: &[f64], is_ood: &[bool]) -> Result<OodMetrics> {
    let (pos, neg) = check_scores(scores, is_ood)?;
    Ok(OodMetrics {
        auroc: auroc(scores, is_ood)?,
        average_precision: average_precision(scores, is_ood)?,
        fpr_at_95_tpr: fpr_at_tpr(scores, is_ood, 0.95)?,
        n_in: neg,
        n_out: pos,
    })
}

/// [`ood_metrics`] from separate in-distribution and out-of-distribution scores.
pub fn ood_metrics_in_out(scores_in: &[f64], scores_out: &[f64]) -> Result<OodMetrics> {
    let scores: Vec<f64> = scores_in.iter().chain(scores_out).copied().collect();
    let is_ood: Vec<bool> = (0..scores.len()).map(|i| i >= scores_in.len()).collect();
    ood_metrics(&scores, &is_ood)
}
