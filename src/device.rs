//! Choosing where to run: a GPU when one is present, the CPU otherwise.
//!
//! candle's `Device::cuda_if_available` decides at *compile* time: a binary built with the
//! `cuda` feature fails on a machine without a GPU (`CUDA_ERROR_NO_DEVICE`). [`select`] tries
//! the GPU at run time instead and, for [`DeviceRequest::Auto`], falls back to the CPU, returning
//! a one-line notice for the caller to print (the library itself prints nothing). An explicit
//! request (`cuda:1`) that cannot be met is an error naming the device.
//!
//! ```
//! use candle_swag::device::{select, DeviceRequest};
//! let chosen = select("cpu".parse::<DeviceRequest>()?)?;
//! assert!(chosen.device.is_cpu() && chosen.fallback.is_none());
//! assert!("tpu".parse::<DeviceRequest>().is_err());
//! # Ok::<(), candle_swag::Error>(())
//! ```

use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// Which device a user asked for: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first GPU this build supports (CUDA, then Metal) if one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// The Metal device with this ordinal (needs the `metal` feature).
    Metal(usize),
}

impl FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "device",
                format!("`{s}` is not a device; use auto, cpu, cuda, cuda:N, metal or metal:N"),
            )
        };
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        match (kind, ordinal) {
            ("auto", None) => Ok(Self::Auto),
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda", n) => Ok(Self::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(Self::Metal(n.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// The device chosen by [`select`], and why it is the CPU when a GPU was hoped for.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The device to use.
    pub device: Device,
    /// For [`DeviceRequest::Auto`] in a GPU build that found no usable GPU: a one-line notice
    /// saying so (print it); `None` otherwise.
    pub fallback: Option<String>,
}

/// Opens the requested device (module docs).
pub fn select(request: DeviceRequest) -> Result<SelectedDevice> {
    let chosen = |device| SelectedDevice {
        device,
        fallback: None,
    };
    match request {
        DeviceRequest::Cpu => Ok(chosen(Device::Cpu)),
        DeviceRequest::Cuda(n) => open_cuda(n).map(chosen),
        DeviceRequest::Metal(n) => open_metal(n).map(chosen),
        DeviceRequest::Auto => {
            let mut tried = Vec::new();
            if cfg!(feature = "cuda") {
                match open_cuda(0) {
                    Ok(d) => return Ok(chosen(d)),
                    Err(e) => tried.push(e.to_string()),
                }
            }
            if cfg!(feature = "metal") {
                match open_metal(0) {
                    Ok(d) => return Ok(chosen(d)),
                    Err(e) => tried.push(e.to_string()),
                }
            }
            Ok(SelectedDevice {
                device: Device::Cpu,
                fallback: (!tried.is_empty())
                    .then(|| format!("no usable GPU ({}); running on the CPU", tried.join("; "))),
            })
        }
    }
}

fn open_cuda(n: usize) -> Result<Device> {
    open_gpu("cuda", "CUDA", cfg!(feature = "cuda"), n, Device::new_cuda)
}

fn open_metal(n: usize) -> Result<Device> {
    open_gpu(
        "metal",
        "Metal",
        cfg!(feature = "metal"),
        n,
        Device::new_metal,
    )
}

/// Opens GPU `n` of a backend (`kind` as the user spells it, `name` as humans do), or says
/// why not: a build without the backend's feature, or candle's first line of error.
fn open_gpu(
    kind: &str,
    name: &str,
    built: bool,
    n: usize,
    open: impl FnOnce(usize) -> candle_core::Result<Device>,
) -> Result<Device> {
    if !built {
        return Err(Error::invalid(
            "device",
            format!(
                "{kind}:{n} was asked for, but this build has no {name} support (build with --features {kind})"
            ),
        ));
    }
    open(n).map_err(|e| {
        Error::invalid(
            "device",
            format!(
                "{kind}:{n} cannot be opened: {}",
                first_line(&e.to_string())
            ),
        )
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Keeps the memory candle frees inside the process, for CPU training (glibc only; elsewhere
/// a no-op returning `false`). candle allocates and frees its intermediate tensors (megabytes
/// each) at every forward and backward pass; with glibc's defaults each such buffer goes back
/// to the kernel when freed and is faulted in again page by page on the next pass: half of the
/// MNIST CNN example's wall time, 15% of the SWAG-LoRA benchmark's. Call it first in `main`,
/// before any other thread exists. It sets `mallopt`'s mmap threshold to 32 MiB, trim
/// threshold to 1 GiB and top pad to 64 MiB; the same settings without code:
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864`.
/// Returns whether glibc accepted all three.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() -> bool {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3.
    let mut all = true;
    for (param, value) in [(-3, 32 << 20), (-1, 1 << 30), (-2, 64 << 20)] {
        // SAFETY: mallopt only changes allocator settings; a value it refuses (return 0)
        // leaves the default in place.
        all &= unsafe { mallopt(param, value) } == 1;
    }
    all
}

/// See the glibc version: elsewhere nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_allocator_settings() {
        assert!(keep_freed_memory());
    }

    #[test]
    fn requests_parse_and_print_back() -> anyhow::Result<()> {
        for (s, want) in [
            ("auto", DeviceRequest::Auto),
            ("cpu", DeviceRequest::Cpu),
            ("cuda", DeviceRequest::Cuda(0)),
            ("cuda:3", DeviceRequest::Cuda(3)),
            ("metal:1", DeviceRequest::Metal(1)),
        ] {
            let got: DeviceRequest = s.parse().expect("a valid request");
            assert_eq!(got, want);
            assert_eq!(got.to_string().parse::<DeviceRequest>().ok(), Some(want));
        }
        for bad in ["", "gpu", "cuda:", "cuda:x", "cpu:0", "auto:1"] {
            let err = bad.parse::<DeviceRequest>().expect_err(bad).to_string();
            assert!(err.contains("device"), "{bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn auto_on_a_cpu_build_is_the_cpu_without_notice() -> anyhow::Result<()> {
        if cfg!(any(feature = "cuda", feature = "metal")) {
            return Ok(());
        }
        let s = select(DeviceRequest::Auto).expect("the CPU always opens");
        assert!(s.device.is_cpu());
        assert!(s.fallback.is_none());
        let err = select(DeviceRequest::Cuda(1)).expect_err("no CUDA in this build");
        assert!(err.to_string().contains("cuda:1"), "{err}");
        Ok(())
    }
}
