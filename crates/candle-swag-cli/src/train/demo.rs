//! `swag demo`: the digits and diabetes recipes of BENCHMARKS.md, one seed each, printed as
//! metric tables and written as calibration reports (metrics.json, report.md, report.html and
//! the plots) into one directory:
//!
//! ```text
//! OUT/README.md            both tables and how they were made
//! OUT/digits/              SGD, SWA, SWAG-diag, SWAG, MultiSWAG on the 599 test digits
//! OUT/diabetes/            the same methods (reference noise) plus SWAG and MultiSWAG with the
//!                          scale and noise tuned on a validation split, on the 88 test rows
//! ```
//!
//! The directory is written atomically.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;

use super::method::Method;
use super::recipes::{
    classification_table, regression_table, run_diabetes, run_digits, ClassificationSeed,
    RecipeConfig, RecipeParams, RegressionSeed,
};
use candle_swag::crash_safe::{write_dir_atomic, write_file_atomic};
use candle_swag::error::Result;
use candle_swag_report::report::ReportBuilder;

/// What the demo computed.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The digits seed.
    pub digits: ClassificationSeed,
    /// The diabetes seed (reference outcomes and tuned outcomes).
    pub diabetes: RegressionSeed,
    /// Markdown tables, as printed.
    pub text: String,
    /// Wall-clock seconds of the whole demo, report included.
    pub seconds: f64,
}

/// Runs both recipes for `seed` and writes the reports into `out`.
pub fn run_demo(
    seed: u64,
    opts: &RecipeConfig,
    out: impl AsRef<Path>,
    device: &Device,
) -> Result<DemoSummary> {
    let start = Instant::now();
    let digits = run_digits(seed, false, opts, device)?;
    let diabetes_opts = RecipeParams {
        tune_scale: true,
        ..(**opts).clone()
    }
    .check()?;
    let diabetes = run_diabetes(seed, &diabetes_opts, device)?;

    let mut text = format!(
        "## Digits (seed {seed}, {} samples, scale {})\n\n{}",
        opts.samples,
        opts.scale,
        classification_table(std::slice::from_ref(&digits))
    );
    let tuned_only = RegressionSeed {
        outcomes: diabetes.tuned.clone(),
        ..diabetes.clone()
    };
    text.push_str(&format!(
        "\n## Diabetes (seed {seed}), reference recipe: noise = training residual, scale {}\n\n{}",
        opts.scale,
        regression_table(std::slice::from_ref(&diabetes))
    ));
    text.push_str(&format!(
        "\n## Diabetes (seed {seed}), scale and noise tuned on a validation split (20% of the training rows)\n\n{}",
        regression_table(std::slice::from_ref(&tuned_only))
    ));

    let mut digits_report = ReportBuilder::new("digits (599 test rows)");
    for o in &digits.outcomes {
        digits_report = digits_report.classification_method(
            o.method.display(),
            &o.prediction.mean_probs,
            o.prediction.n_classes,
            &o.labels,
        )?;
    }
    let mut diabetes_report = ReportBuilder::new("diabetes (88 test rows, target units)");
    for o in &diabetes.outcomes {
        diabetes_report = diabetes_report.regression_method(
            o.method.display(),
            &o.prediction.mean,
            &o.std(),
            &o.targets,
        )?;
    }
    for o in diabetes
        .tuned
        .iter()
        .filter(|o| matches!(o.method, Method::Swag | Method::MultiSwag))
    {
        diabetes_report = diabetes_report.regression_method(
            &format!("{} (tuned)", o.method.display()),
            &o.prediction.mean,
            &o.std(),
            &o.targets,
        )?;
    }
    let readme = format!(
        "# candle-swag demo\n\nThe recipes of BENCHMARKS.md, one seed each. Reports: \
         [digits](digits/report.html), [diabetes](diabetes/report.html).\n\n{text}"
    );
    write_dir_atomic(out, |tmp| {
        digits_report.write(tmp.join("digits"))?;
        diabetes_report.write(tmp.join("diabetes"))?;
        write_file_atomic(tmp.join("README.md"), readme.as_bytes())
    })?;
    Ok(DemoSummary {
        digits,
        diabetes,
        text,
        seconds: start.elapsed().as_secs_f64(),
    })
}
