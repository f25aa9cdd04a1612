//! The `--store` and `--dtype` arguments shared by the posterior subcommands.

use std::path::Path;

use candle_core::DType;
use candle_swag::swag::DeviationStore;

/// Where the deviation columns live while the command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreArg {
    /// In memory, beside the moments (on this CPU-only tool, the same as `host`).
    Device,
    /// In host memory.
    Host,
    /// In the posterior file itself, streamed in chunks: memory does not grow with K·d.
    Disk,
}

impl StoreArg {
    /// The library's store for the posterior file at `path`.
    pub fn store(self, path: &Path) -> DeviationStore {
        match self {
            StoreArg::Device => DeviationStore::Device,
            StoreArg::Host => DeviationStore::Host,
            StoreArg::Disk => DeviationStore::Disk(path.to_path_buf()),
        }
    }
}

/// Storage dtype of the deviation columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 4 bytes per entry, as computed.
    F32,
    /// 2 bytes, f32's range, 8 significant bits.
    Bf16,
    /// 2 bytes, 11 significant bits, with a per-column power-of-two scale (never ±Inf).
    F16,
}

impl DtypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::F16 => DType::F16,
        }
    }
}
