// Fuzz target bodies for the readers of candle-swag-transformers: model configs, tokenizer
// files, adapter files and text tables. As `targets.rs`, each writes the input where the
// reader expects it and ignores the result: a panic, a hang or an allocation beyond the
// fuzzer's limits is the failure.
//
// Shared: `fuzz/src/lib.rs` (the libFuzzer binaries) and the transformers crate's
// `tests/fuzz_replay.rs` (the corpus replay on stable) both include it. It may only use
// `candle_swag_transformers`, `candle_core`, `serde_json`, `tempfile` and `std`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_swag_transformers::models::{BertConfig, LlamaConfig, Pooling, VitConfig};
use candle_swag_transformers::{config, read_text_lines, tiny, Arch, BaseModel, LabelledText};
use candle_swag_transformers::{Lora, LoraParams, TextTokenizer};

/// A target body.
pub type TransformersTarget = fn(&[u8]);

/// Every target of the transformers crate, by its name (its directories under `fuzz/corpus`,
/// `fuzz/seeds` and `fuzz/regressions`).
pub const TRANSFORMERS_TARGETS: &[(&str, TransformersTarget)] = &[
    ("model_config", model_config),
    ("tokenizer_json", tokenizer_json),
    ("adapter_file", adapter_file),
    ("text_table", text_table),
];

thread_local! {
    /// One scratch directory per thread, reused by every input.
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Writes `bytes` to `name` in the thread's scratch directory and returns its path.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = tempfile::tempdir().ok();
        }
        s.as_ref().map(|d| d.path().to_path_buf())
    });
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&path, bytes);
    path
}

/// `config.json` of each family. Byte 0 picks the reader: the serving configs of BERT, Llama
/// and ViT (`config::bert`, `llama`, `vit`), the trainable families' (`BertConfig`,
/// `LlamaConfig`, `VitConfig::from_json`), or the sentence-transformers pooling file
/// (`1_Pooling/config.json`, `Pooling::from_model_dir`); the rest is the file.
pub fn model_config(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which % 7 == 6 {
        let path = scratch_file("pooling/1_Pooling/config.json", body);
        if let Some(dir) = path.parent().and_then(Path::parent) {
            let _ = Pooling::from_model_dir(dir);
        }
        return;
    }
    let path = scratch_file("config.json", body);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let _ = match which % 7 {
        0 => config::bert(&value, &path).map(|_| ()),
        1 => config::llama(&value, &path).map(|_| ()),
        2 => config::vit(&value, &path).map(|_| ()),
        3 => BertConfig::from_json(&value, &path).map(|_| ()),
        4 => LlamaConfig::from_json(&value, &path).map(|_| ()),
        _ => VitConfig::from_json(&value, &path).map(|_| ()),
    };
}

/// A `tokenizer.json`: parsed, then two short texts and one long one encoded as a batch with
/// truncation to 16 tokens (byte 0 even) or without it (odd: the long text is an error).
pub fn tokenizer_json(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let_caught_panics_unwind();
    let path = scratch_file("tokenizer.json", body);
    let Ok(tok) = TextTokenizer::from_file(&path, 16) else {
        return;
    };
    let tok = tok.truncating(mode % 2 == 0);
    let long = "the quick brown fox jumps over the lazy dog ".repeat(8);
    let _ = tok.encode_batch(&["hello world", "a", long.as_str(), ""], &Device::Cpu);
}

/// libfuzzer-sys's panic hook aborts at once, before `TextTokenizer`'s own `catch_unwind` can
/// turn a panic of the tokenizers crate into an error (as it does for users). This target
/// installs a hook that does nothing instead, so that only a panic that escapes candle-swag's
/// code is a crash (libfuzzer-sys's wrapper aborts on it; replay the input with the crate's
/// `tests/fuzz_replay.rs` to see its message).
fn let_caught_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// The tiny BERT base model the adapter files are loaded against (made once per thread).
fn adapter_base() -> Option<Lora> {
    thread_local! {
        static LORA: RefCell<Option<(tempfile::TempDir, Lora)>> = const { RefCell::new(None) };
    }
    LORA.with(|l| {
        let mut l = l.borrow_mut();
        if l.is_none() {
            let dir = tempfile::tempdir().ok()?;
            tiny::write_random_model(Arch::Bert, dir.path(), 0).ok()?;
            let base = BaseModel::load(dir.path(), &Device::Cpu).ok()?;
            let params = LoraParams::new(&["*.attention.self.query.weight"], 2)
                .check()
                .ok()?;
            let lora = Lora::new(&base, &params, &Device::Cpu).ok()?;
            *l = Some((dir, lora));
        }
        l.as_ref().map(|(_, lora)| lora.clone())
    })
}

/// An adapter file loaded into adapters of a tiny BERT (rank 2, query weights): any file
/// that is not this base's, rank's and names' is refused before a `Var` changes.
pub fn adapter_file(data: &[u8]) {
    let Some(lora) = adapter_base() else {
        return;
    };
    let path = scratch_file("adapters.safetensors", data);
    let _ = lora.load_adapters(&path);
}

/// The benchmark's text inputs. Byte 0 picks: a training table (`LabelledText::read_csv`),
/// a test table against fixed classes (`read_csv_with_classes`), or an unlabelled text file
/// (`read_text_lines`); the rest is the file.
pub fn text_table(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let path = scratch_file("text.csv", body);
    let _ = match which % 3 {
        0 => LabelledText::read_csv(&path).map(|_| ()),
        1 => {
            let classes = ["negative", "neutral", "positive"].map(String::from);
            LabelledText::read_csv_with_classes(&path, &classes).map(|_| ())
        }
        _ => read_text_lines(&path).map(|_| ()),
    };
}
