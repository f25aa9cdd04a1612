//! The fused ops of `candle_swag_transformers::ops`, forward and backward, against
//! (1) references composed here of candle's differentiable tensor ops (slow, obvious), and
//! (2) central finite differences of the loss `L = Σ y·w` computed in f64,
//! for f64, f32, bf16 and f16 inputs, odd and large row widths, contiguous, transposed and
//! narrowed inputs (strided parameters too), and rows of constant value (variance 0).
//!
//! Gradients are compared in the storage of each input (a `Var`, viewed through a transpose or
//! a narrow before the op), so a wrong stride in a kernel shows as a wrong gradient.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_swag_transformers::ops;

// ---------------------------------------------------------------------------------------------
// References, composed of candle ops.

fn upcast(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// The row width as a tensor: dividing by it is exact where `t / n` (a multiplication by a
/// rounded `1/n`) is not, which a row of variance 0 amplifies by `1/sqrt(eps)`.
fn width_of(xw: &Tensor) -> Result<Tensor> {
    Tensor::new(xw.dim(D::Minus1)? as f64, xw.device())?.to_dtype(xw.dtype())
}

fn ref_layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let xw = upcast(x)?;
    let n = width_of(&xw)?;
    let mean = xw.sum_keepdim(D::Minus1)?.broadcast_div(&n)?;
    let d = xw.broadcast_sub(&mean)?;
    let var = (&d * &d)?.sum_keepdim(D::Minus1)?.broadcast_div(&n)?;
    let xhat = d.broadcast_div(&(var + eps)?.sqrt()?)?;
    xhat.broadcast_mul(&upcast(g)?)?
        .broadcast_add(&upcast(b)?)?
        .to_dtype(x.dtype())
}

fn ref_rms_norm(x: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    let xw = upcast(x)?;
    let ms = (&xw * &xw)?
        .sum_keepdim(D::Minus1)?
        .broadcast_div(&width_of(&xw)?)?;
    xw.broadcast_div(&(ms + eps)?.sqrt()?)?
        .broadcast_mul(&upcast(g)?)?
        .to_dtype(x.dtype())
}

fn ref_softmax(x: &Tensor) -> Result<Tensor> {
    let xw = upcast(x)?;
    let m = xw.max_keepdim(D::Minus1)?.detach();
    let e = xw.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
        .to_dtype(x.dtype())
}

fn ref_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let xw = upcast(x)?;
    let (c, s) = (upcast(cos)?.narrow(0, 0, t)?, upcast(sin)?.narrow(0, 0, t)?);
    let x1 = xw.narrow(D::Minus1, 0, d / 2)?;
    let x2 = xw.narrow(D::Minus1, d / 2, d / 2)?;
    let y1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
    let y2 = (x1.broadcast_mul(&s)? + x2.broadcast_mul(&c)?)?;
    Tensor::cat(&[y1, y2], D::Minus1)?.to_dtype(x.dtype())
}

// ---------------------------------------------------------------------------------------------
// Deterministic data.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64, offset: f64) -> Vec<f64> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// A view of a tensor (identity, transpose, narrow).
type ViewFn = Box<dyn Fn(&Tensor) -> Result<Tensor>>;

/// An elementwise activation.
type Activation = fn(&Tensor) -> Result<Tensor>;

/// An input of the op: the values of a `Var` of shape `shape` (row-major) and the view of it the
/// op receives.
struct Input {
    shape: Vec<usize>,
    data: Vec<f64>,
    view: ViewFn,
}

impl Input {
    fn plain(shape: &[usize], data: Vec<f64>) -> Self {
        Self {
            shape: shape.to_vec(),
            data,
            view: Box::new(|t| Ok(t.clone())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Contiguous,
    /// Stored `[width, rows]`, seen through `.t()`.
    Transposed,
    /// Stored `[rows, width + 3]`, seen through `.narrow(1, 2, width)`.
    Narrowed,
}

/// `x` of shape `[rows, width]` (row-major `view_data`) stored in `layout`.
fn matrix(view_data: &[f64], rows: usize, width: usize, layout: Layout, rng: &mut Rng) -> Input {
    match layout {
        Layout::Contiguous => Input::plain(&[rows, width], view_data.to_vec()),
        Layout::Transposed => {
            let mut data = vec![0.0; rows * width];
            for r in 0..rows {
                for j in 0..width {
                    data[j * rows + r] = view_data[r * width + j];
                }
            }
            Input {
                shape: vec![width, rows],
                data,
                view: Box::new(|t| t.t()),
            }
        }
        Layout::Narrowed => {
            let mut data = rng.vec(rows * (width + 3), 1.0, 0.0);
            for r in 0..rows {
                for j in 0..width {
                    data[r * (width + 3) + 2 + j] = view_data[r * width + j];
                }
            }
            Input {
                shape: vec![rows, width + 3],
                data,
                view: Box::new(move |t| t.narrow(1, 2, width)),
            }
        }
    }
}

/// A per-column parameter of `width` values: plain, or (for the narrowed layout) every other
/// value of a `[width, 2]` storage.
fn column(values: Vec<f64>, strided: bool) -> Input {
    let width = values.len();
    if !strided {
        return Input::plain(&[width], values);
    }
    let data = values.iter().flat_map(|&v| [v, -7.0]).collect();
    Input {
        shape: vec![width, 2],
        data,
        view: Box::new(|t| t.narrow(1, 0, 1)?.squeeze(1)),
    }
}

// ---------------------------------------------------------------------------------------------
// The check.

type OpFn<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

#[derive(Clone, Copy)]
struct Tol {
    /// Fused in `dtype` against fused in f64, relative to the largest value of the latter.
    truth: f64,
    /// Fused against composed (plus composed's own error), relative to the largest value.
    composed: f64,
    /// Analytic gradient against finite differences.
    fd: f64,
}

fn tol(dtype: DType) -> Tol {
    let (truth, composed, fd) = match dtype {
        DType::F64 => (1e-10, 1e-10, 1e-6),
        DType::F32 => (5e-6, 5e-6, 1e-5),
        DType::F16 => (2e-3, 2e-3, 4e-3),
        _ => (1e-2, 1e-2, 2e-2),
    };
    Tol {
        truth,
        composed,
        fd,
    }
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()
}

/// Output and gradients (in each input's storage) of `op` on `inputs` in `dtype`, for the loss
/// `Σ y·w`.
fn run(
    op: OpFn,
    inputs: &[Input],
    data: &[Vec<f64>],
    dtype: DType,
    w: &[f64],
) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let dev = Device::Cpu;
    let vars = inputs
        .iter()
        .zip(data)
        .map(|(i, d)| {
            let t = Tensor::from_vec(d.clone(), i.shape.as_slice(), &dev)?.to_dtype(dtype)?;
            Var::from_tensor(&t)
        })
        .collect::<Result<Vec<_>>>()?;
    let views = inputs
        .iter()
        .zip(&vars)
        .map(|(i, v)| (i.view)(v.as_tensor()))
        .collect::<Result<Vec<_>>>()?;
    let y = op(&views)?;
    assert_eq!(y.dtype(), dtype, "output dtype");
    let wt = Tensor::from_vec(w.to_vec(), y.shape(), &dev)?;
    let loss = (y.to_dtype(DType::F64)? * wt)?.sum_all()?;
    let grads = loss.backward()?;
    let gs = vars
        .iter()
        .enumerate()
        .map(|(k, v)| match grads.get(v.as_tensor()) {
            Some(g) => {
                assert_eq!(
                    g.dims(),
                    inputs[k].shape.as_slice(),
                    "gradient shape of input {k}"
                );
                assert_eq!(g.dtype(), dtype, "gradient dtype of input {k}");
                to_f64(g)
            }
            None => panic!("no gradient reached input {k}"),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((to_f64(&y)?, gs))
}

/// `Σ op(inputs)·w` in f64 on the given storage values.
fn loss64(op: OpFn, inputs: &[Input], data: &[Vec<f64>], w: &[f64]) -> Result<f64> {
    let dev = Device::Cpu;
    let views = inputs
        .iter()
        .zip(data)
        .map(|(i, d)| (i.view)(&Tensor::from_vec(d.clone(), i.shape.as_slice(), &dev)?))
        .collect::<Result<Vec<_>>>()?;
    let y = op(&views)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(y.iter().zip(w).map(|(a, b)| a * b).sum())
}

/// Largest `|got − want|` relative to the largest `|want|` (at least 1e-3).
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / scale))
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(a.is_finite(), "{what}: value {i} is {a}");
        let e = (a - b).abs() / scale;
        if e > worst {
            (worst, at) = (e, i);
        }
    }
    if std::env::var_os("OPS_VERBOSE").is_some() {
        eprintln!("{what}: {worst:.2e} / {tol:.0e}");
    }
    assert!(
        worst <= tol,
        "{what}: relative error {worst:.3e} > {tol:.1e} at {at} (got {}, want {})",
        got[at],
        want[at]
    );
}

/// Forward and gradients of `fused` against `composed` in `dtype`, and the fused gradients
/// against central differences of the fused f64 forward, at the inputs rounded to `dtype`.
/// `coords` are single values `(input, index)` also checked one by one.
fn check(
    name: &str,
    fused: OpFn,
    composed: OpFn,
    inputs: &[Input],
    dtype: DType,
    coords: &[(usize, usize)],
    seed: u64,
) -> Result<()> {
    let tol = tol(dtype);
    let mut rng = Rng::new(seed);
    // The output's size, for the loss weights.
    let n_out = {
        let views = inputs
            .iter()
            .map(|i| {
                (i.view)(&Tensor::from_vec(
                    i.data.clone(),
                    i.shape.as_slice(),
                    &Device::Cpu,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        fused(&views)?.elem_count()
    };
    let w = rng.vec(n_out, 1.0, 0.0);

    // The point the dtype runs see: the inputs rounded to `dtype`.
    let dev = Device::Cpu;
    let base = inputs
        .iter()
        .map(|i| {
            to_f64(&Tensor::from_vec(i.data.clone(), i.shape.as_slice(), &dev)?.to_dtype(dtype)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let (y_f, g_f) = run(fused, inputs, &base, dtype, &w)?;
    let (y_c, g_c) = run(composed, inputs, &base, dtype, &w)?;
    // The truth at that point: the composed reference in f64 (so in the F64 case the fused op
    // is held to the reference with no slack).
    let (y_t, g_t) = run(composed, inputs, &base, DType::F64, &w)?;
    let outs = std::iter::once((y_f, y_c, y_t, "forward".to_string())).chain(
        g_f.iter()
            .zip(&g_c)
            .zip(&g_t)
            .enumerate()
            .map(|(k, ((f, c), t))| {
                (
                    f.clone(),
                    c.clone(),
                    t.clone(),
                    format!("gradient of input {k}"),
                )
            }),
    );
    for (f, c, t, what) in outs {
        // Fused is as accurate as the truth allows, and as close to composed as composed is to
        // the truth (in f32 a row of variance 0 turns the rounding of a sum of many equal
        // values into visible differences, larger in candle's sequential sum than here).
        assert_close(&format!("{name} {what} against f64"), &f, &t, tol.truth);
        let slack = rel_err(&c, &t);
        assert_close(
            &format!("{name} {what} against composed"),
            &f,
            &c,
            tol.composed + slack,
        );
    }

    // Finite differences in f64 at the same point.
    let h = 1e-5;
    let central = |k: usize, v: &[f64]| -> Result<f64> {
        let shifted = |sign: f64| {
            let mut d = base.clone();
            for (a, b) in d[k].iter_mut().zip(v) {
                *a += sign * h * b;
            }
            d
        };
        let f = |sign: f64| loss64(fused, inputs, &shifted(sign), &w);
        // Fourth-order central differences: rows of variance 0 curve on the scale sqrt(eps).
        Ok((8.0 * (f(1.0)? - f(-1.0)?) - (f(2.0)? - f(-2.0)?)) / (12.0 * h))
    };
    for k in 0..inputs.len() {
        let v = rng.vec(base[k].len(), 1.0, 0.0);
        let fd = central(k, &v)?;
        let an: f64 = g_f[k].iter().zip(&v).map(|(g, v)| g * v).sum();
        let scale: f64 = g_f[k]
            .iter()
            .zip(&v)
            .map(|(g, v)| (g * v).abs())
            .sum::<f64>()
            + 1e-9;
        if std::env::var_os("OPS_VERBOSE").is_some() {
            eprintln!(
                "{name} fd dir {k}: {:.2e} / {:.0e}",
                (an - fd).abs() / scale,
                tol.fd
            );
        }
        assert!(
            (an - fd).abs() <= tol.fd * scale,
            "{name}: directional derivative of input {k}: analytic {an}, finite differences {fd} \
             (relative {:.3e} > {:.1e})",
            (an - fd).abs() / scale,
            tol.fd
        );
    }
    for &(k, i) in coords {
        let mut v = vec![0.0; base[k].len()];
        v[i] = 1.0;
        let fd = central(k, &v)?;
        let mean_abs = g_f[k].iter().map(|g| g.abs()).sum::<f64>() / g_f[k].len() as f64;
        let err = (g_f[k][i] - fd).abs() / (fd.abs() + mean_abs + 1e-9);
        if std::env::var_os("OPS_VERBOSE").is_some() {
            eprintln!("{name} fd coord {k}[{i}]: {err:.2e} / {:.0e}", tol.fd);
        }
        assert!(
            err <= tol.fd,
            "{name}: d/d input {k}[{i}]: analytic {}, finite differences {fd} (relative {err:.3e})",
            g_f[k][i]
        );
    }
    Ok(())
}

const DTYPES: [DType; 4] = [DType::F64, DType::F32, DType::BF16, DType::F16];
const WIDTHS: [usize; 3] = [7, 33, 4096];
const LAYOUTS: [Layout; 3] = [Layout::Contiguous, Layout::Transposed, Layout::Narrowed];
const ROWS: usize = 5;
const EPS: f64 = 1e-5;

/// `ROWS × width` values: random rows, with row 1 constant at `c1` and row 3 constant at `c3`
/// (variance 0).
fn rows_with_constants(width: usize, c1: f64, c3: f64, rng: &mut Rng) -> Vec<f64> {
    let mut x = rng.vec(ROWS * width, 1.5, 0.3);
    x[width..2 * width].fill(c1);
    x[3 * width..4 * width].fill(c3);
    x
}

/// Every dtype, width and layout of a row-wise op; `params(width, strided)` makes the
/// per-column parameters.
fn sweep(
    name: &str,
    fused: OpFn,
    composed: OpFn,
    constants: (f64, f64),
    params: &dyn Fn(usize, bool, &mut Rng) -> Vec<Input>,
) -> Result<()> {
    for (s, &dtype) in DTYPES.iter().enumerate() {
        for &width in &WIDTHS {
            for &layout in &LAYOUTS {
                let seed = (s * 100 + width) as u64 ^ (layout as u64) << 20;
                let mut rng = Rng::new(seed);
                let x = rows_with_constants(width, constants.0, constants.1, &mut rng);
                let mut inputs = vec![matrix(&x, ROWS, width, layout, &mut rng)];
                inputs.extend(params(width, layout == Layout::Narrowed, &mut rng));
                // x in a random row, in a constant row, at the end; each parameter's last value.
                let mut coords = vec![
                    (0, 0),
                    (0, index_of(layout, width, 1, width / 2)),
                    (0, index_of(layout, width, ROWS - 1, width - 1)),
                ];
                let last_param = if layout == Layout::Narrowed {
                    2 * (width - 1)
                } else {
                    width - 1
                };
                coords.extend((1..inputs.len()).map(|k| (k, last_param)));
                let name = format!("{name} {dtype:?} width {width} {layout:?}");
                check(&name, fused, composed, &inputs, dtype, &coords, seed + 1)?;
            }
        }
    }
    Ok(())
}

/// The storage index of view element `(r, j)` of a `[ROWS, width]` input stored in `layout`.
fn index_of(layout: Layout, width: usize, r: usize, j: usize) -> usize {
    match layout {
        Layout::Contiguous => r * width + j,
        Layout::Transposed => j * ROWS + r,
        Layout::Narrowed => r * (width + 3) + 2 + j,
    }
}

fn gamma_beta(width: usize, strided: bool, rng: &mut Rng) -> Vec<Input> {
    vec![
        column(rng.vec(width, 0.5, 1.0), strided),
        column(rng.vec(width, 0.5, 0.0), strided),
    ]
}

// ---------------------------------------------------------------------------------------------
// The ops.

#[test]
fn layer_norm_matches_composed_and_finite_differences() -> Result<()> {
    sweep(
        "layer_norm",
        &|t| ops::layer_norm(&t[0], &t[1], &t[2], EPS),
        &|t| ref_layer_norm(&t[0], &t[1], &t[2], EPS),
        (0.7, -3.0),
        &gamma_beta,
    )
}

#[test]
fn rms_norm_matches_composed_and_finite_differences() -> Result<()> {
    sweep(
        "rms_norm",
        &|t| ops::rms_norm(&t[0], &t[1], EPS),
        &|t| ref_rms_norm(&t[0], &t[1], EPS),
        (0.0, -3.0),
        &|width, strided, rng| vec![column(rng.vec(width, 0.5, 1.0), strided)],
    )
}

#[test]
fn softmax_matches_composed_and_finite_differences() -> Result<()> {
    sweep(
        "softmax_last_dim",
        &|t| ops::softmax_last_dim(&t[0]),
        &|t| ref_softmax(&t[0]),
        (0.7, -3.0),
        &|_, _, _| Vec::new(),
    )
}

/// `cos`, `sin` of Llama's table (theta 10 000) for `rows` positions, `[rows, d/2]`.
fn rope_table(rows: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let angles: Vec<f64> = (0..rows)
        .flat_map(|p| (0..d / 2).map(move |i| p as f64 / 10_000f64.powf(2.0 * i as f64 / d as f64)))
        .collect();
    (
        angles.iter().map(|a| a.cos()).collect(),
        angles.iter().map(|a| a.sin()).collect(),
    )
}

#[test]
fn rope_matches_composed_candle_and_finite_differences() -> Result<()> {
    let (b, h, t, table_rows) = (2, 3, 5, 7);
    for (s, &dtype) in DTYPES.iter().enumerate() {
        for d in [8usize, 66, 128] {
            for transposed in [false, true] {
                let mut rng = Rng::new((s * 1000 + d) as u64 + transposed as u64);
                let x = rng.vec(b * h * t * d, 1.0, 0.0);
                // Non-contiguous: stored [b, t, h, d] (as a projection reshaped per head) and
                // seen through transpose(1, 2), as attention does before `contiguous()`.
                let xin = if transposed {
                    Input {
                        shape: vec![b, t, h, d],
                        data: x,
                        view: Box::new(|t| t.transpose(1, 2)),
                    }
                } else {
                    Input::plain(&[b, h, t, d], x)
                };
                let (cos, sin) = rope_table(table_rows, d);
                let inputs = [
                    xin,
                    Input::plain(&[table_rows, d / 2], cos),
                    Input::plain(&[table_rows, d / 2], sin),
                ];
                let coords = [
                    (0, 0),
                    (0, b * h * t * d - 1),
                    (1, d / 2 + 1),
                    (2, 2 * (d / 2) + 3),
                ];
                let name = format!("rope {dtype:?} head_dim {d} transposed {transposed}");
                check(
                    &name,
                    &|v| ops::rope(&v[0], &v[1], &v[2]),
                    &|v| ref_rope(&v[0], &v[1], &v[2]),
                    &inputs,
                    dtype,
                    &coords,
                    s as u64 + 7,
                )?;
            }
        }
    }
    Ok(())
}

/// The convention is candle-nn's (its fused forward has no backward, so it is compared
/// forward only).
#[test]
fn rope_forward_equals_candle_nn_rope() -> Result<()> {
    let dev = Device::Cpu;
    let (b, h, t, d) = (2, 4, 6, 16);
    let mut rng = Rng::new(3);
    let x = Tensor::from_vec(rng.vec(b * h * t * d, 1.0, 0.0), (b, h, t, d), &dev)?
        .to_dtype(DType::F32)?;
    let (cos, sin) = rope_table(9, d);
    let cos = Tensor::from_vec(cos, (9, d / 2), &dev)?.to_dtype(DType::F32)?;
    let sin = Tensor::from_vec(sin, (9, d / 2), &dev)?.to_dtype(DType::F32)?;
    let ours = to_f64(&ops::rope(&x, &cos, &sin)?)?;
    let candle = to_f64(&candle_nn::rotary_emb::rope(&x, &cos, &sin)?)?;
    assert_close("rope against candle-nn", &ours, &candle, 1e-6);
    // And the rotation is not the identity (position 0 is: cos 1, sin 0).
    let moved = ours
        .iter()
        .zip(to_f64(&x)?)
        .filter(|(a, b)| (*a - b).abs() > 1e-3)
        .count();
    assert!(moved > ours.len() / 2, "only {moved} values rotated");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Special cases.

/// Rows of constant value (variance 0) normalise to `beta` with finite gradients; all-zero rows
/// of RMS norm give zeros; constant softmax rows are uniform.
#[test]
fn constant_rows_are_finite() -> Result<()> {
    let dev = Device::Cpu;
    for dtype in DTYPES {
        let x = Var::from_tensor(&Tensor::full(2.5f32, (3, 33), &dev)?.to_dtype(dtype)?)?;
        let g = Var::from_tensor(&Tensor::full(1.5f32, 33, &dev)?.to_dtype(dtype)?)?;
        let beta = Tensor::arange(0u32, 33, &dev)?.to_dtype(dtype)?;
        let b = Var::from_tensor(&beta)?;
        let y = ops::layer_norm(&x, &g, &b, EPS)?;
        let want = to_f64(&beta.unsqueeze(0)?.repeat((3, 1))?)?;
        assert_close(
            &format!("{dtype:?} layer_norm of constant rows"),
            &to_f64(&y)?,
            &want,
            1e-6,
        );
        let grads = (y.sqr()?.sum_all()?).backward()?;
        for (what, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
            let gv = to_f64(grads.get(v).expect("gradient"))?;
            assert!(
                gv.iter().all(|v| v.is_finite()),
                "{dtype:?} d{what} not finite"
            );
        }

        let zeros = Var::from_tensor(&Tensor::zeros((2, 7), dtype, &dev)?)?;
        let g7 = Tensor::ones(7, dtype, &dev)?;
        let y = ops::rms_norm(&zeros, &g7, EPS)?;
        assert!(to_f64(&y)?.iter().all(|&v| v == 0.0));
        let grads = (y.sum_all()?).backward()?;
        let dx = to_f64(grads.get(&zeros).expect("gradient"))?;
        // d/dx of x/sqrt(x²/n + eps) at 0 is 1/sqrt(eps).
        let want = 1.0 / EPS.sqrt();
        assert!(
            dx.iter().all(|v| (v - want).abs() <= 1e-2 * want),
            "{dtype:?} rms_norm dx at 0: {dx:?}"
        );

        let y = ops::softmax_last_dim(&x)?;
        assert_close("uniform softmax", &to_f64(&y)?, &[1.0 / 33.0; 99], 1e-2);
    }
    Ok(())
}

/// Only inputs that track a gradient get one: a frozen `gamma` (a plain tensor) costs nothing
/// and `x` still gets the right gradient; a constant `x` with trainable `gamma`, `beta` gets the
/// parameters' gradients (the packed backward without `dx`).
#[test]
fn gradients_only_where_tracked() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(11);
    let (rows, width) = (9, 33);
    let x = Tensor::from_vec(rng.vec(rows * width, 1.0, 0.0), (rows, width), &dev)?;
    let g = Tensor::from_vec(rng.vec(width, 0.5, 1.0), width, &dev)?;
    let b = Tensor::from_vec(rng.vec(width, 0.5, 0.0), width, &dev)?;
    let w = Tensor::from_vec(rng.vec(rows * width, 1.0, 0.0), (rows, width), &dev)?;
    let loss = |y: Tensor| (y * &w)?.sum_all();

    // The reference: everything trainable.
    let (xv, gv, bv) = (
        Var::from_tensor(&x)?,
        Var::from_tensor(&g)?,
        Var::from_tensor(&b)?,
    );
    let all = loss(ops::layer_norm(&xv, &gv, &bv, EPS)?)?.backward()?;
    let grad = |grads: &candle_core::backprop::GradStore, v: &Tensor| -> Result<Vec<f64>> {
        to_f64(grads.get(v).expect("gradient"))
    };

    let frozen = loss(ops::layer_norm(&xv, &g, &b, EPS)?)?.backward()?;
    assert!(frozen.get(&g).is_none() && frozen.get(&b).is_none());
    assert_close(
        "dx with frozen parameters",
        &grad(&frozen, &xv)?,
        &grad(&all, &xv)?,
        1e-12,
    );

    let params_only = loss(ops::layer_norm(&x, &gv, &bv, EPS)?)?.backward()?;
    assert!(params_only.get(&x).is_none());
    assert_close(
        "dgamma without dx",
        &grad(&params_only, &gv)?,
        &grad(&all, &gv)?,
        1e-12,
    );
    assert_close(
        "dbeta without dx",
        &grad(&params_only, &bv)?,
        &grad(&all, &bv)?,
        1e-12,
    );

    let beta_only = loss(ops::layer_norm(&x, &g, &bv, EPS)?)?.backward()?;
    assert!(beta_only.get(&g).is_none());
    assert_close(
        "dbeta alone",
        &grad(&beta_only, &bv)?,
        &grad(&all, &bv)?,
        1e-12,
    );

    let all = loss(ops::rms_norm(&xv, &gv, EPS)?)?.backward()?;
    let params_only = loss(ops::rms_norm(&x, &gv, EPS)?)?.backward()?;
    assert_close(
        "rms dgamma without dx",
        &grad(&params_only, &gv)?,
        &grad(&all, &gv)?,
        1e-12,
    );
    let frozen = loss(ops::rms_norm(&xv, &g, EPS)?)?.backward()?;
    assert_close(
        "rms dx with frozen gamma",
        &grad(&frozen, &xv)?,
        &grad(&all, &xv)?,
        1e-12,
    );
    Ok(())
}

/// `sum_all` hands the op a broadcast gradient (stride 0), the softmax output goes through a
/// second op, and a batch larger than one task spans several rayon blocks.
#[test]
fn broadcast_gradients_and_many_rows() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(5);
    let (rows, width) = (3 * 1024 + 7, 48);
    let x = Var::from_tensor(&Tensor::from_vec(
        rng.vec(rows * width, 2.0, 0.0),
        (rows, width),
        &dev,
    )?)?;
    let g = Var::from_tensor(&Tensor::from_vec(rng.vec(width, 0.5, 1.0), width, &dev)?)?;
    let b = Var::from_tensor(&Tensor::from_vec(rng.vec(width, 0.5, 0.0), width, &dev)?)?;
    let w = Tensor::from_vec(rng.vec(width, 1.0, 0.0), width, &dev)?;
    let fused = |x: &Tensor| -> Result<Tensor> {
        let y = ops::layer_norm(x, &g, &b, EPS)?;
        let y = ops::softmax_last_dim(&y.broadcast_mul(&w)?)?;
        ops::rms_norm(&y, &g, EPS)?.sum_all()
    };
    let composed = |x: &Tensor| -> Result<Tensor> {
        let y = ref_layer_norm(x, &g, &b, EPS)?;
        let y = ref_softmax(&y.broadcast_mul(&w)?)?;
        ref_rms_norm(&y, &g, EPS)?.sum_all()
    };
    let (lf, lc) = (fused(&x)?, composed(&x)?);
    assert_close("chain forward", &to_f64(&lf)?, &to_f64(&lc)?, 1e-12);
    let (gf, gc) = (lf.backward()?, lc.backward()?);
    for (what, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
        let a = to_f64(gf.get(v).expect("gradient"))?;
        let c = to_f64(gc.get(v).expect("gradient"))?;
        assert_close(&format!("chain d{what}"), &a, &c, 1e-11);
    }
    Ok(())
}

/// candle-core 0.11.1's GELU (erf) and SiLU have a backward (why the ops module has none): their
/// gradients match central differences.
#[test]
fn candle_gelu_and_silu_are_differentiable() -> Result<()> {
    let dev = Device::Cpu;
    let xs: Vec<f64> = (0..41).map(|i| -4.0 + 0.2 * i as f64).collect();
    let act: [(&str, Activation); 3] = [
        ("gelu_erf", |t| t.gelu_erf()),
        ("gelu", |t| t.gelu()),
        ("silu", |t| candle_nn::ops::silu(t)),
    ];
    for (name, f) in act {
        let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), xs.len(), &dev)?)?;
        let grads = f(&x)?.sum_all()?.backward()?;
        let g = to_f64(grads.get(&x).expect("gradient"))?;
        let h = 1e-6;
        let plus = to_f64(&f(
            &Tensor::from_vec(xs.clone(), xs.len(), &dev)?.affine(1.0, h)?
        )?)?;
        let minus = to_f64(&f(
            &Tensor::from_vec(xs.clone(), xs.len(), &dev)?.affine(1.0, -h)?
        )?)?;
        let fd: Vec<f64> = plus
            .iter()
            .zip(&minus)
            .map(|(p, m)| (p - m) / (2.0 * h))
            .collect();
        // candle's gelu constants are given to six digits.
        assert_close(&format!("{name} gradient"), &g, &fd, 1e-5);
    }
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 8), DType::F32, &dev)?;
    let g8 = Tensor::ones(8, DType::F32, &dev)?;
    let g7 = Tensor::ones(7, DType::F32, &dev)?;
    let err = |r: Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(ops::layer_norm(&x, &g7, &g8, EPS)).contains("gamma of shape [7]"));
    assert!(err(ops::layer_norm(&x, &g8, &g8.to_dtype(DType::F64)?, EPS)).contains("beta is F64"));
    assert!(err(ops::rms_norm(&x, &g8.reshape((8, 1))?, EPS)).contains("gamma of shape [8, 1]"));
    assert!(err(ops::softmax_last_dim(&x.to_dtype(DType::U32)?)).contains("needs an f32"));
    let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev)?;
    let c = Tensor::zeros((4, 4), DType::F32, &dev)?;
    assert!(err(ops::rope(&q, &c.narrow(0, 0, 3)?, &c)).contains("cos of shape [3, 4]"));
    assert!(err(ops::rope(&q.narrow(3, 0, 7)?, &c, &c)).contains("odd"));
    assert!(err(ops::rope(&x, &c, &c)).contains("rank"));
    assert!(ops::rope(&q, &c, &c).is_ok());
    Ok(())
}
