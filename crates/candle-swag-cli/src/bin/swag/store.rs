//! The `--store` and `--dtype` arguments shared by the posterior subcommands.

use std::path::Path;

use candle_core::DType;
use candle_swag::swag::{DeviationStore, SwagPosterior};
use candle_swag::Result;

/// Where the deviation columns live while the command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreArg {
    /// Reading a posterior file (`sample`, `inspect`): `disk` when the file is of the current
    /// format (which opens in place), `device` otherwise. Streaming was measured as fast or
    /// faster than reading the columns whole at every size, and leaner: see `store_for_file`.
    /// Creating one (`collect`, `bench`): `device`.
    Auto,
    /// In memory, beside the moments (on this CPU-only tool, the same as `host`).
    Device,
    /// In host memory.
    Host,
    /// In the posterior file itself, streamed in chunks: memory does not grow with K·d.
    Disk,
}

impl StoreArg {
    /// The store to open the existing posterior file at `path` with. `Auto` streams the columns
    /// from the file whenever its format allows it (read from its header): measured with
    /// `farm-bench` on this 2-core machine (K = 20, f32, page cache warm), `swag sample`
    /// streaming against reading whole took 1.0× the time at d = 10k, 0.69× at d = 1M and
    /// 0.25× at d = 3M, at a third of the peak memory. Older formats are read whole.
    pub fn store_for_file(self, path: &Path) -> Result<DeviationStore> {
        if self != StoreArg::Auto {
            return Ok(self.store(path));
        }
        let (_, in_place) = SwagPosterior::stored_columns(path)?;
        Ok(if in_place {
            DeviationStore::Disk(path.to_path_buf())
        } else {
            DeviationStore::Device
        })
    }

    /// The library's store for the posterior file at `path` (`Auto` as `Device`: for a
    /// posterior being created, whose size is known to the caller).
    pub fn store(self, path: &Path) -> DeviationStore {
        match self {
            StoreArg::Auto | StoreArg::Device => DeviationStore::Device,
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
