//! Summaries of the recipes' outcomes

use super::*;
use crate::train::method::Method;

/// Mean and population standard deviation (divisor n) of a list of values.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A table column: how to read its value from an outcome, and the digits it is printed with.
type Column<'a, O> = (&'a dyn Fn(&O) -> f64, usize);

/// One Markdown row per method present in `outcomes`, in [`Method::ALL`] order: the method's
/// name, then `mean ± std` (population) over its outcomes of each `(value, digits)` column, or
/// the mean alone when there is one outcome.
pub(super) fn method_rows<O>(
    outcomes: &[&O],
    method_of: impl Fn(&O) -> Method,
    columns: &[Column<'_, O>],
) -> String {
    let mut out = String::new();
    for method in Method::ALL {
        let rows: Vec<&O> = outcomes
            .iter()
            .copied()
            .filter(|o| method_of(o) == method)
            .collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("| {} |", method.display()));
        for (value, digits) in columns {
            let (m, s) = mean_std(&rows.iter().map(|o| value(o)).collect::<Vec<_>>());
            out.push_str(&if rows.len() > 1 {
                format!(" {m:.digits$} ± {s:.digits$} |")
            } else {
                format!(" {m:.digits$} |")
            });
        }
        out.push('\n');
    }
    out
}

/// A markdown table of mean ± std (population) over seeds for each method (the mean alone for a
/// single seed): accuracy, NLL, ECE, Brier, and the entropy AUROC when present.
pub fn classification_table(seeds: &[ClassificationSeed]) -> String {
    let outcomes: Vec<&ClassificationOutcome> = seeds.iter().flat_map(|s| &s.outcomes).collect();
    let with_auroc = outcomes.iter().any(|o| o.auroc_entropy.is_some());
    let mut columns: Vec<Column<'_, ClassificationOutcome>> = vec![
        (&|o| o.metrics.accuracy, 4),
        (&|o| o.metrics.nll, 4),
        (&|o| o.metrics.ece, 4),
        (&|o| o.metrics.brier, 4),
    ];
    let mut out = String::from("| method | accuracy | NLL | ECE | Brier |");
    if with_auroc {
        columns.push((&|o| o.auroc_entropy.unwrap_or(f64::NAN), 4));
        out.push_str(" AUROC(entropy) |\n|---|---|---|---|---|---|\n");
    } else {
        out.push_str("\n|---|---|---|---|---|\n");
    }
    out + &method_rows(&outcomes, |o| o.method, &columns)
}

/// A markdown table of mean ± std (population) over seeds for each method (the mean alone for a
/// single seed): RMSE, NLL, CRPS, PICP95, MPIW95 (original target units).
pub fn regression_table(seeds: &[RegressionSeed]) -> String {
    let outcomes: Vec<&RegressionOutcome> = seeds.iter().flat_map(|s| &s.outcomes).collect();
    let columns: [Column<'_, RegressionOutcome>; 5] = [
        (&|o| o.rmse, 2),
        (&|o| o.nll, 3),
        (&|o| o.crps, 2),
        (&|o| o.picp95, 3),
        (&|o| o.mpiw95, 1),
    ];
    String::from("| method | RMSE | NLL | CRPS | PICP95 | MPIW95 |\n|---|---|---|---|---|---|\n")
        + &method_rows(&outcomes, |o| o.method, &columns)
}

/// One JSON object (a line of `--json` output) for a classification outcome: `method`, `seed`,
/// `acc`, `nll`, `ece`, `brier`, and `auroc_entropy` when present.
pub fn classification_json(o: &ClassificationOutcome) -> serde_json::Value {
    let mut v = serde_json::json!({
        "method": o.method.key(),
        "seed": o.seed,
        "acc": o.metrics.accuracy,
        "nll": o.metrics.nll,
        "ece": o.metrics.ece,
        "brier": o.metrics.brier,
    });
    if let (Some(a), Some(map)) = (o.auroc_entropy, v.as_object_mut()) {
        map.insert("auroc_entropy".into(), serde_json::json!(a));
    }
    v
}

/// One JSON object (a line of `--json` output) for a regression outcome: `method`, `seed`,
/// `rmse`, `nll`, `crps`, `picp95`, `mpiw95`.
pub fn regression_json(o: &RegressionOutcome) -> serde_json::Value {
    serde_json::json!({
        "method": o.method.key(),
        "seed": o.seed,
        "rmse": o.rmse,
        "nll": o.nll,
        "crps": o.crps,
        "picp95": o.picp95,
        "mpiw95": o.mpiw95,
    })
}

/// Lines summarising [`Timings`] over seeds (mean ± population std and minimum, wall-clock
/// seconds; the minimum is the least disturbed by other processes).
pub fn timing_summary(timings: &[Timings]) -> String {
    let stat = |f: &dyn Fn(&Timings) -> f64| mean_std(&timings.iter().map(f).collect::<Vec<_>>());
    let (one, one_sd) = stat(&|t| t.train_run0 + t.bma_swag_diag + t.bma_swag);
    let one_min = timings
        .iter()
        .map(|t| t.train_run0 + t.bma_swag_diag + t.bma_swag)
        .fold(f64::INFINITY, f64::min);
    let (tr, tr_sd) = stat(&|t| t.train_run0);
    let (bd, _) = stat(&|t| t.bma_swag_diag);
    let (bs, _) = stat(&|t| t.bma_swag);
    let (all, _) = stat(&|t| t.total);
    format!(
        "\none seed, one run (training with collections, SWAG-diag and SWAG BMAs): {one:.3} ± {one_sd:.3} s (min {one_min:.3} s)\n\
         \x20 training {tr:.3} ± {tr_sd:.3} s, SWAG-diag BMA {bd:.3} s, SWAG BMA {bs:.3} s\n\
         all runs and methods of a seed: {all:.2} s\n"
    )
}
