//! Ready-made build closures for the three architectures, each a `ModuleT` that
//! [`crate::LoraModel`] and `candle_swag::Predictive` take as they are.
//!
//! - **Sequence classification** (BERT, ViT): [`SequenceClassifier`], the model's trunk up to
//!   the first token's final hidden state (BERT's `[CLS]` position, ViT's CLS token after the
//!   final LayerNorm), then a linear head named [`HEAD`] that the pretrained checkpoint lacks:
//!   a new trainable weight (see [`crate::lora`]), trained with the adapters and part of the
//!   posterior. candle-transformers' `BertModel` does not load BERT's pooler, so the head reads
//!   the `[CLS]` hidden state directly rather than the tanh-pooled one.
//! - **Next-token prediction** (Llama): [`NextToken`]. candle-transformers' `Llama::forward`
//!   returns the logits of the *last* position only, so each input row is one context window
//!   and its output is the distribution of the token after it: per-token BMA is a
//!   classification BMA over windows (`Predictive::classify` gives the mean probabilities,
//!   predictive entropy and mutual information per predicted token). A fresh attention cache
//!   (no KV cache) is made per call, so rows are independent.

use candle_core::{DType, Module, ModuleT, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::{bert, llama, vit};

/// The name prefix of the classifier head built by [`bert_classifier`] and [`vit_classifier`];
/// give it to [`crate::LoraParams::new_weights`].
pub const HEAD: &str = "swag_head";

/// The part of a classifier before the head.
pub enum Trunk {
    /// `BertModel`; inputs are token ids `[n, L]` (u32), token types all 0, no padding mask.
    Bert(bert::BertModel),
    /// ViT embeddings, encoder and final LayerNorm; inputs are images `[n, C, H, W]`.
    Vit {
        /// Patch and position embeddings with the CLS token.
        embeddings: vit::Embeddings,
        /// The transformer layers.
        encoder: vit::Encoder,
        /// The final LayerNorm (`vit.layernorm`).
        layernorm: LayerNorm,
    },
}

/// A trunk and a linear head on its first-token features.
pub struct SequenceClassifier {
    trunk: Trunk,
    head: Linear,
}

impl SequenceClassifier {
    /// The features the head reads: the first token's final hidden state, `[n, hidden]`.
    pub fn features(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match &self.trunk {
            Trunk::Bert(m) => {
                let types = xs.zeros_like()?;
                m.forward(xs, &types, None)?.narrow(1, 0, 1)?.squeeze(1)
            }
            Trunk::Vit {
                embeddings,
                encoder,
                layernorm,
            } => {
                let h = encoder.forward(&embeddings.forward(xs, None, false)?)?;
                h.narrow(1, 0, 1)?.squeeze(1)?.apply(layernorm)
            }
        }
    }

    /// The head: its weights are the head `Var`s' own tensors, so a sample written into them is
    /// seen without a rebuild.
    pub fn head(&self) -> &Linear {
        &self.head
    }
}

impl ModuleT for SequenceClassifier {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        self.head.forward(&self.features(xs)?)
    }
}

/// Builds a BERT classifier with `num_labels` classes from a `VarBuilder`.
pub fn bert_classifier(
    config: bert::Config,
    num_labels: usize,
) -> impl Fn(VarBuilder<'static>) -> candle_core::Result<SequenceClassifier> + Send + Sync {
    move |vb: VarBuilder<'static>| {
        let head = candle_nn::linear(config.hidden_size, num_labels, vb.pp(HEAD))?;
        let bert = bert::BertModel::load(vb, &config)?;
        Ok(SequenceClassifier {
            trunk: Trunk::Bert(bert),
            head,
        })
    }
}

/// Builds a ViT classifier with `num_labels` classes from a `VarBuilder` over weights in
/// `ViTForImageClassification` layout (`vit.embeddings...`, `vit.encoder...`,
/// `vit.layernorm`).
pub fn vit_classifier(
    config: vit::Config,
    num_labels: usize,
) -> impl Fn(VarBuilder<'static>) -> candle_core::Result<SequenceClassifier> + Send + Sync {
    move |vb: VarBuilder<'static>| {
        let head = candle_nn::linear(config.hidden_size, num_labels, vb.pp(HEAD))?;
        let v = vb.pp("vit");
        let embeddings = vit::Embeddings::new(&config, false, v.pp("embeddings"))?;
        let encoder = vit::Encoder::new(&config, v.pp("encoder"))?;
        let layernorm =
            candle_nn::layer_norm(config.hidden_size, config.layer_norm_eps, v.pp("layernorm"))?;
        Ok(SequenceClassifier {
            trunk: Trunk::Vit {
                embeddings,
                encoder,
                layernorm,
            },
            head,
        })
    }
}

/// A Llama language model predicting the token after each input row (see the
/// [module docs](self)).
pub struct NextToken {
    llama: llama::Llama,
    config: llama::Config,
}

impl ModuleT for NextToken {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let mut cache = llama::Cache::new(false, DType::F32, &self.config, xs.device())?;
        let logits = self.llama.forward(xs, 0, &mut cache)?;
        // [n, vocab] already; keep a rank-2 output for a single row too.
        if logits.rank() == 1 {
            logits.unsqueeze(0)
        } else {
            Ok(logits)
        }
    }
}

impl NextToken {
    /// Log-probabilities of the next token, `[n, vocab]` (for a training loss).
    pub fn log_probs(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.forward_t(xs, false)?, D::Minus1)
    }
}

/// Builds a Llama next-token model from a `VarBuilder` (grouped-query attention and tied
/// embeddings as the config says).
pub fn llama_next_token(
    config: llama::Config,
) -> impl Fn(VarBuilder<'static>) -> candle_core::Result<NextToken> + Send + Sync {
    move |vb: VarBuilder<'static>| {
        let llama = llama::Llama::load(vb, &config)?;
        Ok(NextToken {
            llama,
            config: config.clone(),
        })
    }
}
