//! Built-in models on candle-nn.

pub mod mlp;

pub use mlp::{Mlp, MlpConfig};
