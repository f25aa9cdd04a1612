//! Replays the fuzz seeds, corpora and crash regressions of the transformers crate's readers
//! (`fuzz/{seeds,corpus,regressions}/<target>/*` for the targets of
//! `fuzz/src/transformers_targets.rs`) through the same bodies the fuzzers run, on stable:
//! every input must give `Ok` or a clean `Err`, never a panic, and quickly.
//!
//! The ignored test `write_transformers_fuzz_seeds` writes the seeds (small valid files made
//! with the crate's own writers): `cargo test --release -p candle-swag-transformers --test
//! fuzz_replay -- --ignored` from the repository root.

#[path = "../../../fuzz/src/transformers_targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_swag_transformers::{tiny, Arch, BaseModel, Lora, LoraParams};

/// Generous: the slowest input takes milliseconds in a release build.
const SLOW: Duration = Duration::from_secs(20);

fn fuzz_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
}

fn replay(kind: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, body) in targets::TRANSFORMERS_TARGETS {
        let Ok(entries) = std::fs::read_dir(fuzz_dir(kind).join(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            let data = std::fs::read(&file)?;
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(|| body(&data));
            let took = start.elapsed();
            replayed += 1;
            if outcome.is_err() {
                failures.push(format!("{}: panicked", file.display()));
            } else if took > SLOW {
                failures.push(format!("{}: took {took:?}", file.display()));
            }
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n").into());
    }
    eprintln!("{kind}: {replayed} inputs replayed");
    Ok(replayed)
}

#[test]
fn seeds_replay_without_panics() -> Result<(), Box<dyn std::error::Error>> {
    // The seeds are committed: an empty replay means they were lost.
    assert!(replay("seeds")? >= 10);
    Ok(())
}

#[test]
fn corpora_replay_without_panics() -> Result<(), Box<dyn std::error::Error>> {
    replay("corpus").map(|_| ())
}

#[test]
fn crash_regressions_replay_without_panics() -> Result<(), Box<dyn std::error::Error>> {
    replay("regressions").map(|_| ())
}

/// A small WordPiece `tokenizer.json` in the layout of BERT checkpoints.
fn wordpiece() -> serde_json::Value {
    let vocab = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "un", "##believ",
        "##able", ",", ".",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"),
            special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

/// A small byte-level BPE `tokenizer.json` (GPT-2 / Llama-3 style).
fn bpe() -> serde_json::Value {
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false,
            "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "he": 4, "ll": 5, "hell": 6, "hello": 7,
                "Ġ": 8, "w": 9, "r": 10, "d": 11},
            "merges": ["h e", "l l", "he ll", "hell o"]}
    })
}

#[test]
#[ignore = "writes fuzz/seeds/ (run by hand when the formats change)"]
fn write_transformers_fuzz_seeds() -> Result<(), Box<dyn std::error::Error>> {
    let seeds = fuzz_dir("seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };
    let with_byte = |b: u8, body: &[u8]| [&[b][..], body].concat();
    // model_config: byte 0 picks the reader (0 BERT, 1 Llama, 2 ViT, 3-5 the trainable BERT,
    // Llama and ViT, 6 pooling).
    for (b, arch) in [
        (0u8, Arch::Bert),
        (1, Arch::Llama),
        (2, Arch::Vit),
        (3, Arch::Bert),
        (4, Arch::Llama),
        (5, Arch::Vit),
    ] {
        let json = serde_json::to_vec_pretty(&tiny::tiny_config(arch))?;
        write(
            "model_config",
            &format!("{b}-{arch:?}.json"),
            &with_byte(b, &json),
        )?;
    }
    let pooling = br#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
 "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
 "pooling_mode_mean_sqrt_len_tokens": false}"#;
    write("model_config", "6-pooling.json", &with_byte(6, pooling))?;
    // tokenizer_json: byte 0 even truncates, odd refuses long texts.
    for (name, json) in [("wordpiece", wordpiece()), ("bpe", bpe())] {
        let body = serde_json::to_vec_pretty(&json)?;
        // A seed is a valid input: the fuzzer starts from files that parse and encode.
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), &body)?;
        candle_swag_transformers::TextTokenizer::from_file(file.path(), 16)?
            .encode_batch(&["hello world", "the cat sat"], &Device::Cpu)?;
        write(
            "tokenizer_json",
            &format!("0-{name}.json"),
            &with_byte(0, &body),
        )?;
        write(
            "tokenizer_json",
            &format!("1-{name}.json"),
            &with_byte(1, &body),
        )?;
    }
    // adapter_file: the adapters of the target's own tiny base (seed 0, rank 2, queries).
    let dir = tempfile::tempdir()?;
    tiny::write_random_model(Arch::Bert, dir.path(), 0)?;
    let base = BaseModel::load(dir.path(), &Device::Cpu)?;
    let params = LoraParams::new(&["*.attention.self.query.weight"], 2).check()?;
    let lora = Lora::new(&base, &params, &Device::Cpu)?;
    let file = dir.path().join("adapters.safetensors");
    lora.save_adapters(&file)?;
    write(
        "adapter_file",
        "adapters.safetensors",
        &std::fs::read(&file)?,
    )?;
    // text_table: byte 0 picks the reader (0 training table, 1 test table, 2 text lines).
    let table = b"id,text,label\n1,\"good, \"\"very\"\" good\",positive\n2,bad,negative\n3,\"two\nlines\",neutral\n";
    write("text_table", "0-train.csv", &with_byte(0, table))?;
    write("text_table", "1-test.csv", &with_byte(1, table))?;
    write(
        "text_table",
        "2-lines.txt",
        &with_byte(2, b"one text\n\nanother, text\n"),
    )?;
    Ok(())
}

/// The input that crashed `tokenizer_json` (the tokenizers crate 0.23.2 panics in its decoder
/// deserializer on this invalid JSON): a one-line error naming the file, not a panic.
#[test]
fn a_tokenizer_json_that_panicked_the_tokenizers_crate_is_an_error(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = fuzz_dir("regressions").join("tokenizer_json");
    let mut found = 0;
    for entry in std::fs::read_dir(dir)? {
        let data = std::fs::read(entry?.path())?;
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), &data[1..])?;
        let err = match candle_swag_transformers::TextTokenizer::from_file(file.path(), 16) {
            Ok(_) => continue, // a regression that now parses is fine too
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        found += 1;
    }
    assert!(found > 0, "no regression input was refused");
    Ok(())
}
