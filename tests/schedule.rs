//! Learning-rate schedules against hand-computed values and against a step-by-step
//! re-implementation of torch's SWALR recursion.

use anyhow::Result;
mod common;
use common::invalid_name;

use candle_nn::Optimizer;
use candle_swag::schedule::{
    apply_lr, AnnealStrategy, ConstantLr, LinearWarmup, LrSchedule, SwaLr, SwagPaperLr,
};

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn swag_paper_schedule_matches_hand_values() -> Result<()> {
    // lr_init 0.1, swa_lr 0.01, swa_start 100: r = 0.1.
    let s = SwagPaperLr::new(0.1, 0.01, 100.0)?;
    let cases = [
        (0.0, 0.1),
        (-3.0, 0.1),     // negative epochs read as 0
        (f64::NAN, 0.1), // NaN reads as 0
        (50.0, 0.1),     // t = 0.5 is still the flat part
        (55.0, 0.08875), // 1 - 0.9 * 0.05 / 0.4 = 0.8875
        (60.0, 0.0775),  // 1 - 0.9 * 0.1 / 0.4 = 0.775
        (70.0, 0.055),   // 1 - 0.9 * 0.5 = 0.55
        (90.0, 0.01),    // t = 0.9: factor = r exactly on the linear branch
        (91.0, 0.01),
        (100.0, 0.01),
        (250.0, 0.01),
    ];
    for (epoch, want) in cases {
        assert_close(s.lr(epoch), want, &format!("epoch {epoch}"));
    }
    Ok(())
}

#[test]
fn swag_paper_sgd_baseline_uses_epochs_and_ratio_one_hundredth() -> Result<()> {
    let s = SwagPaperLr::sgd_baseline(0.05, 10)?;
    assert_close(s.lr(5.0), 0.05, "epoch 5");
    // t = 0.7: factor = 1 - 0.99 * 0.2 / 0.4 = 0.505
    assert_close(s.lr(7.0), 0.02525, "epoch 7");
    assert_close(s.lr(9.0), 0.0005, "epoch 9");
    Ok(())
}

#[test]
fn swa_lr_cosine_and_linear_match_hand_values() -> Result<()> {
    let cos = SwaLr::new(0.1, 0.02, 4, AnnealStrategy::Cos)?;
    let half_sqrt2 = std::f64::consts::FRAC_1_SQRT_2;
    let cases = [
        (0.0, 0.1),
        (1.0, 0.1 - 0.08 * (1.0 - half_sqrt2) / 2.0),
        (2.0, 0.06),
        (3.0, 0.1 - 0.08 * (1.0 + half_sqrt2) / 2.0),
        (4.0, 0.02),
        (10.0, 0.02),
    ];
    for (epoch, want) in cases {
        assert_close(cos.lr(epoch), want, &format!("cos epoch {epoch}"));
    }
    assert_close(cos.lr(1.0), 0.088284271247461, "cos epoch 1 decimal");

    let lin = SwaLr::new(0.1, 0.02, 4, AnnealStrategy::Linear)?;
    for (epoch, want) in [
        (0.0, 0.1),
        (1.0, 0.08),
        (2.0, 0.06),
        (3.0, 0.04),
        (4.0, 0.02),
        (9.0, 0.02),
    ] {
        assert_close(lin.lr(epoch), want, &format!("linear epoch {epoch}"));
    }
    // Fractional epoch: a quarter of the way through the first annealing epoch.
    assert_close(lin.lr(0.5), 0.09, "linear epoch 0.5");
    Ok(())
}

#[test]
fn swa_lr_with_zero_anneal_epochs_jumps_to_swa_lr() -> Result<()> {
    let s = SwaLr::new(0.1, 0.02, 0, AnnealStrategy::Cos)?;
    for epoch in [0.0, 0.5, 1.0, 7.0] {
        assert_eq!(s.lr(epoch), 0.02, "epoch {epoch}");
    }
    let delayed = s.starting_at(3.0)?;
    assert_eq!(delayed.lr(2.0), 0.1);
    assert_eq!(delayed.lr(3.0), 0.02);
    Ok(())
}

#[test]
fn swa_lr_starting_at_keeps_initial_rate_before_start() -> Result<()> {
    let s = SwaLr::new(0.1, 0.02, 4, AnnealStrategy::Cos)?.starting_at(5.0)?;
    assert_close(s.lr(0.0), 0.1, "epoch 0");
    assert_close(s.lr(4.0), 0.1, "epoch 4");
    assert_close(s.lr(5.0), 0.1, "epoch 5 (k = 0)");
    assert_close(s.lr(7.0), 0.06, "epoch 7 (k = 2)");
    assert_close(s.lr(9.0), 0.02, "epoch 9 (k = 4)");
    Ok(())
}

/// torch's SWALR, step by step: the optimizer rate is mutated each step and the starting rate
/// is recovered from it, as `SWALR.get_lr` does.
fn torch_swalr_sequence(
    lr0: f64,
    swa_lr: f64,
    anneal_epochs: usize,
    cos: bool,
    steps: usize,
) -> Vec<f64> {
    let f = |t: f64| {
        if cos {
            (1.0 - (std::f64::consts::PI * t).cos()) / 2.0
        } else {
            t
        }
    };
    let get_initial = |lr: f64, alpha: f64| {
        if alpha == 1.0 {
            swa_lr
        } else {
            (lr - alpha * swa_lr) / (1.0 - alpha)
        }
    };
    let mut group_lr = lr0;
    let mut out = Vec::new();
    // step_count - 1 = 0 at construction (the constructor's initial step), then 1, 2, ...
    for step_index in 0..steps {
        let mut step = step_index as f64;
        if anneal_epochs == 0 {
            step = step.max(1.0);
        }
        let a = anneal_epochs.max(1) as f64;
        let prev_t = ((step - 1.0) / a).clamp(0.0, 1.0);
        let prev_lr = get_initial(group_lr, f(prev_t));
        let t = (step / a).clamp(0.0, 1.0);
        let alpha = f(t);
        group_lr = swa_lr * alpha + prev_lr * (1.0 - alpha);
        out.push(group_lr);
    }
    out
}

#[test]
fn swa_lr_matches_torch_recursion() -> Result<()> {
    for anneal_epochs in [0usize, 1, 3, 5] {
        for (cos, strategy) in [(true, AnnealStrategy::Cos), (false, AnnealStrategy::Linear)] {
            let torch = torch_swalr_sequence(0.2, 0.05, anneal_epochs, cos, 10);
            let ours = SwaLr::new(0.2, 0.05, anneal_epochs, strategy)?;
            for (k, want) in torch.iter().enumerate() {
                let got = ours.lr(k as f64);
                assert!(
                    (got - want).abs() < 1e-12,
                    "A={anneal_epochs} cos={cos} k={k}: ours {got}, torch {want}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn constant_and_apply_lr_set_the_optimizer_rate() -> Result<()> {
    let c = ConstantLr::new(0.3)?;
    assert_eq!(c.lr(0.0), 0.3);
    assert_eq!(c.lr(1e6), 0.3);

    let mut sgd = candle_nn::SGD::new(vec![], 1.0)?;
    let s = SwagPaperLr::new(0.1, 0.01, 100.0)?;
    let lr = apply_lr(&mut sgd, &s, 70.0);
    assert_close(lr, 0.055, "returned rate");
    assert_close(sgd.learning_rate(), 0.055, "optimizer rate");

    // Works through a trait object too.
    let boxed: Box<dyn LrSchedule> = Box::new(c);
    apply_lr(&mut sgd, boxed.as_ref(), 3.0);
    assert_eq!(sgd.learning_rate(), 0.3);
    Ok(())
}

#[test]
fn linear_warmup_scales_the_inner_schedule_from_zero() -> Result<()> {
    // Inner: cosine from 0.1 to 0.02 over 4 epochs. Warm-up 0.5 epochs.
    let inner = SwaLr::new(0.1, 0.02, 4, AnnealStrategy::Cos)?;
    let w = LinearWarmup::new(inner, 0.5)?;
    assert_eq!(w.lr(0.0), 0.0, "no step at epoch 0");
    // epoch 0.25: half-way through the warm-up; inner = 0.1 - 0.08 (1 - cos(pi/16)) / 2.
    let inner_at = 0.1 - 0.08 * (1.0 - (std::f64::consts::PI / 16.0).cos()) / 2.0;
    assert_close(w.lr(0.25), 0.5 * inner_at, "mid warm-up");
    // From the end of the warm-up on: the inner schedule itself.
    for e in [0.5, 1.0, 2.0, 3.5, 10.0] {
        assert_eq!(w.lr(e), inner.lr(e), "after the warm-up, epoch {e}");
    }
    // Negative and NaN epochs read as 0.
    assert_eq!(w.lr(-3.0), 0.0);
    assert_eq!(w.lr(f64::NAN), 0.0);
    // A zero-length warm-up is the inner schedule everywhere.
    let none = LinearWarmup::new(ConstantLr::new(0.3)?, 0.0)?;
    assert_eq!(none.lr(0.0), 0.3);
    Ok(())
}

#[test]
fn invalid_parameters_are_named() -> Result<()> {
    assert_eq!(invalid_name(ConstantLr::new(-0.1)), "lr");
    assert_eq!(invalid_name(ConstantLr::new(f64::INFINITY)), "lr");
    assert_eq!(
        invalid_name(SwaLr::new(-1.0, 0.1, 3, AnnealStrategy::Cos)),
        "initial_lr"
    );
    assert_eq!(
        invalid_name(SwaLr::new(0.1, f64::NAN, 3, AnnealStrategy::Cos)),
        "swa_lr"
    );
    let s = SwaLr::new(0.1, 0.01, 3, AnnealStrategy::Linear)?;
    assert_eq!(invalid_name(s.starting_at(-2.0)), "start_epoch");
    assert_eq!(invalid_name(SwagPaperLr::new(0.0, 0.01, 10.0)), "lr_init");
    let c = ConstantLr::new(0.1)?;
    assert_eq!(invalid_name(LinearWarmup::new(c, -1.0)), "warmup_epochs");
    assert_eq!(
        invalid_name(LinearWarmup::new(c, f64::NAN)),
        "warmup_epochs"
    );
    assert_eq!(invalid_name(SwagPaperLr::new(-0.1, 0.01, 10.0)), "lr_init");
    assert_eq!(invalid_name(SwagPaperLr::new(0.1, -0.01, 10.0)), "swa_lr");
    assert_eq!(invalid_name(SwagPaperLr::new(0.1, 0.01, 0.0)), "swa_start");
    assert_eq!(
        invalid_name(SwagPaperLr::new(0.1, 0.01, f64::NAN)),
        "swa_start"
    );
    assert_eq!(invalid_name(SwagPaperLr::sgd_baseline(0.1, 0)), "epochs");
    Ok(())
}
