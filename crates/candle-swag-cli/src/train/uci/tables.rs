//! Summaries of the protocol's outcomes

use super::*;

/// Mean and standard error (population std / sqrt(n)) of a list of values.
pub fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let (mean, std) = crate::train::recipes::mean_std(values);
    (mean, std / (values.len().max(1) as f64).sqrt())
}

/// Per (split, method), the outcome of the noise model with the lower validation NLL
/// (homoscedastic on a tie): what `--noise auto` would have chosen in the protocol.
pub fn auto_noise_outcomes(outcomes: &[UciOutcome]) -> Vec<UciOutcome> {
    let mut out: Vec<UciOutcome> = Vec::new();
    for o in outcomes
        .iter()
        .filter(|o| o.noise == UciNoise::Homoscedastic)
    {
        let other = outcomes.iter().find(|h| {
            h.noise == UciNoise::Heteroscedastic && h.split == o.split && h.method == o.method
        });
        out.push(match other {
            Some(h) if h.validation_nll < o.validation_nll => h.clone(),
            _ => o.clone(),
        });
    }
    out
}

/// The Markdown table: one row per (method, noise model), test LL and RMSE as mean ± standard
/// error over splits, then `auto` rows ([`auto_noise_outcomes`]; their noise column counts how
/// many splits used each model).
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
    // `auto` rows only when both noise models were run.
    let auto = if outcomes
        .iter()
        .any(|o| o.noise == UciNoise::Heteroscedastic)
    {
        auto_noise_outcomes(outcomes)
    } else {
        Vec::new()
    };
    for method in UCI_METHODS {
        let rows: Vec<&UciOutcome> = auto.iter().filter(|o| o.method == method).collect();
        let hetero = rows
            .iter()
            .filter(|o| o.noise == UciNoise::Heteroscedastic)
            .count();
        if rows.is_empty() {
            continue;
        }
        let (ll, ll_se) =
            mean_and_standard_error(&rows.iter().map(|o| o.test_ll).collect::<Vec<_>>());
        let (rmse, rmse_se) =
            mean_and_standard_error(&rows.iter().map(|o| o.rmse).collect::<Vec<_>>());
        let mean =
            |f: fn(&UciOutcome) -> f64| rows.iter().map(|o| f(o)).sum::<f64>() / rows.len() as f64;
        out.push_str(&format!(
            "| {} | auto ({}/{hetero}) | {ll:.3} ± {ll_se:.3} | {rmse:.3} ± {rmse_se:.3} | {:.3} / {:.3} |\n",
            method.display(),
            rows.len() - hetero,
            mean(|o| o.conformal_coverage),
            mean(|o| o.gaussian_coverage),
        ));
    }
    out
}
