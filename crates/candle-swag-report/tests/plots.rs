//! Every plot is written as a valid, non-empty PNG (decoded, right size, text drawn with the
//! bundled font) and SVG (well-formed tags, text elements), and bad data gives an error that
//! writes nothing.

use anyhow::Result;
use std::path::Path;

use candle_swag::metrics::{
    BinStats, BinningScheme, CalibrationBins, CalibrationCurve, RiskCoverage, RocCurve,
};
use candle_swag::Error;
use candle_swag_report::plot::{self, CalibrationSeries, PlotFiles, SharpnessSeries};

/// Decodes a PNG file; returns (width, height, RGB(A) bytes, bytes per pixel).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: PNG signature",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let ihdr_w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let ihdr_h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (ihdr_w, ihdr_h));
    buf.truncate(info.buffer_size());
    let bpp = info.color_type.samples();
    (info.width, info.height, buf, bpp)
}

/// Number of clearly dark pixels (all channels < 100) in rows `y0..y1`.
fn dark_pixels(w: u32, rgb: &[u8], bpp: usize, y0: u32, y1: u32) -> usize {
    (y0..y1)
        .flat_map(|y| (0..w).map(move |x| ((y * w + x) as usize) * bpp))
        .filter(|&i| rgb[i] < 100 && rgb[i + 1] < 100 && rgb[i + 2] < 100)
        .count()
}

/// Checks that tags in an SVG document are balanced (a small well-formedness check).
fn assert_balanced_svg(svg: &str) {
    assert!(svg.trim_start().starts_with("<svg"), "starts with <svg");
    assert!(svg.trim_end().ends_with("</svg>"), "ends with </svg>");
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unterminated tag") + start;
        let tag = &rest[start + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "closing </{name}>"
            );
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            let name = tag.split_whitespace().next().unwrap().to_string();
            stack.push(name);
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
}

/// Checks both files of a plot and returns the SVG text.
fn check_plot(files: &PlotFiles, size: (u32, u32)) -> String {
    assert_eq!(files.png.extension().unwrap(), "png");
    let (w, h, rgb, bpp) = decode_png(&files.png);
    assert_eq!((w, h), size, "{}: PNG size", files.name);
    // Not blank: many non-white pixels...
    let non_white = rgb
        .chunks(bpp)
        .filter(|p| p[..3] != [255, 255, 255])
        .count();
    assert!(
        non_white > (w * h / 50) as usize,
        "{}: mostly blank",
        files.name
    );
    // ...and the title strip at the top holds dark text pixels, drawn with the bundled font.
    assert!(
        dark_pixels(w, &rgb, bpp, 0, 45) > 100,
        "{}: no title text rendered",
        files.name
    );
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert_balanced_svg(&svg);
    assert!(svg.contains(&format!("viewBox=\"0 0 {} {}\"", size.0, size.1)));
    assert!(svg.contains("<text"), "{}: SVG has no text", files.name);
    assert!(svg.contains("font-family=\"sans-serif\""));
    svg
}

/// Bins built by hand; `ece` is deliberately not what the bins would give, to show that the
/// plot prints the stored value rather than recomputing it.
fn bins(ece: f64) -> CalibrationBins {
    let b = 5;
    let bins = (0..b)
        .map(|i| {
            let lower = i as f64 / b as f64;
            let upper = (i + 1) as f64 / b as f64;
            BinStats {
                lower,
                upper,
                count: if i == 0 { 0 } else { 10 * i },
                mean_confidence: (lower + upper) / 2.0,
                accuracy: ((lower + upper) / 2.0 - 0.05).max(0.0),
            }
        })
        .collect();
    CalibrationBins {
        scheme: BinningScheme::EqualWidth,
        bins,
        ece,
        mce: 0.0567,
        signed_ece: 0.05,
        n: 100,
    }
}

#[test]
fn reliability_plots_are_valid_png_and_svg() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = bins(0.4321);
    let b = bins(0.1234);
    let single = plot::reliability_diagram(dir.path(), "rel", "SWAG", &a)?;
    assert_eq!(single.png, dir.path().join("rel.png"));
    assert_eq!(single.svg, dir.path().join("rel.svg"));
    let svg = check_plot(&single, (900, 860));
    assert!(svg.contains("ECE = 0.4321"), "stored ECE printed");
    assert!(svg.contains("MCE = 0.0567"));
    assert!(svg.contains("Reliability diagram: SWAG"));
    for label in [
        "Accuracy (fraction correct)",
        "Rows per bin",
        "Perfect calibration",
    ] {
        assert!(svg.contains(label), "missing {label}");
    }

    let methods = [("SGD", &a), ("SWA", &b), ("SWAG", &a)];
    let grid = plot::reliability_grid(dir.path(), "grid", &methods)?;
    let svg = check_plot(&grid, (3 * 640, 700));
    for m in ["SGD", "SWA", "SWAG"] {
        assert!(svg.contains(&format!(">\n{m}\n</text>")), "panel title {m}");
    }
    let overlay = plot::reliability_overlay(dir.path(), "overlay", &methods)?;
    let svg = check_plot(&overlay, (900, 650));
    assert!(svg.contains("SWA (ECE 0.1234)"), "legend with stored ECE");
    Ok(())
}

#[test]
fn selective_and_ood_plots_are_valid() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rc = RiskCoverage {
        coverage: (1..=50).map(|k| k as f64 / 50.0).collect(),
        risk: (1..=50).map(|k| 0.2 * k as f64 / 50.0).collect(),
        aurc: 0.5555,
    };
    let files = plot::risk_coverage_plot(dir.path(), "rc", &[("SWAG", &rc), ("SGD", &rc)])?;
    let svg = check_plot(&files, (900, 650));
    assert!(svg.contains("SWAG (AURC 0.5555)"));
    assert!(svg.contains("Coverage"));

    let scores_in: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
    let scores_out: Vec<f64> = (0..60).map(|i| 0.5 + i as f64 / 60.0).collect();
    let files = plot::ood_score_histogram(
        dir.path(),
        "hist",
        "Entropy (nats)",
        &scores_in,
        &scores_out,
        20,
    )?;
    let svg = check_plot(&files, (900, 650));
    assert!(svg.contains("In-distribution (n = 100)"));
    assert!(svg.contains("Out-of-distribution (n = 60)"));

    let roc = RocCurve {
        fpr: vec![0.0, 0.1, 0.5, 1.0],
        tpr: vec![0.0, 0.6, 0.9, 1.0],
        thresholds: vec![f64::MAX, 0.9, 0.5, 0.1],
        auroc: 0.8765,
    };
    let files = plot::roc_plot(dir.path(), "roc", &[("SWAG", &roc)])?;
    let svg = check_plot(&files, (760, 700));
    assert!(svg.contains("SWAG (AUROC 0.8765)"));
    assert!(svg.contains("False-positive rate"));
    Ok(())
}

#[test]
fn regression_plots_are_valid() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let expected: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
    let observed: Vec<f64> = expected.iter().map(|p| p * p).collect();
    let curve = CalibrationCurve { expected, observed };
    let series = [CalibrationSeries {
        method: "SWAG",
        curve: &curve,
        miscalibration_area: 0.1667,
    }];
    let files = plot::calibration_curve_plot(dir.path(), "cal", "central", &series)?;
    let svg = check_plot(&files, (760, 700));
    assert!(svg.contains("SWAG miscalibration area 0.1667"));
    assert!(
        svg.contains("<polygon") || svg.contains("<path"),
        "shaded area drawn"
    );

    let n = 250;
    let x: Vec<f64> = (0..n)
        .map(|i| -1.0 + 2.0 * i as f64 / (n - 1) as f64)
        .collect();
    let mean: Vec<f64> = x.iter().map(|v| v.sin()).collect();
    let std: Vec<f64> = x.iter().map(|v| 0.1 + 0.2 * v.abs()).collect();
    let y: Vec<f64> = mean
        .iter()
        .zip(&std)
        .enumerate()
        .map(|(i, (m, s))| m + s * if i % 7 == 0 { 2.5 } else { 0.5 })
        .collect();
    let files = plot::ordered_intervals(dir.path(), "intervals", "SWAG", &mean, &std, &y, 0.95)?;
    let svg = check_plot(&files, (1000, 620));
    assert!(svg.contains("200 of 250 rows shown"), "thinning stated");
    assert!(svg.contains("Observed target, outside"));

    let band = plot::PredictiveBand {
        x: x.clone(),
        mean: mean.clone(),
        std: std.clone(),
        data_x: x.clone(),
        data_y: y.clone(),
    };
    let files = plot::predictive_band(dir.path(), "band", "SWAG", &band)?;
    let svg = check_plot(&files, (1000, 620));
    assert!(svg.contains("Mean ± 2σ"));

    let std2: Vec<f64> = std.iter().map(|s| 2.0 * s).collect();
    let sharp = [
        SharpnessSeries {
            method: "SWA",
            std: &std,
            sharpness: 0.2222,
        },
        SharpnessSeries {
            method: "SWAG",
            std: &std2,
            sharpness: 0.4444,
        },
    ];
    let files = plot::sharpness_histogram(dir.path(), "sharp", &sharp)?;
    let svg = check_plot(&files, (900, 650));
    assert!(svg.contains("SWAG (sharpness 0.4444)"));
    assert!(svg.contains("Predictive std σ (target units)"));
    Ok(())
}

#[test]
fn bad_data_is_an_error_and_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let is_plot_error = |e: Error| matches!(e, Error::Plot { .. });

    let mut empty = bins(0.1);
    for b in &mut empty.bins {
        b.count = 0;
    }
    assert!(is_plot_error(
        plot::reliability_diagram(d, "a", "m", &empty).unwrap_err()
    ));
    let mut nan = bins(0.1);
    nan.bins[2].accuracy = f64::NAN;
    assert!(is_plot_error(
        plot::reliability_diagram(d, "a", "m", &nan).unwrap_err()
    ));
    assert!(is_plot_error(
        plot::reliability_grid(d, "a", &[]).unwrap_err()
    ));

    let rc = RiskCoverage {
        coverage: vec![],
        risk: vec![],
        aurc: 0.0,
    };
    assert!(is_plot_error(
        plot::risk_coverage_plot(d, "a", &[("m", &rc)]).unwrap_err()
    ));
    assert!(is_plot_error(
        plot::ood_score_histogram(d, "a", "s", &[0.1, f64::INFINITY], &[0.2], 10).unwrap_err()
    ));
    assert!(is_plot_error(
        plot::ood_score_histogram(d, "a", "s", &[], &[0.2], 10).unwrap_err()
    ));
    assert!(plot::ood_score_histogram(d, "a", "s", &[0.1], &[0.2], 0).is_err());
    let v = [1.0, 2.0];
    assert!(is_plot_error(
        plot::ordered_intervals(d, "a", "m", &v, &[1.0], &v, 0.95).unwrap_err()
    ));
    assert!(plot::ordered_intervals(d, "a", "m", &v, &v, &v, 1.5).is_err());
    let band = plot::PredictiveBand {
        x: v.to_vec(),
        mean: v.to_vec(),
        std: vec![1.0, f64::NAN],
        data_x: v.to_vec(),
        data_y: v.to_vec(),
    };
    assert!(is_plot_error(
        plot::predictive_band(d, "a", "m", &band).unwrap_err()
    ));
    let ragged = plot::PredictiveBand {
        std: v.to_vec(),
        data_y: vec![1.0],
        ..band
    };
    assert!(is_plot_error(
        plot::predictive_band(d, "a", "m", &ragged).unwrap_err()
    ));
    // A name that is not a plain file stem is refused.
    assert!(plot::reliability_diagram(d, "../escape", "m", &bins(0.1)).is_err());

    assert_eq!(std::fs::read_dir(d)?.count(), 0, "nothing written");
    Ok(())
}
