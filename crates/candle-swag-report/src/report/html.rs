//! `report.html`: one self-contained page (no external files or network): the metric tables
//! with the best value of each column marked, every plot inline as SVG, and the conventions.

use std::fmt::Write;

use super::table::{
    build_table, calibration_sections, classification_columns, ood_columns, regression_columns,
    Table,
};
use super::{Report, ReportPlot};
use candle_swag::error::{Error, Result};

/// Escapes text for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #222; margin: 0; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.lead { color: #555; }
p.note { color: #555; font-size: 0.9em; margin-top: 0.2em; }
table { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; min-width: 4.5em; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f2f5; font-weight: 600; }
td.best { font-weight: 700; background: #e3f4ea; color: #0b5d2a; }
.table-wrap { overflow-x: auto; }
figure { margin: 1.4em 0; }
figure svg { display: block; width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.4em; }
dl.conventions dt { font-weight: 600; margin-top: 0.6em; }
dl.conventions dd { margin-left: 1.2em; color: #333; }
"#;

fn write_table(out: &mut String, id: &str, title: &str, table: &Table) {
    let _ = writeln!(out, "<h2 id=\"{id}\">{}</h2>", esc(title));
    let _ = writeln!(
        out,
        "<div class=\"table-wrap\"><table class=\"metrics\" id=\"table-{id}\">"
    );
    out.push_str("<thead><tr><th>Method</th>");
    for h in &table.headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (r, method) in table.methods.iter().enumerate() {
        let _ = write!(out, "<tr><td>{}</td>", esc(method));
        for (c, value) in table.cells[r].iter().enumerate() {
            if table.is_best(r, c) {
                let _ = write!(out, "<td class=\"best\" title=\"best\">{}</td>", esc(value));
            } else {
                let _ = write!(out, "<td>{}</td>", esc(value));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

/// Reads a plot's SVG and prepares it for inlining: drops anything before the `<svg` tag
/// and the fixed width/height (the viewBox keeps the aspect ratio), and labels it.
fn inline_svg(plot: &ReportPlot) -> Result<String> {
    let path = &plot.files.svg;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let start = text
        .find("<svg")
        .ok_or_else(|| Error::bad_file(path, "no <svg> element"))?;
    let body = &text[start..];
    let tag_end = body
        .find('>')
        .ok_or_else(|| Error::bad_file(path, "unterminated <svg> tag"))?;
    let tag = &body[..tag_end];
    let mut attrs = String::new();
    let mut max_width = None;
    for part in split_attributes(&tag[4..]) {
        if let Some(v) = part.strip_prefix("width=") {
            max_width = Some(v.trim_matches('"').to_string());
        } else if !part.starts_with("height=") {
            attrs.push(' ');
            attrs.push_str(&part);
        }
    }
    let style = max_width
        .map(|w| format!(" style=\"max-width:{}px\"", esc(&w)))
        .unwrap_or_default();
    Ok(format!(
        "<svg{attrs}{style} role=\"img\" aria-label=\"{}\" data-plot=\"{}\"{}",
        esc(&plot.caption),
        esc(&plot.files.name),
        &body[tag_end..]
    ))
}

/// Splits `a="1" b="x y"` into `a="1"`, `b="x y"` (quotes respected).
fn split_attributes(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    parts.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Renders `report` as one HTML page with `plots` inlined (their SVG files are read now).
pub fn to_html(report: &Report, plots: &[ReportPlot]) -> Result<String> {
    let mut out = String::new();
    let title = format!("Calibration report: {}", report.dataset);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let _ = writeln!(
        out,
        "<p class=\"lead\">Best value of each column among the methods is highlighted (↑ higher is better, ↓ lower is better, →t closest to t). Conventions are listed at the end.</p>"
    );
    if !report.classification.is_empty() {
        let m = &report.classification[0].metrics;
        let t = build_table(
            &report.classification,
            |e| &e.method,
            &classification_columns(),
        );
        write_table(
            &mut out,
            "classification",
            &format!("Classification (N = {}, {} classes)", m.n, m.n_classes),
            &t,
        );
    }
    if !report.regression.is_empty() {
        let t = build_table(&report.regression, |e| &e.method, &regression_columns());
        write_table(
            &mut out,
            "regression",
            &format!("Regression (N = {})", report.regression[0].metrics.n),
            &t,
        );
    }
    if !report.ood.is_empty() {
        let t = build_table(&report.ood, |e| &e.method, &ood_columns());
        write_table(&mut out, "ood", "Out-of-distribution detection", &t);
    }
    for section in calibration_sections(report) {
        write_table(&mut out, section.id, &section.title, &section.table);
        let _ = writeln!(out, "<p class=\"note\">{}</p>", esc(&section.note));
    }
    if !plots.is_empty() {
        out.push_str("<h2 id=\"plots\">Plots</h2>\n");
        for p in plots {
            let _ = write!(
                out,
                "<figure id=\"plot-{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>\n",
                esc(&p.files.name),
                inline_svg(p)?,
                esc(&p.caption)
            );
        }
    }
    out.push_str("<h2 id=\"conventions\">Conventions</h2>\n<dl class=\"conventions\">\n");
    for c in &report.conventions {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", esc(&c.topic), esc(&c.text));
    }
    out.push_str("</dl>\n</main>\n</body>\n</html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() -> anyhow::Result<()> {
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        Ok(())
    }

    #[test]
    fn attributes_split_respecting_quotes() -> anyhow::Result<()> {
        assert_eq!(
            split_attributes(r#" width="10" viewBox="0 0 10 20" xmlns="x""#),
            vec![r#"width="10""#, r#"viewBox="0 0 10 20""#, r#"xmlns="x""#]
        );
        Ok(())
    }
}
