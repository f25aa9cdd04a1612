//! Summaries of the protocol's outcomes

use super::*;

/// Mean and standard error (population std / sqrt(n)) of a list of values.
pub fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let (mean, std) = crate::train::recipes::mean_std(values);
    (mean, std / (values.len().max(1) as f64).sqrt())
}

/// The Markdown table: one row per (method, noise model), test LL and RMSE as mean ± standard
/// error over splits. (Choosing between the noise models is `swag fit --noise auto`'s, measured
/// by `swag bench-uci --fit --noise auto`.)
pub fn uci_table(outcomes: &[UciOutcome]) -> String {
    let splits = outcomes.iter().map(|o| o.split).max().map_or(0, |s| s + 1);
    let pct = UCI_COVERAGE * 100.0;
    let mut out = format!(
        "| method | noise | test LL ({splits} splits) | RMSE | {pct:.0}% coverage: conformal / Gaussian |\n|---|---|---|---|---|\n"
    );
    for noise in UciNoise::ALL {
        for method in UCI_METHODS {
            let rows: Vec<&UciOutcome> = outcomes
                .iter()
                .filter(|o| o.method == method && o.noise == noise)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let (ll, ll_se) =
                mean_and_standard_error(&rows.iter().map(|o| o.test_ll).collect::<Vec<_>>());
            let (rmse, rmse_se) =
                mean_and_standard_error(&rows.iter().map(|o| o.rmse).collect::<Vec<_>>());
            let mean = |f: fn(&UciOutcome) -> f64| {
                rows.iter().map(|o| f(o)).sum::<f64>() / rows.len() as f64
            };
            out.push_str(&format!(
                "| {} | {} | {ll:.3} ± {ll_se:.3} | {rmse:.3} ± {rmse_se:.3} | {:.3} / {:.3} |\n",
                method.display(),
                noise.short(),
                mean(|o| o.conformal_coverage),
                mean(|o| o.gaussian_coverage),
            ));
        }
    }
    out
}
