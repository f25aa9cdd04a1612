//! Compiles the fused CUDA kernels (`src/swag/kernels.cu`) to PTX when the `cuda` feature is on.
//! A build without that feature runs nothing here and needs no CUDA tools.
//!
//! nvcc is taken from `$CUDA_HOME/bin` (or `PATH`); the PTX targets `compute_$CUDA_COMPUTE_CAP`
//! (default 75, the oldest architecture CUDA 13 supports: the driver compiles PTX forward for
//! newer GPUs). `--fmad=false -ftz=false -prec-div=true -prec-sqrt=true` keep the arithmetic that
//! of the CPU kernels, bit for bit (the source also spells each operation with its `_rn`
//! intrinsic, so the flags are a second line of defence).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/swag/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("swag_kernels.ptx");
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".to_string());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "--fmad=false",
            "-ftz=false",
            "-prec-div=true",
            "-prec-sqrt=true",
            "-std=c++17",
        ])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&ptx)
        .arg("src/swag/kernels.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed on src/swag/kernels.cu ({s}); see its output above"),
        Err(e) => panic!(
            "the cuda feature needs nvcc ({} could not be run: {e}); set CUDA_HOME or PATH",
            nvcc.display()
        ),
    }
}
