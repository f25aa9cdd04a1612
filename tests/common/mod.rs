//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use candle_swag::layout::{ParamLayout, ParamSet};
use serde_json::Value;

/// Reads a fixture from tests/fixtures.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture readable"))
        .expect("fixture is JSON")
}

/// Flattens nested JSON arrays of numbers, row-major.
pub fn flat_f64(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(xs) => xs.iter().flat_map(flat_f64).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number")],
        other => panic!("not a number array: {other}"),
    }
}

/// Shape of nested JSON arrays.
pub fn shape_of(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(xs) => {
            let mut s = vec![xs.len()];
            if let Some(first) = xs.first() {
                s.extend(shape_of(first));
            }
            s
        }
        _ => vec![],
    }
}

pub fn tensor_f32(xs: &[f64]) -> Tensor {
    let v: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, xs.len(), &Device::Cpu).unwrap()
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Asserts |a − b| ≤ rtol·|b| + atol elementwise, naming the first failing index.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * w.abs() + atol,
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// The parameter named by an `Error::InvalidArgument`; panics on anything else.
pub fn invalid_name<T: std::fmt::Debug>(r: candle_swag::Result<T>) -> String {
    match r {
        Err(candle_swag::Error::InvalidArgument { name, .. }) => name,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// The f32 bit patterns of a tensor (converted to f32, flattened): "same bits" comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// A `ParamSet` of zero-filled f32 CPU `Var`s with `layout`'s names and shapes.
pub fn zero_params(layout: &ParamLayout) -> ParamSet {
    ParamSet::from_named_vars(
        layout
            .entries()
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    Var::zeros(e.shape.clone(), DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect(),
    )
    .unwrap()
}
