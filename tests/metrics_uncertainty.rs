//! Uncertainty decomposition, OOD detection and selective prediction, checked against hand
//! values and slow obvious implementations.

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_swag::metrics::{
    auroc, average_precision, decompose_uncertainty, decompose_uncertainty_tensor, fpr_at_tpr,
    ood_metrics_in_out, risk_coverage, roc_curve,
};
use candle_swag::Error;
use proptest::prelude::*;

fn ln(x: f64) -> f64 {
    x.ln()
}

#[test]
fn decomposition_hand_values() -> Result<()> {
    // S = 2 samples, N = 2 rows, C = 2 classes.
    // Row 0: samples [1, 0] and [0, 1] -> mean [.5, .5]: H = ln 2, E[H] = 0, MI = ln 2,
    //        votes 1 and 1 -> variation ratio 1 − 1/2.
    // Row 1: samples [.5, .5] twice -> H = ln 2, E[H] = ln 2, MI = 0, variation ratio 0.
    let s: Vec<f32> = vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.5, 0.5];
    let d = decompose_uncertainty(&s, 2, 2)?;
    let l2 = ln(2.0);
    assert!((d.predictive_entropy[0] - l2).abs() < 1e-12);
    assert!(d.expected_entropy[0].abs() < 1e-12);
    assert!((d.mutual_information[0] - l2).abs() < 1e-12);
    assert_eq!(d.variation_ratio[0], 0.5);
    assert!((d.predictive_entropy[1] - l2).abs() < 1e-12);
    assert!((d.expected_entropy[1] - l2).abs() < 1e-12);
    assert_eq!(d.mutual_information[1], 0.0);
    assert_eq!(d.variation_ratio[1], 0.0);
    assert_eq!(d.mean_probs, vec![0.5, 0.5, 0.5, 0.5]);
    let summary = d.summary();
    assert!((summary.mutual_information - l2 / 2.0).abs() < 1e-12);

    let t = Tensor::from_vec(s.clone(), (2, 2, 2), &Device::Cpu)?;
    assert_eq!(decompose_uncertainty_tensor(&t)?, d);
    // One sample: the predictive entropy is that distribution's own entropy.
    let h = decompose_uncertainty(&[0.25f64, 0.25, 0.5], 1, 3)?.predictive_entropy;
    assert!((h[0] - (-(2.0 * 0.25 * ln(0.25)) - 0.5 * ln(0.5))).abs() < 1e-12);
    Ok(())
}

#[test]
fn decomposition_names_the_bad_sample_row() -> Result<()> {
    let s: Vec<f32> = vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.5, 0.6];
    match decompose_uncertainty(&s, 2, 2).unwrap_err() {
        Error::BadData { row, column, .. } => {
            assert_eq!(row, 2);
            assert_eq!(column, "sample 1, row sum");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(decompose_uncertainty(&s[..7], 2, 2).is_err());
    Ok(())
}

fn samples_strategy() -> impl Strategy<Value = (Vec<f64>, usize, usize)> {
    (1usize..5, 1usize..4, 2usize..4).prop_flat_map(|(s, n, c)| {
        prop::collection::vec(prop::collection::vec(0.01f64..1.0, c), s * n).prop_map(move |rows| {
            let flat = rows
                .into_iter()
                .flat_map(|w| {
                    let t: f64 = w.iter().sum();
                    w.into_iter().map(move |x| x / t)
                })
                .collect();
            (flat, s, c)
        })
    })
}

proptest! {
    #[test]
    fn mutual_information_is_non_negative_and_zero_when_samples_agree(
        (flat, s, c) in samples_strategy()
    ) {
        let d = decompose_uncertainty(&flat, s, c).unwrap();
        for i in 0..d.n_rows() {
            // Entropy is concave: H(mean) ≥ mean H, before any clamping (up to rounding).
            prop_assert!(d.predictive_entropy[i] - d.expected_entropy[i] >= -1e-12);
            // Predictive = expected + MI unless the clamp was active (rounding only).
            let gap = d.predictive_entropy[i] - d.expected_entropy[i] - d.mutual_information[i];
            prop_assert!(gap.abs() < 1e-12);
            prop_assert!((0.0..1.0).contains(&d.variation_ratio[i]));
        }
        // Repeat the first sample S times: all samples agree.
        let n = flat.len() / (s * c);
        let first = &flat[..n * c];
        let same: Vec<f64> = (0..s).flat_map(|_| first.to_vec()).collect();
        let d = decompose_uncertainty(&same, s, c).unwrap();
        for i in 0..n {
            prop_assert!(d.mutual_information[i] < 1e-12);
            prop_assert_eq!(d.variation_ratio[i], 0.0);
        }
    }

    #[test]
    fn auroc_equals_the_pairwise_count(
        data in prop::collection::vec((0u8..6, any::<bool>()), 2..80)
    ) {
        let scores: Vec<f64> = data.iter().map(|(s, _)| *s as f64 / 2.0).collect();
        let is_ood: Vec<bool> = data.iter().map(|(_, o)| *o).collect();
        let pos = is_ood.iter().filter(|&&b| b).count();
        prop_assume!(pos > 0 && pos < is_ood.len());
        // O(n²): 1 per (out, in) pair ordered correctly, ½ per tie.
        let mut wins = 0.0;
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if is_ood[i] && !is_ood[j] {
                    if scores[i] > scores[j] {
                        wins += 1.0;
                    } else if scores[i] == scores[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        let want = wins / (pos * (is_ood.len() - pos)) as f64;
        let got = auroc(&scores, &is_ood).unwrap();
        prop_assert!((got - want).abs() < 1e-12);
        // The trapezoidal area under the ROC points is the same number.
        let roc = roc_curve(&scores, &is_ood).unwrap();
        let area: f64 = (1..roc.fpr.len())
            .map(|k| (roc.fpr[k] - roc.fpr[k - 1]) * 0.5 * (roc.tpr[k] + roc.tpr[k - 1]))
            .sum();
        prop_assert!((area - want).abs() < 1e-12);
        prop_assert_eq!(*roc.fpr.last().unwrap(), 1.0);
        prop_assert_eq!(*roc.tpr.last().unwrap(), 1.0);

        // Average precision by its definition: for every distinct threshold t, recall gain
        // times precision among rows with score ≥ t.
        let mut thresholds = scores.clone();
        thresholds.sort_by(|a, b| b.total_cmp(a));
        thresholds.dedup();
        let mut ap = 0.0;
        let mut prev_recall = 0.0;
        for t in thresholds {
            let flagged: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] >= t).collect();
            let tp = flagged.iter().filter(|&&i| is_ood[i]).count() as f64;
            let recall = tp / pos as f64;
            ap += (recall - prev_recall) * tp / flagged.len() as f64;
            prev_recall = recall;
        }
        prop_assert!((average_precision(&scores, &is_ood).unwrap() - ap).abs() < 1e-12);
    }

    #[test]
    fn risk_coverage_does_not_depend_on_row_order(
        data in prop::collection::vec((0u8..4, any::<bool>()), 1..40)
    ) {
        let conf: Vec<f64> = data.iter().map(|(c, _)| *c as f64).collect();
        let err: Vec<bool> = data.iter().map(|(_, e)| *e).collect();
        let a = risk_coverage(&conf, &err).unwrap();
        let b = risk_coverage(
            &conf.iter().rev().copied().collect::<Vec<_>>(),
            &err.iter().rev().copied().collect::<Vec<_>>(),
        )
        .unwrap();
        for (x, y) in a.risk.iter().zip(&b.risk) {
            prop_assert!((x - y).abs() < 1e-12);
        }
        // At full coverage the risk is the error rate.
        let rate = err.iter().filter(|&&e| e).count() as f64 / err.len() as f64;
        prop_assert!((a.risk.last().unwrap() - rate).abs() < 1e-12);
    }
}

#[test]
fn tied_confidences_enter_with_their_mean_error_rate() -> Result<()> {
    // Two rows tied at 0.9 (one error), one at 0.5 (correct).
    let curve = risk_coverage(&[0.9, 0.9, 0.5], &[true, false, false])?;
    assert_eq!(curve.risk, vec![0.5, 0.5, 1.0 / 3.0]);
    assert_eq!(curve.coverage, vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
    Ok(())
}

#[test]
fn ood_edge_cases() -> Result<()> {
    // Perfect separation.
    assert_eq!(
        auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true])?,
        1.0
    );
    // Everything tied: chance.
    assert_eq!(auroc(&[1.0; 4], &[false, true, false, true])?, 0.5);
    let m = ood_metrics_in_out(&[0.1, 0.2], &[0.8, 0.9])?;
    assert_eq!(
        (m.auroc, m.average_precision, m.fpr_at_95_tpr),
        (1.0, 1.0, 0.0)
    );
    assert!(matches!(
        auroc(&[0.1, 0.2], &[true, true]),
        Err(Error::InvalidArgument { .. })
    ));
    match auroc(&[0.1, f64::NAN], &[true, false]).unwrap_err() {
        Error::BadData { row, .. } => assert_eq!(row, 2),
        e => panic!("unexpected {e}"),
    }
    assert!(fpr_at_tpr(&[0.1, 0.2], &[true, false], 1.5).is_err());
    Ok(())
}
