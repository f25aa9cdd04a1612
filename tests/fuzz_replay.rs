//! Replays the fuzz seeds and corpora (`fuzz/seeds/<target>/*`, `fuzz/corpus/<target>/*`) and the inputs that once crashed a
//! target (`fuzz/regressions/<target>/*`) through the same target bodies the fuzzers run
//! (`fuzz/src/targets.rs`), on the stable toolchain, with no fuzzing tools: every input must
//! give `Ok` or a clean `Err`, never a panic, and quickly.

#[path = "../fuzz/src/targets.rs"]
mod targets;

#[path = "../fuzz/seeds.rs"]
mod seeds;

use std::path::Path;
use std::time::{Duration, Instant};

/// Generous: the slowest corpus input takes milliseconds in a release build.
const SLOW: Duration = Duration::from_secs(20);

fn replay(kind: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, body) in targets::TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
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
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{kind}: {replayed} inputs replayed");
}

#[test]
fn seeds_replay_without_panics() {
    replay("seeds");
}

#[test]
fn corpora_replay_without_panics() {
    replay("corpus");
}

#[test]
fn crash_regressions_replay_without_panics() {
    replay("regressions");
}

/// Writes the seed files the corpora started from into `fuzz/seeds/<target>/` (not run by
/// default: `cargo test --release --test fuzz_replay -- --ignored write_fuzz_seeds`).
#[test]
#[ignore]
fn write_fuzz_seeds() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds");
    seeds::write_all(&root)
}
