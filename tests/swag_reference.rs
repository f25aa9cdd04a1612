//! SWAG moments, deviations and samples against the original PyTorch implementation's numbers
//! (tests/fixtures/swag_reference.json, three snapshot sequences).

use anyhow::Result;
mod common;

use candle_core::{Device, Tensor, Var};
use candle_swag::layout::{ParamLayout, ParamSet};
use candle_swag::swag::{Divisor, SampleParams, SwagParams, SwagPosterior};
use common::*;
use serde_json::Value;

const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

fn layout_of(case: &Value) -> ParamLayout {
    let first = &case["snapshots"][0];
    let named = case["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let n = n.as_str().unwrap().to_string();
            let shape = shape_of(&first[&n]);
            (n, shape)
        })
        .collect();
    ParamLayout::new(named).unwrap()
}

fn flat_snapshot(case: &Value, snap: &Value) -> Vec<f64> {
    case["order"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| flat_f64(&snap[n.as_str().unwrap()]))
        .collect()
}

fn fitted(case: &Value) -> SwagPosterior {
    let rank = case["rank_k"].as_u64().unwrap() as usize;
    let mut p = SwagPosterior::new(
        layout_of(case),
        SwagParams {
            rank,
            ..Default::default()
        }
        .check()
        .expect("a valid config"),
        &Device::Cpu,
    )
    .unwrap();
    for snap in case["snapshots"].as_array().unwrap() {
        p.collect_flat(&tensor_f32(&flat_snapshot(case, snap)))
            .unwrap();
    }
    p
}

fn cases() -> Vec<Value> {
    fixture("swag_reference.json")["cases"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn moments_and_deviations_match_reference() -> Result<()> {
    for (ci, case) in cases().iter().enumerate() {
        let p = fitted(case);
        let exp = &case["expected"];
        assert_eq!(
            p.n_collected() as u64,
            case["n_collected"].as_u64().unwrap()
        );
        assert_close(
            &format!("case {ci} mean"),
            &to_f64(&p.mean()?),
            &flat_f64(&exp["mean"]),
            RTOL,
            ATOL,
        );
        assert_close(
            &format!("case {ci} sq_mean"),
            &to_f64(&p.sq_mean()?),
            &flat_f64(&exp["sq_mean"]),
            RTOL,
            ATOL,
        );
        assert_close(
            &format!("case {ci} variance"),
            &to_f64(&p.variance(1e-30)?),
            &flat_f64(&exp["variance"]),
            RTOL,
            ATOL,
        );
        let devs = exp["deviations_oldest_first"].as_array().unwrap();
        assert_eq!(p.rows(), devs.len(), "case {ci}: rows held");
        assert_close(
            &format!("case {ci} deviations"),
            &to_f64(&p.deviations()?),
            &flat_f64(&exp["deviations_oldest_first"]),
            RTOL,
            ATOL,
        );
    }
    Ok(())
}

/// The same snapshots fed through named Vars (the training-time path) give the same state.
#[test]
fn collecting_from_vars_matches_flat_collection() -> Result<()> {
    for case in cases() {
        let layout = layout_of(&case);
        let vars: Vec<(String, Var)> = layout
            .entries()
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    Var::zeros(e.shape.clone(), candle_core::DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        let params = ParamSet::from_named_vars(vars)?;
        let rank = case["rank_k"].as_u64().unwrap() as usize;
        let mut p = SwagPosterior::for_params(
            &params,
            SwagParams {
                rank,
                ..Default::default()
            }
            .check()?,
        )?;
        for snap in case["snapshots"].as_array().unwrap() {
            params.write_flat(&tensor_f32(&flat_snapshot(&case, snap)))?;
            p.collect(&params)?;
        }
        let q = fitted(&case);
        assert_eq!(to_f64(&p.mean()?), to_f64(&q.mean()?));
        assert_eq!(to_f64(&p.deviations()?), to_f64(&q.deviations()?));
    }
    Ok(())
}

#[test]
fn samples_with_given_noise_match_reference() -> Result<()> {
    for (ci, case) in cases().iter().enumerate() {
        let p = fitted(case);
        let z1 = tensor_f32(&flat_f64(&case["noise"]["z1"]));
        let z2 = tensor_f32(&flat_f64(&case["noise"]["z2"]));
        let want = &case["sample_scale_0_5"];
        for (divisor, key) in [
            (Divisor::RowsMinusOne, "divisor_rows_minus_1"),
            (Divisor::RankMinusOne, "divisor_k_minus_1"),
        ] {
            let opts = SampleParams {
                scale: 0.5,
                divisor,
                ..Default::default()
            }
            .check()?;
            let got = p.sample_with_noise(&z1, &z2, &opts)?;
            assert_close(
                &format!("case {ci} {key}"),
                &to_f64(&got),
                &flat_f64(&want[key]),
                RTOL,
                ATOL,
            );
        }
        let got = p.sample_with_noise(
            &z1,
            &z2,
            &SampleParams {
                scale: 0.5,
                diag_only: true,
                ..Default::default()
            }
            .check()?,
        )?;
        assert_close(
            &format!("case {ci} diag"),
            &to_f64(&got),
            &flat_f64(&case["sample_scale_0_5_diag_only"]),
            RTOL,
            ATOL,
        );
    }
    Ok(())
}

/// Fewer snapshots than K: the two divisors differ, and in the documented direction.
#[test]
fn divisors_differ_only_while_fewer_than_k_columns() -> Result<()> {
    for case in cases() {
        let p = fitted(&case);
        let rows = p.rows() as f64;
        let k = p.rank() as f64;
        assert_eq!(
            p.divisor_value(Divisor::RowsMinusOne),
            (rows - 1.0).max(1.0)
        );
        assert_eq!(p.divisor_value(Divisor::RankMinusOne), (k - 1.0).max(1.0));
    }
    Ok(())
}

#[test]
fn scale_zero_gives_the_mean_exactly() -> Result<()> {
    let case = &cases()[0];
    let p = fitted(case);
    let z1 = tensor_f32(&flat_f64(&case["noise"]["z1"]));
    let z2 = tensor_f32(&flat_f64(&case["noise"]["z2"]));
    let got = p.sample_with_noise(
        &z1,
        &z2,
        &SampleParams {
            scale: 0.0,
            ..Default::default()
        }
        .check()?,
    )?;
    assert_eq!(to_f64(&got), to_f64(&p.mean()?));
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu);
    Ok(())
}
