//! `report.md`: the metric tables (best values in bold), the plots (as PNG links relative to
//! the report directory) and the conventions.

use std::fmt::Write;

use super::table::{
    build_table, calibration_sections, classification_columns, ood_columns, regression_columns,
    Table,
};
use super::{Report, ReportPlot};

/// Escapes the characters that would break a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn write_table(out: &mut String, title: &str, table: &Table) {
    let _ = writeln!(out, "## {title}\n");
    write_rows(out, table);
}

/// The table itself: header, alignment row, one row per method, a blank line.
fn write_rows(out: &mut String, table: &Table) {
    let _ = write!(out, "| Method |");
    for h in &table.headers {
        let _ = write!(out, " {} |", cell(h));
    }
    let _ = write!(out, "\n|---|");
    for _ in &table.headers {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for (r, method) in table.methods.iter().enumerate() {
        let _ = write!(out, "| {} |", cell(method));
        for (c, value) in table.cells[r].iter().enumerate() {
            if table.is_best(r, c) {
                let _ = write!(out, " **{value}** |");
            } else {
                let _ = write!(out, " {value} |");
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

/// Renders `report` as Markdown; `plots` are linked by file name (`<name>.png`).
pub fn to_markdown(report: &Report, plots: &[ReportPlot]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Calibration report: {}\n", cell(&report.dataset));
    let mut methods: Vec<&str> = report
        .classification
        .iter()
        .map(|e| e.method.as_str())
        .chain(report.regression.iter().map(|e| e.method.as_str()))
        .chain(report.ood.iter().map(|e| e.method.as_str()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    methods.retain(|m| seen.insert(*m));
    let _ = writeln!(
        out,
        "Methods: {}. Best value of each column in **bold** (↑ higher is better, ↓ lower is better, →t closest to t).\n",
        methods.join(", ")
    );
    if !report.classification.is_empty() {
        let e = &report.classification[0].metrics;
        let title = format!("Classification (N = {}, {} classes)", e.n, e.n_classes);
        let t = build_table(
            &report.classification,
            |e| &e.method,
            &classification_columns(),
        );
        write_table(&mut out, &title, &t);
    }
    if !report.regression.is_empty() {
        let title = format!("Regression (N = {})", report.regression[0].metrics.n);
        let t = build_table(&report.regression, |e| &e.method, &regression_columns());
        write_table(&mut out, &title, &t);
    }
    if !report.ood.is_empty() {
        let t = build_table(&report.ood, |e| &e.method, &ood_columns());
        write_table(&mut out, "Out-of-distribution detection", &t);
    }
    for section in calibration_sections(report) {
        let _ = writeln!(out, "## {}\n\n{}\n", cell(&section.title), section.note);
        write_rows(&mut out, &section.table);
    }
    if !plots.is_empty() {
        let _ = writeln!(out, "## Plots\n");
        for p in plots {
            let _ = writeln!(
                out,
                "![{}]({}.png)\n\n*{}* ([SVG]({}.svg))\n",
                p.files.name, p.files.name, p.caption, p.files.name
            );
        }
    }
    let _ = writeln!(out, "## Conventions\n");
    for c in &report.conventions {
        let _ = writeln!(out, "- **{}**: {}", c.topic, c.text);
    }
    out
}
