//! One test per input that crashed (panicked or allocated without bound) a fuzz target:
//! the input is in `fuzz/regressions/<target>/` and must now give the specific error named
//! here. `tests/fuzz_replay.rs` replays the same files through the fuzz targets themselves.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_swag::layout::ParamLayout;
use candle_swag::swag::{DeviationStore, ShardIndex, SwagPosterior};
use candle_swag::{Error, Result};
use candle_swag_cli::train::run::LoadedRun;
use candle_swag_report::io::{read_input, InputSource, Role};

/// The separator of multi-file fuzz inputs (`fuzz/src/targets.rs`).
const PART_SEPARATOR: &[u8] = b"\x00--swag-fuzz-part--\x00";

fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `bytes` to `name` in a fresh directory.
fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error, checked to be a `BadFile` whose reason contains `needle`.
fn assert_bad_file<T>(result: Result<T>, needle: &str) {
    match result {
        Err(Error::BadFile { reason, .. }) => {
            assert!(reason.contains(needle), "`{reason}` lacks `{needle}`")
        }
        Err(other) => panic!("expected a bad-file error with `{needle}`, got {other}"),
        Ok(_) => panic!("expected a bad-file error with `{needle}`, got Ok"),
    }
}

#[test]
fn layout_shape_whose_element_count_overflows_is_refused() -> Result<()> {
    let err = ParamLayout::new(vec![("w".into(), vec![1 << 32, 1 << 32, 16])]).unwrap_err();
    assert!(
        matches!(&err, Error::LayoutMismatch(m) if m.contains("`w`") && m.contains("overflows usize")),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "p.safetensors",
        &regression("posterior_file", "layout_shape_overflow"),
    );
    assert_bad_file(SwagPosterior::load(&path, &Device::Cpu), "overflows usize");
    Ok(())
}

#[test]
fn posterior_rank_claiming_unstored_columns_is_refused_before_allocating() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    for name in ["v3_rank_1e12", "v1_rank_1e12"] {
        let path = write(&dir, name, &regression("posterior_file", name));
        let needle = "rank K = 1000000000000 with only";
        assert_bad_file(SwagPosterior::load(&path, &Device::Cpu), needle);
        assert_bad_file(
            SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Host),
            needle,
        );
    }
    let path = dir.path().join("v3_rank_1e12");
    assert_bad_file(
        SwagPosterior::load_with_store(&path, &Device::Cpu, DeviationStore::Disk(path.clone())),
        "rank K = 1000000000000",
    );
    Ok(())
}

#[test]
fn npy_and_npz_headers_claiming_more_than_the_file_are_refused() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "npy_shape_1e12",
            "npy",
            "needs 8000000000000 bytes, the file holds 8",
        ),
        ("npy_shape_overflow", "npy", "overflows"),
        (
            "npy_v2_header_4gib",
            "npy",
            "the header claims 4294967295 bytes",
        ),
        (
            "npz_shape_1e12",
            "npz",
            "entry `probs.npy`: shape [1000000000000]",
        ),
    ];
    for (name, ext, needle) in cases {
        // The fuzz input's first two bytes choose the format and role (fuzz/src/targets.rs).
        let bytes = regression("array_input", name);
        let path = write(&dir, &format!("{name}.{ext}"), &bytes[2..]);
        assert_bad_file(
            read_input(&InputSource::new(&path), Role::Probabilities),
            needle,
        );
    }
    Ok(())
}

#[test]
fn shard_index_whose_ranges_overflow_is_refused() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "index.json",
        &regression("shard_index", "params_overflow"),
    );
    assert_bad_file(
        ShardIndex::load(&path),
        "claims 18446744073709551615 parameters from parameter 1",
    );
    Ok(())
}

#[test]
fn run_config_with_widths_the_weights_cannot_hold_is_refused() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let bytes = regression("run_dir", "hidden_1e6x1e6");
    let names = [
        "config.json",
        "weights.safetensors",
        "posterior.safetensors",
    ];
    let mut rest = bytes.as_slice();
    for name in names {
        let end = rest
            .windows(PART_SEPARATOR.len())
            .position(|w| w == PART_SEPARATOR)
            .unwrap_or(rest.len());
        write(&dir, name, &rest[..end]);
        rest = &rest[(end + PART_SEPARATOR.len()).min(rest.len())..];
    }
    assert_bad_file(
        LoadedRun::load(dir.path(), &Device::Cpu),
        "has 1000006000000 weights, but",
    );
    Ok(())
}

#[test]
fn shard_starting_past_the_layout_or_overlapping_in_an_empty_one_is_refused() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "past.json",
        &regression("shard_index", "shard_past_the_layout"),
    );
    assert_bad_file(
        ShardIndex::load(&path),
        "shard `shard1.safetensors` starts at parameter 5, past the layout's 1 parameters",
    );
    let path = write(
        &dir,
        "empty.json",
        &regression("shard_index", "overlap_in_empty_layout"),
    );
    assert_bad_file(
        ShardIndex::load(&path),
        "shard `shard1.safetensors` overlaps the one before it at parameter 0",
    );
    Ok(())
}
