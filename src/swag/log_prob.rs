//! Log-density of a weight vector under the SWAG Gaussian, without a `d × d` matrix.
//!
//! With `Σ = A + U Uᵀ`, `A = scale · diag(var)` and
//! `U = sqrt(scale / divisor) · Dᵀ` (`d × rows`), the Woodbury identity and the matrix
//! determinant lemma give, for `x = θ − mean` and the `rows × rows` matrix
//! `M = I + Uᵀ A⁻¹ U`:
//!
//! - `xᵀ Σ⁻¹ x = xᵀ A⁻¹ x − bᵀ M⁻¹ b`, with `b = Uᵀ A⁻¹ x`;
//! - `ln |Σ| = Σᵢ ln aᵢ + ln |M|`.
//!
//! so `log p(θ) = −½ (d ln 2π + ln |Σ| + xᵀ Σ⁻¹ x)` costs `O(rows² · d)` operations and
//! `O(rows²)` memory beyond the state (the columns are streamed in chunks, so a disk posterior
//! is never read whole). `var` is [`SwagPosterior::variance`]`(var_clamp)`, the
//! very f32 numbers the sampler uses; the sums above run on the host in f64 (one copy of the
//! state) for accuracy. The options are those of sampling ([`SampleConfig`]), so `log_prob`
//! is the density of exactly what [`SwagPosterior::sample_into`] draws (`diag_only` included).

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::config::SampleConfig;
use super::posterior::SwagPosterior;
use super::store::CHUNK;
use crate::error::{Error, Result};

/// Partial sums over a block of coordinates.
#[derive(Clone)]
struct Partial {
    quad_diag: f64,
    log_det_a: f64,
    gram: Vec<f64>,
    b: Vec<f64>,
}

impl Partial {
    fn zero(r: usize) -> Self {
        Self {
            quad_diag: 0.0,
            log_det_a: 0.0,
            gram: vec![0.0; r * r],
            b: vec![0.0; r],
        }
    }

    fn merge(mut self, o: Partial) -> Self {
        self.quad_diag += o.quad_diag;
        self.log_det_a += o.log_det_a;
        self.gram.iter_mut().zip(o.gram).for_each(|(a, b)| *a += b);
        self.b.iter_mut().zip(o.b).for_each(|(a, b)| *a += b);
        self
    }
}

/// Cholesky factor (lower, row-major) of a symmetric positive-definite `n × n` matrix.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

impl SwagPosterior {
    /// `log p(θ)` (natural log) of a flat `[d]` weight vector under the SWAG Gaussian with the
    /// given options. `opts.scale()` must be > 0 (scale 0 is a point mass).
    pub fn log_prob(&self, theta: &Tensor, opts: &SampleConfig) -> Result<f64> {
        if opts.scale() <= 0.0 {
            return Err(Error::invalid(
                "scale",
                "log_prob needs scale > 0 (scale 0 is a point mass at the mean)",
            ));
        }
        self.require_snapshots()?;
        self.layout.check_flat(theta, "theta")?;
        let d = self.numel();
        let host = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?
                .to_device(&candle_core::Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let theta = host(theta.clone())?;
        let mean = host(self.mean()?)?;
        let var = host(self.variance(opts.var_clamp())?)?;
        let r = if opts.diag_only() { 0 } else { self.rows };
        let rows = self.physical_rows();
        let scales: Vec<f64> = self.deviation_scales().iter().map(|&s| s as f64).collect();
        let c2 = opts.scale() / self.divisor_value(opts.divisor());
        const BLOCK: usize = 4096;
        // The columns are read CHUNK coordinates at a time (whatever their store), widened to
        // f32 and multiplied by their scale in f64.
        let mut total = Partial::zero(r);
        for lo in (0..d).step_by(CHUNK) {
            let len = CHUNK.min(d - lo);
            let dev = if r == 0 {
                Vec::new()
            } else {
                host(
                    self.columns
                        .chunk(&rows, lo, len, self.config.deviation_dtype())?,
                )?
            };
            let part = (0..len.div_ceil(BLOCK))
                .into_par_iter()
                .map(|blk| {
                    let b_lo = blk * BLOCK;
                    let b_hi = (b_lo + BLOCK).min(len);
                    let mut p = Partial::zero(r);
                    for j in b_lo..b_hi {
                        let i = lo + j;
                        let m = mean[i] as f64;
                        let a = opts.scale() * var[i] as f64;
                        let x = theta[i] as f64 - m;
                        p.quad_diag += x * x / a;
                        p.log_det_a += a.ln();
                        for k in 0..r {
                            let dk = dev[k * len + j] as f64 * scales[k];
                            let uk = dk / a;
                            p.b[k] += uk * x;
                            for l in 0..=k {
                                p.gram[k * r + l] += uk * dev[l * len + j] as f64 * scales[l];
                            }
                        }
                    }
                    p
                })
                .collect::<Vec<_>>();
            // Merged in block order, not by rayon's reduce (whose grouping follows work
            // stealing): the same bits whatever the threads and the store.
            total = part.into_iter().fold(total, Partial::merge);
        }
        if !(total.quad_diag.is_finite() && total.log_det_a.is_finite()) {
            return Err(Error::invalid(
                "var_clamp",
                "the diagonal variance underflows to 0 somewhere; raise var_clamp for log_prob",
            ));
        }
        // M = I + c² Dᴬ Dᵀ (lower triangle accumulated), b scaled by c.
        let mut m = vec![0.0; r * r];
        for k in 0..r {
            for l in 0..=k {
                let v = c2 * total.gram[k * r + l] + if k == l { 1.0 } else { 0.0 };
                m[k * r + l] = v;
                m[l * r + k] = v;
            }
        }
        let (log_det_m, correction) = if r == 0 {
            (0.0, 0.0)
        } else {
            let l = cholesky(&m, r).ok_or_else(|| {
                Error::invalid("log_prob", "the low-rank system is not positive definite")
            })?;
            let log_det = 2.0 * (0..r).map(|i| l[i * r + i].ln()).sum::<f64>();
            // Solve L y = c·b; bᵀ M⁻¹ b = |y|².
            let c = c2.sqrt();
            let mut y = vec![0.0; r];
            for i in 0..r {
                let mut s = c * total.b[i];
                for k in 0..i {
                    s -= l[i * r + k] * y[k];
                }
                y[i] = s / l[i * r + i];
            }
            (log_det, y.iter().map(|v| v * v).sum::<f64>())
        };
        let quad = total.quad_diag - correction;
        let log_det = total.log_det_a + log_det_m;
        Ok(-0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + quad))
    }
}
