//! The metric tables of a report: which metrics are shown, in what order, and which value of
//! each column is best.

use super::{
    fitted_on_rows, ClassificationCalibration, ClassificationEntry, OodEntry,
    RegressionCalibration, RegressionEntry, Report,
};
use crate::plot::style::percent;
use candle_swag::metrics::SetScore;

/// Which value of a metric is best.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Direction {
    /// Larger values are better (accuracy, AUROC).
    HigherIsBetter,
    /// Smaller values are better (NLL, ECE, RMSE, CRPS).
    LowerIsBetter,
    /// The value closest to a target is best (signed ECE: 0; PICP at 95%: 0.95).
    Closest(f64),
    /// Not ranked: smaller is better only when calibration holds (sharpness, interval width).
    NotRanked,
}

impl Direction {
    /// Short marker for table headers: ↑, ↓, → target, or nothing.
    pub fn marker(self) -> String {
        match self {
            Direction::HigherIsBetter => "↑".into(),
            Direction::LowerIsBetter => "↓".into(),
            Direction::Closest(t) => format!("→{t}"),
            Direction::NotRanked => String::new(),
        }
    }

    /// Indices of the best of `values` (all of them on ties; NaN never wins); empty when not
    /// ranked or fewer than two values (a single method is not "best" of anything).
    pub fn best(self, values: &[f64]) -> Vec<usize> {
        let score = |v: f64| match self {
            Direction::HigherIsBetter => -v,
            Direction::LowerIsBetter => v,
            Direction::Closest(t) => (v - t).abs(),
            Direction::NotRanked => 0.0,
        };
        if values.len() < 2 || self == Direction::NotRanked {
            return Vec::new();
        }
        let top = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| score(v))
            .fold(f64::INFINITY, f64::min);
        (0..values.len())
            .filter(|&i| values[i].is_finite() && score(values[i]) == top)
            .collect()
    }
}

/// One column of a metric table.
#[derive(Debug, Clone, Copy)]
pub struct Column<E> {
    /// Key in `metrics.json`.
    pub key: &'static str,
    /// Header shown in the Markdown and HTML tables.
    pub label: &'static str,
    /// Which value is best.
    pub direction: Direction,
    /// Digits after the decimal point.
    pub digits: usize,
    /// Reads the value from an entry.
    pub value: fn(&E) -> f64,
}

impl<E> Column<E> {
    /// A column: JSON key, header label, best direction, digits, and how to read the value.
    pub const fn new(
        key: &'static str,
        label: &'static str,
        direction: Direction,
        digits: usize,
        value: fn(&E) -> f64,
    ) -> Self {
        Self {
            key,
            label,
            direction,
            digits,
            value,
        }
    }
}

/// Columns of the classification table, in display order.
pub fn classification_columns() -> Vec<Column<ClassificationEntry>> {
    use Direction::*;
    vec![
        Column::new("accuracy", "Accuracy", HigherIsBetter, 4, |e| {
            e.metrics.accuracy
        }),
        Column::new("nll", "NLL", LowerIsBetter, 4, |e| e.metrics.nll),
        Column::new("brier", "Brier", LowerIsBetter, 4, |e| e.metrics.brier),
        Column::new("ece", "ECE", LowerIsBetter, 4, |e| e.metrics.ece),
        Column::new("mce", "MCE", LowerIsBetter, 4, |e| e.metrics.mce),
        Column::new("signed_ece", "Signed ECE", Closest(0.0), 4, |e| {
            e.metrics.signed_ece
        }),
        Column::new(
            "ece_equal_mass",
            "ECE (equal mass)",
            LowerIsBetter,
            4,
            |e| e.metrics.ece_equal_mass,
        ),
        Column::new("classwise_ece", "Classwise ECE", LowerIsBetter, 4, |e| {
            e.metrics.classwise_ece
        }),
        Column::new("l2_debiased", "L2 CE (debiased)", LowerIsBetter, 4, |e| {
            e.metrics.l2_debiased
        }),
        Column::new("aurc", "AURC", LowerIsBetter, 4, |e| e.aurc),
    ]
}

/// Columns of the regression table, in display order.
pub fn regression_columns() -> Vec<Column<RegressionEntry>> {
    use Direction::*;
    vec![
        Column::new("rmse", "RMSE", LowerIsBetter, 4, |e| e.metrics.rmse),
        Column::new("mae", "MAE", LowerIsBetter, 4, |e| e.metrics.mae),
        Column::new("nll", "NLL", LowerIsBetter, 4, |e| e.metrics.nll),
        Column::new("crps", "CRPS", LowerIsBetter, 4, |e| e.metrics.crps),
        Column::new("picp_95", "PICP 95%", Closest(0.95), 4, |e| {
            e.metrics.picp_95
        }),
        Column::new("mpiw_95", "MPIW 95%", NotRanked, 4, |e| e.metrics.mpiw_95),
        Column::new("mace", "MACE", LowerIsBetter, 4, |e| e.metrics.mace),
        Column::new("rmsce", "RMSCE", LowerIsBetter, 4, |e| e.metrics.rmsce),
        Column::new(
            "miscalibration_area",
            "Miscal. area",
            LowerIsBetter,
            4,
            |e| e.metrics.miscalibration_area,
        ),
        Column::new("sharpness", "Sharpness", NotRanked, 4, |e| {
            e.metrics.sharpness
        }),
        Column::new("check_score", "Check score", LowerIsBetter, 4, |e| {
            e.metrics.check_score
        }),
        Column::new("interval_score", "Interval score", LowerIsBetter, 4, |e| {
            e.metrics.interval_score
        }),
    ]
}

/// Columns of the OOD-detection table, in display order.
pub fn ood_columns() -> Vec<Column<OodEntry>> {
    use Direction::*;
    vec![
        Column::new("auroc", "AUROC", HigherIsBetter, 4, |e| e.metrics.auroc),
        Column::new(
            "average_precision",
            "Average precision",
            HigherIsBetter,
            4,
            |e| e.metrics.average_precision,
        ),
        Column::new("fpr_at_95_tpr", "FPR at 95% TPR", LowerIsBetter, 4, |e| {
            e.metrics.fpr_at_95_tpr
        }),
    ]
}

/// Columns of the split-conformal prediction-set table (`target`: the nominal coverage).
pub fn classification_conformal_columns(target: f64) -> Vec<Column<ClassificationCalibration>> {
    use Direction::*;
    vec![
        Column::new("set_coverage", "Set coverage", Closest(target), 4, |e| {
            e.set_evaluation.coverage
        }),
        Column::new("set_size", "Mean set size", NotRanked, 3, |e| {
            e.set_evaluation.mean_size
        }),
        Column::new("set_quantile", "Conformal q̂", NotRanked, 4, |e| {
            e.sets.quantile
        }),
    ]
}

/// Columns of the confidence-recalibration table: test ECE before and after each map.
pub fn classification_recalibration_columns() -> Vec<Column<ClassificationCalibration>> {
    use Direction::*;
    vec![
        Column::new("ece", "ECE raw", LowerIsBetter, 4, |e| e.ece),
        Column::new(
            "ece_temperature",
            "ECE temperature",
            LowerIsBetter,
            4,
            |e| e.ece_temperature,
        ),
        Column::new("ece_isotonic", "ECE isotonic", LowerIsBetter, 4, |e| {
            e.ece_isotonic
        }),
        Column::new(
            "ece_histogram",
            "ECE histogram binning",
            LowerIsBetter,
            4,
            |e| e.ece_histogram,
        ),
        Column::new("temperature", "Temperature T", NotRanked, 4, |e| {
            e.temperature.temperature
        }),
    ]
}

/// Columns of the conformal-against-Gaussian interval table (`target`: the nominal coverage).
pub fn regression_conformal_columns(target: f64) -> Vec<Column<RegressionCalibration>> {
    use Direction::*;
    vec![
        Column::new(
            "gaussian_coverage",
            "Gaussian coverage",
            Closest(target),
            4,
            |e| e.gaussian.picp,
        ),
        Column::new("gaussian_width", "Gaussian mean width", NotRanked, 4, |e| {
            e.gaussian.mpiw
        }),
        Column::new(
            "conformal_coverage",
            "Conformal coverage",
            Closest(target),
            4,
            |e| e.conformal_evaluation.coverage,
        ),
        Column::new(
            "conformal_width",
            "Conformal mean width",
            NotRanked,
            4,
            |e| e.conformal_evaluation.mean_size,
        ),
        Column::new(
            "conformal_quantile",
            "Conformal q̂ (σ units)",
            NotRanked,
            4,
            |e| e.conformal.quantile,
        ),
    ]
}

/// Columns of the regression-recalibration table: test MACE, coverage and width before and
/// after σ scaling and isotonic quantile recalibration (`target`: the nominal coverage).
pub fn regression_recalibration_columns(target: f64) -> Vec<Column<RegressionCalibration>> {
    use Direction::*;
    vec![
        Column::new("mace", "MACE raw", LowerIsBetter, 4, |e| e.mace),
        Column::new(
            "mace_sigma_scaled",
            "MACE σ scaling",
            LowerIsBetter,
            4,
            |e| e.mace_sigma_scaled,
        ),
        Column::new("mace_isotonic", "MACE isotonic", LowerIsBetter, 4, |e| {
            e.mace_isotonic
        }),
        Column::new(
            "gaussian_coverage",
            "Coverage raw",
            Closest(target),
            4,
            |e| e.gaussian.picp,
        ),
        Column::new(
            "sigma_scaled_coverage",
            "Coverage σ scaling",
            Closest(target),
            4,
            |e| e.sigma_scaled.picp,
        ),
        Column::new(
            "isotonic_coverage",
            "Coverage isotonic",
            Closest(target),
            4,
            |e| e.isotonic.picp,
        ),
        Column::new(
            "sigma_scaled_width",
            "Width σ scaling",
            NotRanked,
            4,
            |e| e.sigma_scaled.mpiw,
        ),
        Column::new("isotonic_width", "Width isotonic", NotRanked, 4, |e| {
            e.isotonic.mpiw
        }),
        Column::new("sigma_scale", "σ scale s", NotRanked, 4, |e| {
            e.sigma_scaling.scale
        }),
    ]
}

/// A table of the calibration sections with its anchor, title and the sentence that says what
/// its maps were fitted on.
#[derive(Debug, Clone)]
pub struct Section {
    /// Anchor id (HTML) of the section.
    pub id: &'static str,
    /// Section title.
    pub title: String,
    /// What was fitted on which part, and what is scored.
    pub note: String,
    /// The table.
    pub table: Table,
}

/// The calibration sections of `report`, in display order: none when it has no calibration
/// data. Markdown and HTML render these same sections.
pub fn calibration_sections(report: &Report) -> Vec<Section> {
    let Some(setup) = &report.calibration else {
        return Vec::new();
    };
    let level = percent(setup.coverage());
    let target = setup.coverage();
    let mut out = Vec::new();
    let c = &report.classification_calibration;
    if !c.is_empty() {
        let fitted = fitted_on_rows(setup, c.iter().map(|e| e.n_calibration));
        let score = match setup.set_score() {
            SetScore::Aps => "APS".to_string(),
            SetScore::Raps { lambda, k_reg } => format!("RAPS, λ = {lambda}, k_reg = {k_reg}"),
        };
        let n = c[0].set_evaluation.n;
        out.push(Section {
            id: "conformal-sets",
            title: format!("Conformal prediction sets at {level}% ({score})"),
            note: format!(
                "Conformal quantile {fitted}; coverage and mean set size on the {n} test rows."
            ),
            table: build_table(c, |e| &e.method, &classification_conformal_columns(target)),
        });
        out.push(Section {
            id: "recalibration-classification",
            title: "Recalibration of confidence".into(),
            note: format!(
                "Temperature scaling, isotonic regression and histogram binning, each {fitted}; top-label ECE on the {n} test rows, raw beside recalibrated."
            ),
            table: build_table(c, |e| &e.method, &classification_recalibration_columns()),
        });
    }
    let r = &report.regression_calibration;
    if !r.is_empty() {
        let fitted = fitted_on_rows(setup, r.iter().map(|e| e.n_calibration));
        let n = r[0].conformal_evaluation.n;
        out.push(Section {
            id: "conformal-intervals",
            title: format!("Conformal and Gaussian intervals at {level}%"),
            note: format!(
                "Split-conformal quantile of |y − μ|/σ {fitted}; coverage and mean width on the {n} test rows, beside the plain Gaussian intervals μ ± zσ of the same predictions."
            ),
            table: build_table(r, |e| &e.method, &regression_conformal_columns(target)),
        });
        out.push(Section {
            id: "recalibration-regression",
            title: "Recalibration of regression quantiles".into(),
            note: format!(
                "σ scaling and isotonic quantile recalibration (Kuleshov et al. 2018), each {fitted}; MACE of the interval calibration curve, and coverage and mean width at {level}%, on the {n} test rows, raw beside recalibrated."
            ),
            table: build_table(
                r,
                |e| &e.method,
                &regression_recalibration_columns(target),
            ),
        });
    }
    out
}

/// A rendered table: header labels, method names, formatted cells and, per column, the row
/// holding the best value.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column headers, each with its direction marker (↑, ↓, →target).
    pub headers: Vec<String>,
    /// One method name per row.
    pub methods: Vec<String>,
    /// `cells[row][column]`, formatted.
    pub cells: Vec<Vec<String>>,
    /// For each column, the rows holding the best value as displayed (ties all marked; none
    /// when not ranked or a single row).
    pub best: Vec<Vec<usize>>,
}

impl Table {
    /// Whether the cell at `row`, `column` holds a best value.
    pub fn is_best(&self, row: usize, column: usize) -> bool {
        self.best[column].contains(&row)
    }
}

/// Formats a table of `entries` (one row each, named by `method`) under `columns`.
pub fn build_table<E>(entries: &[E], method: fn(&E) -> &str, columns: &[Column<E>]) -> Table {
    let headers = columns
        .iter()
        .map(|c| {
            let m = c.direction.marker();
            if m.is_empty() {
                c.label.to_string()
            } else {
                format!("{} {m}", c.label)
            }
        })
        .collect();
    let cells = entries
        .iter()
        .map(|e| {
            columns
                .iter()
                .map(|c| format!("{:.*}", c.digits, (c.value)(e)))
                .collect()
        })
        .collect();
    let best = columns
        .iter()
        .map(|c| {
            // Compare the values as displayed, so equal-looking cells are marked alike.
            let scale = 10f64.powi(c.digits as i32);
            let values: Vec<f64> = entries
                .iter()
                .map(|e| ((c.value)(e) * scale).round() / scale)
                .collect();
            c.direction.best(&values)
        })
        .collect();
    Table {
        headers,
        methods: entries.iter().map(|e| method(e).to_string()).collect(),
        cells,
        best,
    }
}

#[cfg(test)]
mod tests {
    use super::Direction::*;

    #[test]
    fn best_follows_direction() -> anyhow::Result<()> {
        let v = [0.3, 0.1, 0.5];
        assert_eq!(HigherIsBetter.best(&v), vec![2]);
        assert_eq!(LowerIsBetter.best(&v), vec![1]);
        assert_eq!(Closest(0.45).best(&v), vec![2]);
        assert_eq!(Closest(0.0).best(&[-0.05, 0.1]), vec![0]);
        assert!(NotRanked.best(&v).is_empty());
        assert!(LowerIsBetter.best(&[0.2]).is_empty());
        // NaN never wins; ties are all best.
        assert_eq!(LowerIsBetter.best(&[f64::NAN, 0.2, 0.2]), vec![1, 2]);
        Ok(())
    }
}
