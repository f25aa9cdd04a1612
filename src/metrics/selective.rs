//! Selective prediction: the risk–coverage curve and the area under it (AURC).
//!
//! Rows are sorted by confidence, most confident first. Keeping the `k` most confident rows
//! gives coverage `k/N` and risk `errors among them / k`.
//!
//! * **AURC, mean-risk convention** (Geifman et al. 2019): `(1/N) Σ_{k=1..N} risk_k`.
//! * **Trapezoid variant** ([`RiskCoverage::aurc_trapezoid`]): the trapezoidal area under the curve from
//!   coverage `1/N` to 1, divided by the covered width `1 − 1/N`, so both conventions are
//!   averages of the risk. For `N = 1` it is `risk_1`.
//!
//! Ties in confidence have no natural order, so a tied group enters with its average error
//! rate: `risk_k` is its expectation over random orderings of the tie. Without ties this is the
//! plain definition; with ties the result does not depend on the row order.

use serde::{Deserialize, Serialize};

use super::{check_same_len, check_values};
use crate::Result;

/// Risk–coverage curve for plotting, and its mean-risk AURC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskCoverage {
    /// Coverage `k/N`, `k = 1..N`.
    pub coverage: Vec<f64>,
    /// Risk (error rate) among the `k` most confident rows.
    pub risk: Vec<f64>,
    /// Mean of `risk` (the mean-risk AURC).
    pub aurc: f64,
}

/// Risk–coverage curve of `confidence` (higher = more confident) against `error`.
pub fn risk_coverage(confidence: &[f64], error: &[bool]) -> Result<RiskCoverage> {
    check_values("confidence", confidence)?;
    check_same_len("confidence", confidence.len(), "error", error.len())?;
    let n = confidence.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| confidence[b].total_cmp(&confidence[a]));
    let mut coverage = Vec::with_capacity(n);
    let mut risk = Vec::with_capacity(n);
    let mut errors_before = 0.0f64;
    let mut start = 0;
    while start < n {
        let c = confidence[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| confidence[i] == c)
                .count();
        let group_errors = order[start..end].iter().filter(|&&i| error[i]).count() as f64;
        let rate = group_errors / (end - start) as f64;
        for k in start + 1..=end {
            coverage.push(k as f64 / n as f64);
            risk.push((errors_before + (k - start) as f64 * rate) / k as f64);
        }
        errors_before += group_errors;
        start = end;
    }
    let aurc = risk.iter().sum::<f64>() / n as f64;
    Ok(RiskCoverage {
        coverage,
        risk,
        aurc,
    })
}

impl RiskCoverage {
    /// Trapezoidal area under the curve over `[1/N, 1]`, divided by `1 − 1/N` (module docs).
    pub fn aurc_trapezoid(&self) -> f64 {
        let curve = self;
        let n = curve.risk.len();
        if n < 2 {
            return curve.risk.first().copied().unwrap_or(0.0);
        }
        let area: f64 = curve
            .coverage
            .windows(2)
            .zip(curve.risk.windows(2))
            .map(|(c, r)| (c[1] - c[0]) * 0.5 * (r[0] + r[1]))
            .sum();
        area / (1.0 - 1.0 / n as f64)
    }
}
