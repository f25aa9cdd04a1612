//! The `metrics.json` layout (see the module docs of [`crate::report`]).

use serde_json::{Map, Value};

use super::table::{
    classification_conformal_columns, classification_recalibration_columns,
    regression_conformal_columns, regression_recalibration_columns, Column,
};
use super::{OodEntry, Report};

/// Adds the values of `columns` for `entry` under their keys, with the calibration row count
/// and the target coverage (non-finite values, such as an infinite conformal width, are
/// written as `null`).
fn add_columns<E>(
    obj: &mut Map<String, Value>,
    entry: &E,
    n_calibration: usize,
    target: f64,
    columns: &[Column<E>],
) {
    obj.insert("n_calibration".into(), Value::from(n_calibration));
    obj.insert("target_coverage".into(), Value::from(target));
    for c in columns {
        let v = (c.value)(entry);
        obj.insert(
            c.key.into(),
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        );
    }
}

/// One method's classification object: the scalar metrics, `aurc`, and its OOD results.
fn classification_object(report: &Report, index: usize) -> Map<String, Value> {
    let e = &report.classification[index];
    let mut obj = match serde_json::to_value(&e.metrics) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    obj.insert("aurc".into(), Value::from(e.aurc));
    if let (Some(setup), Some(c)) = (
        &report.calibration,
        report
            .classification_calibration
            .iter()
            .find(|c| c.method == e.method),
    ) {
        let target = setup.coverage();
        let mut columns = classification_conformal_columns(target);
        columns.extend(classification_recalibration_columns());
        add_columns(&mut obj, c, c.n_calibration, target, &columns);
    }
    if let Some(ood) = report.ood.iter().find(|o| o.method == e.method) {
        add_ood(&mut obj, ood);
    }
    obj
}

fn add_ood(obj: &mut Map<String, Value>, ood: &OodEntry) {
    obj.insert("ood_score".into(), Value::from(ood.score.clone()));
    obj.insert("ood_auroc".into(), Value::from(ood.metrics.auroc));
    obj.insert(
        "ood_average_precision".into(),
        Value::from(ood.metrics.average_precision),
    );
    obj.insert(
        "ood_fpr_at_95_tpr".into(),
        Value::from(ood.metrics.fpr_at_95_tpr),
    );
}

/// Flat object for a single method (with its name under `method`), or one object per method
/// keyed by name.
fn layout(mut methods: Vec<(String, Map<String, Value>)>) -> Value {
    if methods.len() == 1 {
        let (name, mut obj) = methods.remove(0);
        obj.insert("method".into(), Value::from(name));
        return Value::Object(obj);
    }
    Value::Object(
        methods
            .into_iter()
            .map(|(name, obj)| (name, Value::Object(obj)))
            .collect(),
    )
}

/// The content of `metrics.json` for `report` (layout documented in [`crate::report`]).
pub fn metrics_json(report: &Report) -> Value {
    let mut classification: Vec<(String, Map<String, Value>)> = (0..report.classification.len())
        .map(|i| {
            (
                report.classification[i].method.clone(),
                classification_object(report, i),
            )
        })
        .collect();
    // OOD results of methods without a classification entry get objects of their own.
    for ood in &report.ood {
        if !report.classification.iter().any(|c| c.method == ood.method) {
            let mut obj = Map::new();
            add_ood(&mut obj, ood);
            classification.push((ood.method.clone(), obj));
        }
    }
    let regression: Vec<(String, Map<String, Value>)> = report
        .regression
        .iter()
        .map(|e| {
            let mut obj = match serde_json::to_value(&e.metrics) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            if let (Some(setup), Some(c)) = (
                &report.calibration,
                report
                    .regression_calibration
                    .iter()
                    .find(|c| c.method == e.method),
            ) {
                let target = setup.coverage();
                let mut columns = regression_conformal_columns(target);
                columns.extend(regression_recalibration_columns(target));
                add_columns(&mut obj, c, c.n_calibration, target, &columns);
            }
            (e.method.clone(), obj)
        })
        .collect();
    match (classification.is_empty(), regression.is_empty()) {
        (false, true) => layout(classification),
        (true, false) => layout(regression),
        (true, true) => Value::Object(Map::new()),
        (false, false) => {
            let mut top = Map::new();
            top.insert("classification".into(), layout(classification));
            top.insert("regression".into(), layout(regression));
            Value::Object(top)
        }
    }
}
