//! Built-in models on candle-nn.

pub mod dense;
pub mod mlp;

pub use dense::Dense;
pub use mlp::{Mlp, MlpConfig, MlpParams};
