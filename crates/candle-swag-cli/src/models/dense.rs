//! A dense layer `y = act(x·Wᵀ + b)` (act = identity or ReLU) computed as one op with its own
//! backward pass.
//!
//! Why: the built-in MLP trains on batches of 32 rows, where candle's generic path
//! (`matmul(w.t())`, `broadcast_add`, `relu`) spends more time in per-op bookkeeping and in
//! strided gradient copies (the transposed weight gradient, the bias reduction over rows) than
//! in arithmetic. On CPU with f32 tensors the forward pass here is one `gemm` call writing into
//! a buffer pre-filled with the bias, with the ReLU applied in place; the backward pass gives
//! every gradient in its parameter's own contiguous layout:
//!
//! ```text
//! g  = grad ⊙ 1[y > 0]   (ReLU; the identity otherwise)
//! dW = gᵀ · x            [out, in]
//! db = 1ᵀ · g            [out]
//! dx = g · W             [n, in]   (only when x needs a gradient)
//! ```
//!
//! Other devices and dtypes use candle's ordinary ops, with identical results up to rounding.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

/// A dense layer over Vars `weight` `[out, in]` and `bias` `[out]` (PyTorch's `nn.Linear`
/// layout), optionally followed by a ReLU.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
    relu: bool,
}

impl Dense {
    /// A layer over existing tensors (normally the Vars of a `VarMap`).
    pub fn new(weight: Tensor, bias: Tensor, relu: bool) -> Self {
        Self { weight, bias, relu }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `act(x·Wᵀ + b)` for `x` of shape `[n, in]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let fused = x.device().is_cpu()
            && x.rank() == 2
            && [x.dtype(), self.weight.dtype(), self.bias.dtype()]
                .iter()
                .all(|d| *d == DType::F32);
        if fused {
            x.contiguous()?
                .apply_op3(&self.weight, &self.bias, DenseOp { relu: self.relu })
        } else {
            self.forward_unfused(x)
        }
    }

    /// The same computation with candle's ordinary ops (the reference for the fused path).
    pub fn forward_unfused(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// Work (multiply-adds) above which the forward `gemm` may use several threads.
const PARALLEL_MIN_WORK: usize = 1 << 22;

struct DenseOp {
    relu: bool,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("dense layer: {what} must be contiguous f32"),
    }
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (out, k_w) = wl.shape().dims2()?;
        let out_b = bl.shape().dims1()?;
        if k != k_w || out != out_b {
            candle_core::bail!(
                "dense layer: input [{n}, {k}], weight [{out}, {k_w}], bias [{out_b}] do not fit"
            );
        }
        let x = contiguous_f32(xs, xl, "input")?;
        let w = contiguous_f32(ws, wl, "weight")?;
        let b = contiguous_f32(bs, bl, "bias")?;
        let mut y = Vec::with_capacity(n * out);
        for _ in 0..n {
            y.extend_from_slice(b);
        }
        let parallelism = if n * k * out >= PARALLEL_MIN_WORK && rayon::current_num_threads() > 1 {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: `y` holds n·out elements laid out row-major (row stride `out`), `x` holds
        // n·k (row stride k), `w` holds out·k (row stride k) and is read as its transpose
        // (element (kk, j) at j·k + kk); all three were checked above, so every index gemm
        // touches is in bounds, and `y` does not alias the inputs.
        unsafe {
            gemm::gemm(
                n,
                out,
                k,
                y.as_mut_ptr(),
                1,
                out as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
        if self.relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The op only runs on CPU f32 tensors (see `Dense::forward`), so the ReLU mask is applied
        // in one host pass instead of three tensor ops.
        let g = if self.relu {
            let gv: Vec<f32> = grad.flatten_all()?.to_vec1()?;
            let rv: Vec<f32> = res.flatten_all()?.to_vec1()?;
            let masked: Vec<f32> = gv
                .iter()
                .zip(&rv)
                .map(|(&g, &r)| if r > 0.0 { g } else { 0.0 })
                .collect();
            Tensor::from_vec(masked, grad.shape(), grad.device())?
        } else {
            grad.clone()
        };
        let n = g.dim(0)?;
        let dw = g.t()?.matmul(x)?;
        let ones = Tensor::ones((1, n), g.dtype(), g.device())?;
        let db = ones.matmul(&g)?.squeeze(0)?;
        let dx = if x.track_op() {
            Some(g.matmul(w)?)
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn grads_of(layer: &Dense, x: &Tensor, fused: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
        let y = if fused {
            layer.forward(x).unwrap()
        } else {
            layer.forward_unfused(x).unwrap()
        };
        // A loss that weighs every output differently.
        let n = y.elem_count();
        let c = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(y.shape())
            .unwrap()
            .affine(0.01, -0.3)
            .unwrap();
        let loss = y.mul(&c).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = [x, &layer.weight, &layer.bias]
            .iter()
            .map(|t| flat(grads.get(t).unwrap()))
            .collect();
        (flat(&y), g)
    }

    #[test]
    fn fused_matches_candle_ops_values_and_gradients() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let vals = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * s).collect()
        };
        let x = Var::from_vec(vals(5 * 7, 0.1), (5, 7), &dev)?;
        let w = Var::from_vec(vals(4 * 7, 0.05), (4, 7), &dev)?;
        let b = Var::from_vec(vals(4, 0.2), 4, &dev)?;
        for relu in [false, true] {
            let layer = Dense::new(w.as_tensor().clone(), b.as_tensor().clone(), relu);
            let (y1, g1) = grads_of(&layer, x.as_tensor(), true);
            let (y2, g2) = grads_of(&layer, x.as_tensor(), false);
            for (a, b) in y1.iter().zip(&y2) {
                assert!((a - b).abs() < 1e-5, "relu={relu}: {a} vs {b}");
            }
            for (ga, gb) in g1.iter().zip(&g2) {
                assert_eq!(ga.len(), gb.len());
                for (a, b) in ga.iter().zip(gb) {
                    assert!((a - b).abs() < 1e-5, "relu={relu}: {a} vs {b}");
                }
            }
            if relu {
                assert!(y1.contains(&0.0) && y1.iter().any(|v| *v > 0.0));
            }
        }
        Ok(())
    }

    #[test]
    fn input_without_gradient_gets_none() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::ones((2, 3), DType::F32, &dev)?;
        let w = Var::ones((2, 3), DType::F32, &dev)?;
        let b = Var::zeros(2, DType::F32, &dev)?;
        let layer = Dense::new(w.as_tensor().clone(), b.as_tensor().clone(), false);
        let y = layer.forward(&x)?;
        assert_eq!(y.to_vec2::<f32>()?, vec![vec![3.0, 3.0]; 2]);
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        // d(sum y)/dW = column sums of x = 2 for every weight; d/db = n = 2.
        assert_eq!(
            grads.get(&w).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![2.0; 3]; 2]
        );
        assert_eq!(
            grads.get(&b).unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0; 2]
        );
        Ok(())
    }
}
