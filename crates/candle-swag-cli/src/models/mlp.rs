//! A multi-layer perceptron on candle: `Linear → [BatchNorm] → ReLU` per hidden layer, then a
//! final `Linear`. The linear layers are [`Dense`] (one fused op with its own backward pass,
//! same parameters as candle-nn's `Linear`).
//!
//! Initial weights are drawn on the host from a seeded `StdRng` (candle's CPU generator cannot
//! be seeded), with PyTorch's `nn.Linear` default: weight and bias both ~ U(−1/√fan_in,
//! 1/√fan_in) (Kaiming-uniform with a = √5). Layers are drawn in order, weight before bias, so a
//! seed fixes the whole network.
//!
//! Parameter names: `fc{i}.weight` `[out, in]` and `fc{i}.bias` `[out]` for the i-th linear layer
//! (0-based; the output layer is `fc{hidden.len()}`), and `bn{i}.*` for the BatchNorm after the
//! i-th hidden layer (candle-nn's names: weight, bias, running_mean, running_var).

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};

use crate::models::dense::Dense;
use candle_swag::batchnorm::{BatchNorm, BatchNormConfig, BatchNormStats};
use candle_swag::error::{Error, Result};

/// The shape of an [`Mlp`], unchecked (the crate's config shape, see
/// [`candle_swag::swag::config`]); also how an [`MlpConfig`] is written to and read from a
/// run directory. Every field is the user's to give: there is no default network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpParams {
    /// Number of input features, at least 1.
    pub input_dim: usize,
    /// One hidden layer per entry, each width at least 1 (may be empty: a linear model).
    pub hidden: Vec<usize>,
    /// Outputs, at least 1 (classes for classification, 1 or 2 for regression).
    pub output_dim: usize,
    /// Whether a BatchNorm follows each hidden linear layer (before the ReLU).
    #[serde(default)]
    pub batchnorm: bool,
}

impl MlpParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<MlpConfig> {
        let config = MlpConfig(self.clone());
        if config.widths().contains(&0) {
            return Err(Error::invalid(
                "hidden",
                format!(
                    "every layer width must be positive, got {:?}",
                    config.widths()
                ),
            ));
        }
        Ok(config)
    }
}

/// Shape of an [`Mlp`] (from [`MlpParams::check`]; a config read from a file is checked the
/// same way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MlpParams", into = "MlpParams")]
pub struct MlpConfig(MlpParams);

impl TryFrom<MlpParams> for MlpConfig {
    type Error = Error;
    fn try_from(params: MlpParams) -> Result<Self> {
        params.check()
    }
}

impl From<MlpConfig> for MlpParams {
    fn from(config: MlpConfig) -> Self {
        config.0
    }
}

impl MlpConfig {
    /// Number of input features.
    pub fn input_dim(&self) -> usize {
        self.0.input_dim
    }

    /// Number of outputs.
    pub fn output_dim(&self) -> usize {
        self.0.output_dim
    }

    /// Whether each hidden layer is followed by a BatchNorm.
    pub fn batchnorm(&self) -> bool {
        self.0.batchnorm
    }

    /// The widths of every layer, input first: `[input_dim, hidden.., output_dim]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.0.input_dim];
        w.extend(&self.0.hidden);
        w.push(self.0.output_dim);
        w
    }
}

/// A multi-layer perceptron with ReLU activations and optional BatchNorm.
#[derive(Debug, Clone)]
pub struct Mlp {
    config: MlpConfig,
    linears: Vec<Dense>,
    norms: Vec<BatchNorm>,
}

impl Mlp {
    /// Builds the network, creating its Vars in `varmap` (f32 on `device`) with seeded
    /// initial values. A Var that already exists in `varmap` under the same name is reused as
    /// it is (so loading a saved VarMap before or after construction both work).
    pub fn new(config: &MlpConfig, varmap: &VarMap, device: &Device, seed: u64) -> Result<Self> {
        let widths = config.widths();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| Error::invalid("varmap", "the VarMap's lock is poisoned"))?;
            for (i, pair) in widths.windows(2).enumerate() {
                let (fan_in, fan_out) = (pair[0], pair[1]);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let dist = Uniform::new(-bound, bound)
                    .map_err(|e| Error::invalid("fan_in", e.to_string()))?;
                let mut draw = |n: usize| -> Vec<f32> {
                    (0..n).map(|_| dist.sample(&mut rng) as f32).collect()
                };
                let w = draw(fan_in * fan_out);
                let b = draw(fan_out);
                let wname = format!("fc{i}.weight");
                let bname = format!("fc{i}.bias");
                if let std::collections::hash_map::Entry::Vacant(e) = data.entry(wname) {
                    e.insert(Var::from_tensor(&Tensor::from_vec(
                        w,
                        (fan_out, fan_in),
                        device,
                    )?)?);
                }
                if let std::collections::hash_map::Entry::Vacant(e) = data.entry(bname) {
                    e.insert(Var::from_tensor(&Tensor::from_vec(b, fan_out, device)?)?);
                }
            }
        }
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let mut linears = Vec::new();
        let mut norms = Vec::new();
        for (i, pair) in widths.windows(2).enumerate() {
            let weight = vb.get((pair[1], pair[0]), &format!("fc{i}.weight"))?;
            let bias = vb.get(pair[1], &format!("fc{i}.bias"))?;
            // The ReLU is fused into the layer unless a BatchNorm sits between them.
            let hidden = i + 2 < widths.len();
            linears.push(Dense::new(weight, bias, hidden && !config.batchnorm()));
            if config.batchnorm() && i + 2 < widths.len() {
                norms.push(BatchNorm::new(
                    pair[1],
                    BatchNormConfig::default(),
                    vb.pp(format!("bn{i}")),
                )?);
            }
        }
        Ok(Self {
            config: config.clone(),
            linears,
            norms,
        })
    }

    /// The network's shape.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for (i, layer) in self.linears.iter().enumerate() {
            h = layer.forward(&h)?;
            if let Some(bn) = self.norms.get(i) {
                h = bn.forward_t(&h, train)?.relu()?;
            }
        }
        Ok(h)
    }
}

impl Mlp {
    /// The statistics of the network's BatchNorm layers (empty without BatchNorm), for a
    /// [`candle_swag::batchnorm::BatchNormRefresh`].
    pub fn batchnorm_stats(&self) -> Result<Vec<BatchNormStats>> {
        self.norms.iter().map(BatchNormStats::of_layer).collect()
    }
}
