//! Multinomial L2 logistic regression in f64, fitted to convergence by Newton's method: the
//! linear baseline of `swag bench-classify`.
//!
//! # The model and its objective (scikit-learn's `LogisticRegression`)
//!
//! Class scores `z_k = w_kᵀx + b_k`, probabilities `softmax(z)`. The fit minimises
//!
//! `½ Σ_k ‖w_k‖² + C Σ_i −ln p_{i, y_i}`
//!
//! (the intercepts `b_k` are not penalised), the objective of scikit-learn's
//! `LogisticRegression(C=C)` with its default L2 penalty: its default `C = 1` is
//! [`LogisticParams::default`]. With two classes the model is the binary logistic
//! regression scikit-learn fits there: class 0's scores are fixed at 0 and only class 1 has a
//! weight vector (a softmax over two free classes, each penalised, would halve the effective
//! penalty). With three classes or more every class has its own weights (the multinomial fit);
//! the intercepts are then defined up to a common shift, which changes no probability, and the
//! fit returns them with mean 0.
//!
//! # The fit
//!
//! The objective is strictly convex in the weights, so Newton's method with a backtracking
//! (Armijo) line search converges to its minimum from 0: the gradient
//! `Σ_k w_k + C Σ_i (p_i − onehot(y_i)) ⊗ [x_i, 1]` and the Hessian
//! `I_w + C Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ [x_i, 1][x_i, 1]ᵀ` are computed exactly in f64 and
//! each Newton system is solved by a Cholesky factorisation. The intercepts' common shift (the
//! Hessian's null direction with three classes or more, along which the gradient is exactly 0)
//! gets a ridge of `1e-10 · (1 + C·n)` in the solve only. The fit stops when the largest
//! gradient entry is below `tolerance · (1 + C·n)`.

use candle_swag::error::{Error, Result};

/// The largest number of coefficients (free classes × (features + 1)) the Newton fit takes:
/// each step factorises a dense matrix of that side.
pub const MAX_COEFFICIENTS: usize = 4096;

/// The settings of [`LogisticRegression::fit`], unchecked (the crate's config shape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticParams {
    /// Inverse regularisation strength `C` (> 0): scikit-learn's `C`, 1 by default.
    pub c: f64,
    /// Newton steps at most (100 by default); the fit is an error if it has not converged.
    pub max_iterations: usize,
    /// Convergence: the largest gradient entry below `tolerance · (1 + C·n)` (1e-9 by
    /// default).
    pub tolerance: f64,
}

impl Default for LogisticParams {
    /// scikit-learn's default strength, `C = 1`; 100 Newton steps; tolerance 1e-9.
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iterations: 100,
            tolerance: 1e-9,
        }
    }
}

impl LogisticParams {
    /// The checked settings; the error names the field.
    pub fn check(&self) -> Result<LogisticConfig> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(Error::invalid(
                "logistic-c",
                format!("{} is not a positive number", self.c),
            ));
        }
        if self.max_iterations == 0 {
            return Err(Error::invalid("max_iterations", "must be at least 1"));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(Error::invalid(
                "tolerance",
                format!("{} is not a positive number", self.tolerance),
            ));
        }
        Ok(LogisticConfig(*self))
    }
}

/// Checked settings of [`LogisticRegression::fit`] (from [`LogisticParams::check`]); read them
/// through `Deref`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticConfig(LogisticParams);

impl std::ops::Deref for LogisticConfig {
    type Target = LogisticParams;
    fn deref(&self) -> &LogisticParams {
        &self.0
    }
}

/// A fitted logistic regression (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegression {
    n_features: usize,
    n_classes: usize,
    /// The classes with their own coefficients: 1 alone for two classes, else all.
    free: Vec<usize>,
    /// Per free class, its `n_features` weights then its intercept.
    coefficients: Vec<f64>,
    /// Newton steps taken.
    pub iterations: usize,
    /// The objective at the fitted coefficients.
    pub objective: f64,
}

impl LogisticRegression {
    /// Fits the model to row-major `features` (`[n, n_features]`) and class indices `labels`
    /// (`< n_classes`). Refuses fewer than 2 classes, no rows, lengths that disagree, a
    /// non-finite feature or a label out of range (naming the row), a class without rows (its
    /// intercept would run to −∞), more than [`MAX_COEFFICIENTS`] coefficients, and a fit that
    /// has not converged in `max_iterations` steps.
    pub fn fit(
        features: &[f64],
        n_features: usize,
        labels: &[usize],
        n_classes: usize,
        config: &LogisticConfig,
    ) -> Result<Self> {
        let n = labels.len();
        if n_classes < 2 {
            return Err(Error::invalid(
                "classes",
                format!("a classifier needs at least 2 classes, got {n_classes}"),
            ));
        }
        if n == 0 {
            return Err(Error::invalid("rows", "no training rows"));
        }
        check_features(features, n_features, n)?;
        let mut counts = vec![0usize; n_classes];
        for (i, &y) in labels.iter().enumerate() {
            if y >= n_classes {
                return Err(Error::invalid(
                    "labels",
                    format!("row {i}: class {y} is not below the {n_classes} classes"),
                ));
            }
            counts[y] += 1;
        }
        if let Some(k) = counts.iter().position(|&c| c == 0) {
            return Err(Error::invalid(
                "labels",
                format!("class {k} has no training rows"),
            ));
        }
        let free: Vec<usize> = if n_classes == 2 {
            vec![1]
        } else {
            (0..n_classes).collect()
        };
        let width = n_features + 1;
        let p = free.len() * width;
        if p > MAX_COEFFICIENTS {
            return Err(Error::invalid(
                "features",
                format!(
                    "{} free classes × ({n_features} features + 1) = {p} coefficients, more than \
                     the {MAX_COEFFICIENTS} the Newton fit takes",
                    free.len()
                ),
            ));
        }
        let mut model = Self {
            n_features,
            n_classes,
            free,
            coefficients: vec![0.0; p],
            iterations: 0,
            objective: 0.0,
        };
        let c = config.c;
        let scale = 1.0 + c * n as f64;
        let (mut f, mut g, mut h) = model.derivatives(features, labels, c, true);
        loop {
            let g_max = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            if g_max <= config.tolerance * scale {
                break;
            }
            if model.iterations == config.max_iterations {
                return Err(Error::invalid(
                    "logistic regression",
                    format!(
                        "not converged in {} Newton steps (largest gradient entry {g_max:.3e})",
                        config.max_iterations
                    ),
                ));
            }
            model.iterations += 1;
            for a in 0..model.free.len() {
                let j = a * width + n_features;
                h[j * p + j] += 1e-10 * scale;
            }
            let step = cholesky_solve(&mut h, &g, p)?;
            let slope: f64 = -g.iter().zip(&step).map(|(a, b)| a * b).sum::<f64>();
            let start = model.coefficients.clone();
            let mut t = 1.0;
            loop {
                for ((w, w0), s) in model.coefficients.iter_mut().zip(&start).zip(&step) {
                    *w = w0 - t * s;
                }
                let f_new = model.derivatives(features, labels, c, false).0;
                if f_new <= f + 1e-4 * t * slope || (f - f_new).abs() <= 1e-15 * f.abs() {
                    break;
                }
                t *= 0.5;
                if t < 1e-12 {
                    return Err(Error::invalid(
                        "logistic regression",
                        format!(
                            "the line search found no decrease at Newton step {} (largest \
                             gradient entry {g_max:.3e})",
                            model.iterations
                        ),
                    ));
                }
            }
            (f, g, h) = model.derivatives(features, labels, c, true);
        }
        if model.free.len() == n_classes {
            // The intercepts' common shift changes nothing: return them with mean 0.
            let mean = (0..n_classes)
                .map(|a| model.coefficients[a * width + n_features])
                .sum::<f64>()
                / n_classes as f64;
            for a in 0..n_classes {
                model.coefficients[a * width + n_features] -= mean;
            }
        }
        model.objective = f;
        Ok(model)
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Class `k`'s weights and intercept (zeros for class 0 of a two-class model).
    pub fn class_coefficients(&self, k: usize) -> Option<(Vec<f64>, f64)> {
        if k >= self.n_classes {
            return None;
        }
        let width = self.n_features + 1;
        Some(match self.free.iter().position(|&f| f == k) {
            Some(a) => {
                let row = &self.coefficients[a * width..(a + 1) * width];
                (row[..self.n_features].to_vec(), row[self.n_features])
            }
            None => (vec![0.0; self.n_features], 0.0),
        })
    }

    /// Class probabilities of row-major `features` (`[n, n_features]`), row-major `[n, C]`.
    /// Refuses a length that is not a multiple of the feature count and a non-finite feature.
    pub fn predict_proba(&self, features: &[f64]) -> Result<Vec<f64>> {
        let d = self.n_features;
        if d == 0 || !features.len().is_multiple_of(d) {
            return Err(Error::invalid(
                "features",
                format!("{} values are not rows of {d} features", features.len()),
            ));
        }
        let n = features.len() / d;
        check_features(features, d, n)?;
        let mut out = vec![0.0; n * self.n_classes];
        for (x, row) in features
            .chunks_exact(d)
            .zip(out.chunks_exact_mut(self.n_classes))
        {
            self.probabilities(x, row);
        }
        Ok(out)
    }

    /// The probabilities of one row into `out` (`n_classes` entries).
    fn probabilities(&self, x: &[f64], out: &mut [f64]) {
        let width = self.n_features + 1;
        out.fill(0.0);
        for (a, &k) in self.free.iter().enumerate() {
            let w = &self.coefficients[a * width..(a + 1) * width];
            out[k] = w[..self.n_features]
                .iter()
                .zip(x)
                .map(|(w, x)| w * x)
                .sum::<f64>()
                + w[self.n_features];
        }
        let max = out.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z));
        let mut sum = 0.0;
        for z in out.iter_mut() {
            *z = (*z - max).exp();
            sum += *z;
        }
        for z in out.iter_mut() {
            *z /= sum;
        }
    }

    /// The objective, and with `second` its gradient and (row-major `[P, P]`) Hessian.
    fn derivatives(
        &self,
        features: &[f64],
        labels: &[usize],
        c: f64,
        second: bool,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let d = self.n_features;
        let width = d + 1;
        let nf = self.free.len();
        let p = nf * width;
        let mut f = 0.0;
        let mut g = vec![0.0; if second { p } else { 0 }];
        let mut h = vec![0.0; if second { p * p } else { 0 }];
        for a in 0..nf {
            for j in 0..d {
                let w = self.coefficients[a * width + j];
                f += 0.5 * w * w;
                if second {
                    g[a * width + j] += w;
                    h[(a * width + j) * p + a * width + j] += 1.0;
                }
            }
        }
        let mut probs = vec![0.0; self.n_classes];
        let mut xt = vec![1.0; width];
        for (x, &y) in features.chunks_exact(d.max(1)).zip(labels) {
            self.probabilities(x, &mut probs);
            f -= c * probs[y].max(f64::MIN_POSITIVE).ln();
            if !second {
                continue;
            }
            xt[..d].copy_from_slice(x);
            for (a, &ka) in self.free.iter().enumerate() {
                let r = probs[ka] - if ka == y { 1.0 } else { 0.0 };
                for j in 0..width {
                    g[a * width + j] += c * r * xt[j];
                }
                for (b, &kb) in self.free.iter().enumerate() {
                    let coef = c * (if ka == kb { probs[ka] } else { 0.0 } - probs[ka] * probs[kb]);
                    if coef == 0.0 {
                        continue;
                    }
                    for j in 0..width {
                        let row = (a * width + j) * p + b * width;
                        let cx = coef * xt[j];
                        for (hv, xl) in h[row..row + width].iter_mut().zip(&xt) {
                            *hv += cx * xl;
                        }
                    }
                }
            }
        }
        (f, g, h)
    }
}

/// Refuses a feature matrix of the wrong length or with a non-finite value (naming its row and
/// column).
fn check_features(features: &[f64], n_features: usize, n: usize) -> Result<()> {
    if n_features == 0 {
        return Err(Error::invalid("features", "no feature columns"));
    }
    if features.len() != n * n_features {
        return Err(Error::invalid(
            "features",
            format!(
                "{} values for {n} rows of {n_features} features",
                features.len()
            ),
        ));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "features",
            format!(
                "row {}, feature {}: {} is not finite",
                i / n_features,
                i % n_features,
                features[i]
            ),
        ));
    }
    Ok(())
}

/// Solves `A s = b` for a symmetric positive-definite row-major `A` (`[p, p]`, overwritten by
/// its Cholesky factor).
fn cholesky_solve(a: &mut [f64], b: &[f64], p: usize) -> Result<Vec<f64>> {
    for j in 0..p {
        let mut diag = a[j * p + j];
        for k in 0..j {
            diag -= a[j * p + k] * a[j * p + k];
        }
        if !(diag > 0.0 && diag.is_finite()) {
            return Err(Error::invalid(
                "logistic regression",
                format!("the Newton system is not positive definite (pivot {j}: {diag:.3e})"),
            ));
        }
        let l_jj = diag.sqrt();
        a[j * p + j] = l_jj;
        for i in j + 1..p {
            let mut v = a[i * p + j];
            for k in 0..j {
                v -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = v / l_jj;
        }
    }
    let mut s = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            s[i] -= a[i * p + k] * s[k];
        }
        s[i] /= a[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            s[i] -= a[k * p + i] * s[k];
        }
        s[i] /= a[i * p + i];
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(x: &[f64], d: usize, y: &[usize], k: usize, c: f64) -> Result<LogisticRegression> {
        let config = LogisticParams {
            c,
            ..Default::default()
        }
        .check()?;
        LogisticRegression::fit(x, d, y, k, &config)
    }

    /// With a feature that is 0 on every row, the weights get no data gradient and stay 0,
    /// and the unpenalised intercept makes the probabilities the class frequencies.
    #[test]
    fn constant_feature_gives_the_class_frequencies() -> Result<()> {
        let m = fit(&[0.0; 4], 1, &[1, 1, 0, 1], 2, 1.0)?;
        let p = m.predict_proba(&[0.0])?;
        assert!((p[1] - 0.75).abs() < 1e-10, "{p:?}");
        let m = fit(&[0.0; 6], 1, &[0, 1, 1, 2, 2, 2], 3, 1.0)?;
        let p = m.predict_proba(&[0.0])?;
        for (got, want) in p.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((got - want).abs() < 1e-10, "{p:?}");
        }
        Ok(())
    }

    /// Two rows, x = −1 (class 0) and x = 1 (class 1), C = 1: by symmetry b = 0 and the
    /// objective is ½w² + 2 ln(1 + e^{−w}), minimal where w = 2 / (1 + e^w); that root found
    /// by bisection, independently of the Newton fit.
    #[test]
    fn two_separable_points_match_the_scalar_optimum() -> Result<()> {
        let (mut lo, mut hi) = (0.0f64, 2.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid - 2.0 / (1.0 + mid.exp()) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let m = fit(&[-1.0, 1.0], 1, &[0, 1], 2, 1.0)?;
        let (w, b) = m.class_coefficients(1).ok_or(Error::invalid("k", "none"))?;
        assert!((w[0] - lo).abs() < 1e-9, "w {} against {lo}", w[0]);
        assert!(b.abs() < 1e-9, "b {b}");
        assert_eq!(m.class_coefficients(0), Some((vec![0.0], 0.0)));
        Ok(())
    }

    /// Plain gradient descent in f64 on the same objective, for as long as it takes: an
    /// obvious, slow, independent implementation (all classes free, the binary case with
    /// class 0 fixed).
    fn gradient_descent(x: &[f64], d: usize, y: &[usize], k: usize, c: f64) -> Vec<f64> {
        let free: Vec<usize> = if k == 2 { vec![1] } else { (0..k).collect() };
        let w = d + 1;
        let mut theta = vec![0.0; free.len() * w];
        let lr = 1.0 / (1.0 + c * y.len() as f64 * (d + 1) as f64);
        for _ in 0..200_000 {
            let mut grad = vec![0.0; theta.len()];
            for a in 0..free.len() {
                for j in 0..d {
                    grad[a * w + j] += theta[a * w + j];
                }
            }
            for (row, &label) in x.chunks_exact(d).zip(y) {
                let mut z = vec![0.0; k];
                for (a, &cls) in free.iter().enumerate() {
                    z[cls] =
                        (0..d).map(|j| theta[a * w + j] * row[j]).sum::<f64>() + theta[a * w + d];
                }
                let s: f64 = z.iter().map(|v| v.exp()).sum();
                for (a, &cls) in free.iter().enumerate() {
                    let r = z[cls].exp() / s - if cls == label { 1.0 } else { 0.0 };
                    for j in 0..d {
                        grad[a * w + j] += c * r * row[j];
                    }
                    grad[a * w + d] += c * r;
                }
            }
            for (t, g) in theta.iter_mut().zip(&grad) {
                *t -= lr * g;
            }
        }
        theta
    }

    /// Overlapping classes in two dimensions (not separable), three classes and two.
    #[test]
    fn newton_matches_slow_gradient_descent() -> Result<()> {
        let x = [
            0.1, 0.9, -0.8, 0.4, 1.2, -0.3, 0.5, 0.5, -1.1, -0.7, 0.9, 1.1, -0.2, -0.9, 0.3, -0.4,
            1.4, 0.2, -0.6, 1.3,
        ];
        for (y, k, c) in [
            (vec![0, 1, 2, 0, 1, 2, 1, 0, 2, 1], 3, 0.7),
            (vec![0, 1, 1, 0, 0, 1, 1, 0, 1, 0], 2, 2.0),
        ] {
            let m = fit(&x, 2, &y, k, c)?;
            let theta = gradient_descent(&x, 2, &y, k, c);
            let p = m.predict_proba(&x)?;
            // The slow fit's probabilities (intercept shift does not matter).
            let free: Vec<usize> = if k == 2 { vec![1] } else { (0..k).collect() };
            for (i, row) in x.chunks_exact(2).enumerate() {
                let mut z = vec![0.0; k];
                for (a, &cls) in free.iter().enumerate() {
                    z[cls] = theta[a * 3] * row[0] + theta[a * 3 + 1] * row[1] + theta[a * 3 + 2];
                }
                let s: f64 = z.iter().map(|v| v.exp()).sum();
                for cls in 0..k {
                    let want = z[cls].exp() / s;
                    assert!(
                        (p[i * k + cls] - want).abs() < 1e-7,
                        "k {k}, row {i}, class {cls}: {} against {want}",
                        p[i * k + cls]
                    );
                }
            }
            assert!(m.iterations < 30, "{} Newton steps", m.iterations);
        }
        Ok(())
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let ok = LogisticParams::default().check().unwrap();
        let err = |r: Result<LogisticRegression>| r.unwrap_err().to_string();
        assert!(err(LogisticRegression::fit(&[0.0, 1.0], 1, &[0, 2], 2, &ok)).contains("row 1"));
        assert!(err(LogisticRegression::fit(&[0.0, 1.0], 1, &[0, 0], 2, &ok)).contains("class 1"));
        assert!(err(LogisticRegression::fit(
            &[0.0, f64::NAN],
            1,
            &[0, 1],
            2,
            &ok
        ))
        .contains("row 1, feature 0"));
        assert!(err(LogisticRegression::fit(&[0.0], 1, &[0, 1], 2, &ok)).contains("1 values"));
        assert!(
            err(LogisticRegression::fit(&[0.0, 1.0], 1, &[0, 0], 1, &ok)).contains("2 classes")
        );
        assert!(err(LogisticRegression::fit(&[], 1, &[], 2, &ok)).contains("no training rows"));
        let wide = vec![0.0; 10_000];
        assert!(err(LogisticRegression::fit(&wide, 5000, &[0, 1], 2, &ok)).contains("coefficients"));
        for c in [0.0, -1.0, f64::NAN] {
            let e = LogisticParams {
                c,
                ..Default::default()
            }
            .check()
            .unwrap_err()
            .to_string();
            assert!(e.contains("logistic-c"), "{e}");
        }
        let tight = LogisticParams {
            max_iterations: 1,
            ..Default::default()
        }
        .check()
        .unwrap();
        let x = [0.1, 0.9, -0.8, 0.4, 1.2, -0.3];
        assert!(err(LogisticRegression::fit(
            &x,
            1,
            &[0, 1, 1, 0, 1, 0],
            2,
            &tight
        ))
        .contains("not converged"));
        let m = LogisticRegression::fit(&[0.0, 1.0], 1, &[0, 1], 2, &ok).unwrap();
        assert!(m.predict_proba(&[f64::INFINITY]).is_err());
    }
}
