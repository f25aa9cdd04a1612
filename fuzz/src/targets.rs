// One body per fuzz target: each writes the fuzz input where the reader expects it and calls
// the reader, ignoring its result. A panic, a hang or an allocation beyond the fuzzer's
// limits is the failure; `Ok` and `Err` are both fine.
//
// This file is shared: `fuzz/src/lib.rs` (the libFuzzer targets in `fuzz/fuzz_targets/`) and
// `tests/fuzz_replay.rs` of the main crate (the corpus replay, on stable) both include it. It
// may therefore only use `candle_swag`, `candle_core`, `tempfile` and `std`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_swag::layout::ParamLayout;
use candle_swag::swag::checkpoint::{read_flat, CheckpointHeader};
use candle_swag::swag::{DeviationStore, SampleConfig, ShardIndex, ShardSet, SwagPosterior};
use candle_swag_cli::data::csv::{load_csv, load_table, CsvParams, TaskKind};
use candle_swag_cli::data::idx::{parse_images, parse_labels, read_image_csv};
use candle_swag_cli::train::run::LoadedRun;
use candle_swag_report::io::{read_input, CsvTable, Header, InputSource, Role};

/// Separates the files of a multi-file input (shard set, run directory).
pub const PART_SEPARATOR: &[u8] = b"\x00--swag-fuzz-part--\x00";

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by its name (its directories under `fuzz/corpus` and `fuzz/regressions`).
pub const TARGETS: &[(&str, Target)] = &[
    ("posterior_file", posterior_file),
    ("shard_index", shard_index),
    ("checkpoint", checkpoint),
    ("array_input", array_input),
    ("table_csv", table_csv),
    ("idx", idx),
    ("run_dir", run_dir),
];

/// Largest single allocation allowed (the `-malloc_limit_mb=2048` of the recorded runs).
pub const MALLOC_LIMIT: usize = 2048 << 20;

/// The system allocator, refusing any single allocation above [`MALLOC_LIMIT`] by aborting
/// with a message (a crash to libFuzzer). libFuzzer's own `-malloc_limit_mb` needs a
/// sanitizer's malloc hooks, which a stable build has none of; without this, a zeroed
/// allocation of a header's claimed size (`calloc`, pages untouched) would neither fail nor
/// show in the RSS.
pub struct LimitedAlloc;

// SAFETY: forwards to the system allocator unchanged, or aborts.
unsafe impl std::alloc::GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check_size(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        check_size(layout.size());
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

fn check_size(size: usize) {
    if size > MALLOC_LIMIT {
        // No allocation here: write the message straight to stderr.
        use std::io::Write;
        let mut buf = [0u8; 96];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = writeln!(
            cursor,
            "==malloc-limit== one allocation of {size} bytes exceeds the limit"
        );
        let n = cursor.position() as usize;
        let _ = std::io::stderr().write_all(&buf[..n]);
        std::process::abort();
    }
}

#[global_allocator]
static ALLOCATOR: LimitedAlloc = LimitedAlloc;

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// This thread's scratch directory (created once, emptied of nothing: callers overwrite).
fn scratch_dir() -> PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| tempfile::tempdir().expect("scratch directory"))
            .path()
            .to_path_buf()
    })
}

/// Writes `data` to `name` in the scratch directory and returns its path.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("write scratch file");
    path
}

/// Splits a multi-file input at [`PART_SEPARATOR`].
pub fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest
        .windows(PART_SEPARATOR.len())
        .position(|w| w == PART_SEPARATOR)
    {
        parts.push(&rest[..i]);
        rest = &rest[i + PART_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// Joins files into one multi-file input (the inverse of [`split_parts`]).
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(PART_SEPARATOR);
        }
        out.extend_from_slice(p);
    }
    out
}

/// A posterior file (any version, any layout): loaded into memory, opened on disk in place
/// (and sampled from, which streams and verifies its rows), and its header read alone.
pub fn posterior_file(data: &[u8]) {
    let path = scratch_file("posterior.safetensors", data);
    let _ = SwagPosterior::stored_columns(&path);
    let _ = SwagPosterior::load(&path, &Device::Cpu);
    let _ = SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Host);
    // Opened on disk, the first sample streams the rows and verifies the checksum as it goes.
    if let Ok(p) =
        SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Disk(path.clone()))
    {
        let _ = p.sample_flat_seeded(0, &SampleConfig::default());
    }
}

/// A shard set: part 0 is `index.json`, part `i ≥ 1` is `shard{i-1}.safetensors` beside it.
pub fn shard_index(data: &[u8]) {
    let dir = scratch_dir().join("shards");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("shard directory");
    let parts = split_parts(data);
    let index = dir.join("index.json");
    std::fs::write(&index, parts[0]).expect("write index");
    for (i, p) in parts[1..].iter().enumerate() {
        std::fs::write(dir.join(format!("shard{i}.safetensors")), p).expect("write shard");
    }
    let _ = ShardIndex::load(&index);
    let _ = ShardSet::load(&index, &Device::Cpu);
}

/// A weight checkpoint: its header, then its tensors read into a flat vector, once in the
/// layout its own header gives and once in a fixed small layout.
pub fn checkpoint(data: &[u8]) {
    let path = scratch_file("checkpoint.safetensors", data);
    if let Ok(h) = CheckpointHeader::read(&path) {
        if let Ok(layout) = ParamLayout::new(h.shapes()) {
            let _ = read_flat(&path, &layout);
        }
    }
    let fixed = ParamLayout::new(vec![
        ("fc.weight".into(), vec![3, 2]),
        ("fc.bias".into(), vec![3]),
    ])
    .expect("fixed layout");
    let _ = read_flat(&path, &fixed);
}

const ROLES: [Role; 6] = [
    Role::Probabilities,
    Role::Logits,
    Role::Labels,
    Role::Mean,
    Role::Std,
    Role::Targets,
];

/// A prediction/label input file (`swag report`): byte 0 picks the format (`.npy`, `.npz`,
/// `.safetensors`, CSV), byte 1 the role and whether a key is named; the rest is the file.
pub fn array_input(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let ext = ["npy", "npz", "safetensors", "csv"][(data[0] % 4) as usize];
    let role = ROLES[((data[1] & 0x7f) % 6) as usize];
    let path = scratch_file(&format!("input.{ext}"), &data[2..]);
    let mut spec = InputSource::new(&path);
    if data[1] & 0x80 != 0 {
        spec.key = Some(if ext == "csv" { "prob_1" } else { "probs" }.to_string());
    }
    let _ = read_input(&spec, role);
}

/// A tabular CSV (`swag fit`): bytes 0..6 choose the target, task, split column, and which
/// header columns are `--categorical` and `--ignore`; the rest is the file.
pub fn table_csv(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let (knobs, body) = data.split_at(6);
    let path = scratch_file("table.csv", body);
    let Ok(text) = std::str::from_utf8(body) else {
        if let Ok(config) = CsvParams::new("y", TaskKind::Regression).check() {
            let _ = load_csv(&path, &config);
        }
        return;
    };
    let _ = CsvTable::parse_with(text, "table.csv", Header::Detect);
    let Ok(table) = CsvTable::parse_with(text, "table.csv", Header::Required) else {
        return;
    };
    let names = table.header().to_vec();
    let n = names.len().max(1);
    let pick = |b: u8| names.get(b as usize % n).cloned().unwrap_or_default();
    let task = if knobs[1] & 1 == 0 {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    };
    let target = if knobs[1] & 4 != 0 {
        "no_such_column".to_string()
    } else {
        pick(knobs[0])
    };
    let mut config = CsvParams::new(target, task);
    if knobs[1] & 2 != 0 {
        config.split_column = Some(pick(knobs[2]));
    }
    let mask = |bits: u8| -> Vec<String> {
        names
            .iter()
            .enumerate()
            .filter(|(j, _)| bits & (1 << (j % 8)) != 0)
            .map(|(_, s)| s.clone())
            .collect()
    };
    config.categorical = mask(knobs[3]);
    config.ignore = mask(knobs[4]);
    if knobs[5] & 1 != 0 {
        config.categorical.push("no_such_column".into());
    }
    if knobs[5] & 2 != 0 {
        config.ignore.push("no_such_column".into());
    }
    let Ok(config) = config.check() else {
        return;
    };
    let _ = load_table(&table, &config);
    let _ = load_csv(&path, &config);
}

/// MNIST inputs: byte 0 picks an IDX image file, an IDX label file or an image CSV.
pub fn idx(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let name = Path::new("fuzz.idx");
    match which % 3 {
        0 => {
            let _ = parse_images(body, name);
        }
        1 => {
            let _ = parse_labels(body, name);
        }
        _ => {
            let path = scratch_file("images.csv", body);
            let _ = read_image_csv(&path);
        }
    }
}

/// A run directory (`swag predict`): parts are `config.json`, `weights.safetensors`,
/// `posterior.safetensors` and `train_inputs.safetensors`; missing parts are missing files.
pub fn run_dir(data: &[u8]) {
    let dir = scratch_dir().join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("run directory");
    let names = [
        "config.json",
        "weights.safetensors",
        "posterior.safetensors",
        "train_inputs.safetensors",
    ];
    for (name, part) in names.iter().zip(split_parts(data)) {
        std::fs::write(dir.join(name), part).expect("write run file");
    }
    let _ = LoadedRun::load(&dir, &Device::Cpu);
}
