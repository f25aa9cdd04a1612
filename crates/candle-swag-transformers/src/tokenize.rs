//! Text to model inputs with the checkpoint's own `tokenizer.json` (the `tokenizers` crate:
//! WordPiece, BPE, Unigram, with the file's normalizer, pre-tokenizer and post-processor).
//!
//! # Conventions
//! - **Special tokens** are added as the file's post-processor says (BERT: `[CLS] … [SEP]`).
//! - **Length.** Sequences longer than `max_len` tokens (special tokens included; give the
//!   model's `max_position_embeddings`) are truncated on the right by default; with
//!   truncation off, such a text is an error naming its index and length. The file's own
//!   `truncation` and `padding` settings are replaced by these.
//! - **Padding** on the right, to the batch's longest sequence, with the pad id of the file's
//!   `padding` section, else the id of `[PAD]` or `<pad>`, else 0 (or
//!   [`TextTokenizer::with_pad_id`]); padded positions have mask 0 and token type 0.
//! - **Output** ([`Encoded`]): u32 tensors `[n, L]` of ids, token types and attention mask
//!   (1 = real token), and the packed `[n, 3, L]` form that
//!   [`crate::models::BertClassifier`] takes as one `ModuleT` input.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_swag::{Error, Result};
use tokenizers::{Tokenizer, TruncationParams};

/// The tokenizer file a checkpoint directory holds.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A checkpoint's tokenizer with the model's length limit (see the [module docs](self)).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_len: usize,
    truncate: bool,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .field("truncate", &self.truncate)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Runs a call into the `tokenizers` crate, turning a panic of that crate (some malformed
/// files reach an `expect` in its deserializers, found by fuzzing) into an error naming the
/// tokenizer file instead of a crash. The panic's message still goes through the process's
/// panic hook (by default to stderr).
fn without_panics<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Error::bad_file(
            path,
            format!(
                "the tokenizers crate failed on this file (it panicked: {})",
                one_line(message)
            ),
        )
    })
}

/// One line: the `tokenizers` crate's messages may span several.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl TextTokenizer {
    /// Reads `path` (a `tokenizer.json`); sequences are limited to `max_len` tokens
    /// (truncated, see [`TextTokenizer::truncating`]).
    ///
    /// Errors (one line, naming the file): a missing or unreadable file, a file that does not
    /// parse as a tokenizer, `max_len` 0.
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if max_len == 0 {
            return Err(Error::invalid("max_len", "must be at least 1"));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        // Checked as JSON first: the tokenizers crate panics on some invalid JSON (0.23.2,
        // `DecoderWrapper`'s deserializer), and a JSON error says where the file is wrong.
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
            Error::bad_file(
                &path,
                format!("not valid JSON: {}", one_line(&e.to_string())),
            )
        })?;
        let mut inner = without_panics(&path, || Tokenizer::from_bytes(&bytes))?.map_err(|e| {
            Error::bad_file(
                &path,
                format!(
                    "not a tokenizer.json the tokenizers crate reads: {}",
                    one_line(&e.to_string())
                ),
            )
        })?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::bad_file(&path, one_line(&e.to_string())))?;
        Ok(Self {
            inner,
            path,
            max_len,
            truncate: true,
            pad_id,
        })
    }

    /// Reads `dir/tokenizer.json` (see [`TextTokenizer::from_file`]).
    pub fn from_model_dir(dir: impl AsRef<Path>, max_len: usize) -> Result<Self> {
        let path = dir.as_ref().join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(Error::bad_file(
                dir.as_ref(),
                format!("the model directory has no {TOKENIZER_FILE}"),
            ));
        }
        Self::from_file(path, max_len)
    }

    /// Whether longer sequences are truncated (true, the default) or refused.
    pub fn truncating(mut self, truncate: bool) -> Self {
        self.truncate = truncate;
        self
    }

    /// Pads with `pad_id` instead of the id found in the file.
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    /// The longest sequence produced.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The pad id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer (padding and truncation off).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The ids of one text with special tokens, truncated (or checked) to `max_len`.
    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut rows = self.encode_rows(&[text])?;
        Ok(rows.pop().map(|r| r.0).unwrap_or_default())
    }

    /// `(ids, type ids)` per text, truncated or checked.
    fn encode_rows(&self, texts: &[&str]) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let mut tok = self.inner.clone();
        if self.truncate {
            tok.with_truncation(Some(TruncationParams {
                max_length: self.max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::invalid("max_len", one_line(&e.to_string())))?;
        }
        let encodings = without_panics(&self.path, || tok.encode_batch(texts.to_vec(), true))?
            .map_err(|e| {
                Error::invalid(
                    "text",
                    format!(
                        "tokenizing with {}: {}",
                        self.path.display(),
                        one_line(&e.to_string())
                    ),
                )
            })?;
        let mut rows = Vec::with_capacity(encodings.len());
        for (i, e) in encodings.iter().enumerate() {
            if e.len() > self.max_len {
                return Err(Error::invalid(
                    "text",
                    format!(
                        "text {i} is {} tokens long, more than the model's {} positions (truncation is off)",
                        e.len(),
                        self.max_len
                    ),
                ));
            }
            rows.push((e.get_ids().to_vec(), e.get_type_ids().to_vec()));
        }
        Ok(rows)
    }

    /// Tokenizes a batch, padded to its longest sequence (see the [module docs](self)).
    ///
    /// Errors: an empty batch, a text longer than `max_len` with truncation off (naming its
    /// index and length), a text the tokenizer fails on.
    pub fn encode_batch(&self, texts: &[&str], device: &Device) -> Result<Encoded> {
        if texts.is_empty() {
            return Err(Error::invalid("texts", "the batch is empty"));
        }
        let rows = self.encode_rows(texts)?;
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(1);
        let n = rows.len();
        let mut ids = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        let mut lengths = Vec::with_capacity(n);
        for (i, t) in &rows {
            let pad = len - i.len();
            lengths.push(i.len());
            ids.extend_from_slice(i);
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            types.extend_from_slice(t);
            types.extend(std::iter::repeat_n(0, pad));
            mask.extend(std::iter::repeat_n(1u32, i.len()));
            mask.extend(std::iter::repeat_n(0u32, pad));
        }
        Ok(Encoded {
            ids: Tensor::from_vec(ids, (n, len), device)?,
            type_ids: Tensor::from_vec(types, (n, len), device)?,
            attention_mask: Tensor::from_vec(mask, (n, len), device)?,
            lengths,
        })
    }
}

/// A tokenized, padded batch (see the [module docs](crate::tokenize)).
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids `[n, L]`, u32.
    pub ids: Tensor,
    /// Token type ids `[n, L]`, u32.
    pub type_ids: Tensor,
    /// 1 for a real token, 0 for padding, `[n, L]`, u32.
    pub attention_mask: Tensor,
    /// The number of real tokens per row.
    pub lengths: Vec<usize>,
}

impl Encoded {
    /// Ids, token types and mask stacked as `[n, 3, L]` (u32): one tensor for a `ModuleT`.
    pub fn packed(&self) -> Result<Tensor> {
        Ok(Tensor::stack(
            &[&self.ids, &self.type_ids, &self.attention_mask],
            1,
        )?)
    }

    /// The attention mask as `dtype`.
    pub fn mask_as(&self, dtype: DType) -> Result<Tensor> {
        Ok(self.attention_mask.to_dtype(dtype)?)
    }
}
