//! Max pooling whose gradient is right: use [`max_pool2d`] in place of candle's
//! `Tensor::max_pool2d` in any model that is trained.
//!
//! candle 0.11's backward pass of `max_pool2d` scales the gradient by the share of the window
//! that holds the maximum: with a unique maximum in a 2×2 window, the maximum's input gets a
//! quarter of the output's gradient instead of all of it (`[1, 2, 3, 4]` pooled and summed
//! gives the gradient `[0, 0, 0, 0.25]`). Every layer below a pooling layer then learns with
//! a gradient 4× too small per 2×2 pool, distorted wherever the window holds ties, and the
//! network follows another trajectory than the same recipe in PyTorch: from the same initial
//! weights and batches, the MNIST CNN of `examples/mnist_cnn.rs` had the same first loss but
//! conv2's gradient 2.7× and BatchNorm 2's 3.5× smaller than torch's, and a first epoch that
//! ended at a mean loss of 3.00 against torch's 1.90 (guide chapter 8). candle's backward also
//! places the gradient wrongly when the input's size is not a multiple of the kernel.
//!
//! [`max_pool2d`] gives the same forward values as candle's (bit for bit) and the gradient of
//! the maximum: each output's gradient goes to the input positions that hold the window's
//! maximum, split equally between tied maxima (a valid subgradient; PyTorch gives it all to
//! the first). Rows and columns beyond the last whole window are dropped, as candle and
//! PyTorch do, and get a zero gradient. It is built from candle ops, so it runs on every
//! device and dtype candle pools on.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// 2-D max pooling of `xs` `[batch, channels, height, width]` over `kernel × kernel` windows
/// with stride `kernel` (candle-nn's `max_pool2d(kernel)`), differentiable with the correct
/// gradient (module docs).
///
/// Errors: `xs` not of rank 4, `kernel` 0, or a spatial size smaller than `kernel`
/// (`Error::InvalidArgument` naming the argument).
///
/// ```
/// use candle_core::{Device, Var};
/// let x = Var::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
/// let y = candle_swag::pool::max_pool2d(x.as_tensor(), 2).unwrap();
/// let grads = y.sum_all().unwrap().backward().unwrap();
/// let g = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(g, [0.0, 0.0, 0.0, 1.0]);
/// ```
pub fn max_pool2d(xs: &Tensor, kernel: usize) -> Result<Tensor> {
    let dims = xs.dims();
    if dims.len() != 4 {
        return Err(Error::invalid(
            "xs",
            format!("max_pool2d needs [batch, channels, height, width], got shape {dims:?}"),
        ));
    }
    if kernel == 0 {
        return Err(Error::invalid("kernel", "must be at least 1"));
    }
    let (h, w) = (dims[2], dims[3]);
    if h < kernel || w < kernel {
        return Err(Error::invalid(
            "kernel",
            format!("{kernel} is larger than the input's {h}×{w} spatial size"),
        ));
    }
    // Only the whole windows take part (floor mode); the rest gets no gradient through narrow.
    let (oh, ow) = (h / kernel, w / kernel);
    let xs = xs.narrow(2, 0, oh * kernel)?.narrow(3, 0, ow * kernel)?;
    let pooled = xs.max_pool2d(kernel)?.detach();
    // Where each window's maximum sits, and how many positions share it.
    let at_max = xs
        .detach()
        .eq(&pooled.upsample_nearest2d(oh * kernel, ow * kernel)?)?
        .to_dtype(xs.dtype())?;
    let ties = at_max.avg_pool2d(kernel)?;
    let share = (&at_max
        / ties
            .upsample_nearest2d(oh * kernel, ow * kernel)?
            .affine((kernel * kernel) as f64, 0.0)?)?;
    // `pooled` plus a term that is exactly zero in value and carries the gradient
    // d out / d x = share (avg_pool2d's backward spreads grad / k² over the window).
    let scale = (kernel * kernel) as f64;
    let routed = (&xs * &share)?.avg_pool2d(kernel)?.affine(scale, 0.0)?;
    let zero = (&routed - routed.detach())?;
    Ok((pooled + zero)?)
}
