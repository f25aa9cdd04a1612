//! SWAG: the Gaussian over weights fitted from the SGD trajectory (Maddox et al., 2019).
//!
//! - [`SwagPosterior`] collects the moments and the deviation columns ([`posterior`]);
//! - sampling and its conventions ([`sample`]), log-density ([`log_prob`]); the sampler's
//!   counter-based normal draws, the same bits on every device ([`normals`]);
//! - a posterior split by parameter ranges across devices or processes ([`shard`]);
//! - where the deviation columns live and how they are encoded ([`store`]);
//! - the posterior file format ([`mod@file`], its bytes in `format`); several posteriors
//!   sampled jointly ([`multi`]);
//! - weight checkpoints (safetensors) read and written as one flat vector ([`checkpoint`]).

pub mod checkpoint;
mod collect;
pub mod config;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod file;
pub(crate) mod format;
pub(crate) mod kernels;
pub mod log_prob;
pub mod multi;
pub mod normals;
pub mod posterior;
pub mod sample;
mod sample_host;
pub mod shard;
pub mod store;

pub use config::{Divisor, SampleConfig, SampleParams, SwagConfig, SwagParams};
pub use multi::MultiSwag;
pub use posterior::SwagPosterior;
pub use shard::{ShardEntry, ShardIndex, ShardSet};
pub use store::DeviationStore;
