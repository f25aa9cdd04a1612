//! SWAG: the Gaussian over weights fitted from the SGD trajectory (Maddox et al., 2019).
//!
//! - [`SwagPosterior`] collects the moments and the deviation columns ([`posterior`]);
//! - sampling and its conventions ([`sample`]), log-density ([`log_prob`]);
//! - a posterior split by parameter ranges across devices or processes ([`shard`]);
//! - where the deviation columns live and how they are encoded ([`store`]);
//! - the posterior file format ([`mod@file`]); several posteriors sampled jointly ([`multi`]).

pub mod file;
pub(crate) mod kernels;
pub mod log_prob;
pub mod multi;
pub(crate) mod noise;
pub mod posterior;
pub mod sample;
pub mod shard;
pub mod store;

pub use multi::MultiSwag;
pub use posterior::{SwagConfig, SwagPosterior};
pub use sample::{Divisor, SampleConfig};
pub use shard::{ShardEntry, ShardIndex, ShardSet};
pub use store::DeviationStore;
