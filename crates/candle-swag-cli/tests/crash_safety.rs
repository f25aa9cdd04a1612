//! A `swag collect` killed with SIGKILL at any moment leaves at its destination either the
//! previous complete posterior or the complete new one, byte for byte: never a torn file, never
//! a missing old one. Checked for the disk store (columns written into a temporary sibling, saved in
//! place, renamed over `--out`) and the in-memory store (`SwagPosterior::save`: temporary file,
//! fsync, rename), at kill times spread over a whole run.
#![cfg(unix)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

/// Kills per store. Each kill costs about one run of the command (a fraction of a second).
const KILLS: usize = 24;

fn snapshot(path: &Path, k: usize, n: usize) -> candle_core::Result<()> {
    let w: Vec<f32> = (0..n)
        .map(|i| ((i * 7 + k * 13) % 101) as f32 / 50.0 - 1.0 + k as f32 * 1e-3)
        .collect();
    let mut m = HashMap::new();
    m.insert(
        "layer.weight".to_string(),
        Tensor::from_vec(w, n, &Device::Cpu)?,
    );
    m.insert(
        "layer.bias".to_string(),
        Tensor::from_vec(vec![k as f32; 8], 8, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&m, path)
}

fn collect_args<'a>(store: &'a str, out: &'a str, snaps: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["collect", "--rank", "5", "--store", store, "--out", out];
    args.extend(snaps.iter().map(String::as_str));
    args
}

fn run_to_end(args: &[&str]) -> Result<Duration, String> {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_swag"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(t.elapsed())
}

#[test]
fn a_killed_collect_leaves_the_old_or_the_new_posterior() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    // 12 snapshots of 400k parameters: a run long enough to be killed in every phase.
    let snaps: Vec<String> = (0..12).map(|k| p(&format!("s{k}.safetensors"))).collect();
    for (k, s) in snaps.iter().enumerate() {
        snapshot(Path::new(s), k, 400_000)?;
    }
    // A tiny deterministic generator for the kill times (no dependency, reproducible).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for store in ["disk", "device"] {
        // The previous posterior (3 snapshots) and the new one (all 12), each run to the end.
        let (old_path, new_path) = (p(&format!("old-{store}.st")), p(&format!("new-{store}.st")));
        run_to_end(&collect_args(store, &old_path, &snaps[..3]))?;
        let full = run_to_end(&collect_args(store, &new_path, &snaps))?;
        let (old, new) = (std::fs::read(&old_path)?, std::fs::read(&new_path)?);
        assert_ne!(old, new);
        let out = p(&format!("out-{store}.st"));
        let (mut saw_old, mut saw_new) = (0, 0);
        for kill in 0..KILLS {
            std::fs::copy(&old_path, &out)?;
            // Kill times spread over 0..1.5 × a full run; the first kill comes at once and the
            // last run is left to finish, so both outcomes are exercised whatever the timing.
            let at = match kill {
                0 => Duration::ZERO,
                k if k + 1 == KILLS => full * 20,
                _ => Duration::from_micros(next() % (full.as_micros() as u64 * 3 / 2 + 1)),
            };
            let mut child = Command::new(env!("CARGO_BIN_EXE_swag"))
                .args(collect_args(store, &out, &snaps))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let started = Instant::now();
            while started.elapsed() < at && child.try_wait()?.is_none() {
                std::thread::sleep(Duration::from_micros(200).min(at));
            }
            let _ = child.kill(); // SIGKILL on unix; an error means it had already exited
            child.wait()?;
            let now = std::fs::read(&out)
                .map_err(|e| format!("{store}, kill {kill} at {at:?}: destination missing: {e}"))?;
            if now == old {
                saw_old += 1;
            } else if now == new {
                saw_new += 1;
            } else {
                return Err(format!(
                    "{store}, kill {kill} at {at:?}: the destination is neither the old nor the new posterior ({} bytes)",
                    now.len()
                )
                .into());
            }
        }
        eprintln!("{store}: {saw_old} kills left the old posterior, {saw_new} the new one");
        // Both outcomes happen: the kills really landed before and after the rename.
        assert!(
            saw_old > 0 && saw_new > 0,
            "{store}: old {saw_old}, new {saw_new}"
        );
    }
    Ok(())
}

/// A directory's files, by name, with their bytes.
type DirContents = Vec<(String, Vec<u8>)>;

/// Every file of a report directory (`None`: the directory is absent).
fn dir_contents(dir: &Path) -> std::io::Result<Option<DirContents>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        files.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path())?,
        ));
    }
    files.sort();
    Ok(Some(files))
}

/// `swag report` builds the report in a temporary sibling directory and renames it over `--out`
/// (the previous report is moved aside first and removed after): a kill at any moment leaves
/// the previous complete report or the complete new one, file for file and byte for byte.
#[test]
fn a_killed_report_leaves_the_old_or_the_new_report() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    // 60k rows of 10-class probabilities: long enough to kill in every phase.
    let (rows, classes) = (60_000, 10);
    let mut probs = (0..classes)
        .map(|k| format!("prob_{k}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut labels = String::from("label\n");
    probs.push('\n');
    for i in 0..rows {
        let w: Vec<f64> = (0..classes)
            .map(|k| 1.0 + ((i * 31 + k * 17) % 97) as f64)
            .collect();
        let s: f64 = w.iter().sum();
        let row: Vec<String> = w.iter().map(|x| format!("{:.6}", x / s)).collect();
        probs.push_str(&row.join(","));
        probs.push('\n');
        labels.push_str(&format!("{}\n", (i * 7) % classes));
    }
    std::fs::write(p("p.csv"), probs)?;
    std::fs::write(p("y.csv"), labels)?;
    let report = |method: &'static str, out: String| {
        vec![
            "report".to_string(),
            "--probs".to_string(),
            p("p.csv"),
            "--method".to_string(),
            method.to_string(),
            "--labels".to_string(),
            p("y.csv"),
            "--out".to_string(),
            out,
        ]
    };
    let as_str = |v: &[String]| {
        v.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\u{0}")
    };
    let run = |args: Vec<String>| run_to_end(&as_str(&args).split('\u{0}').collect::<Vec<_>>());
    run(report("OLD", p("old")))?;
    let full = run(report("NEW", p("new")))?;
    let old = dir_contents(Path::new(&p("old")))?.ok_or("old report missing")?;
    let new = dir_contents(Path::new(&p("new")))?.ok_or("new report missing")?;
    assert_ne!(old, new);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let out = p("out");
    let (mut saw_old, mut saw_new) = (0, 0);
    for kill in 0..KILLS {
        let _ = std::fs::remove_dir_all(&out);
        run(report("OLD", out.clone()))?;
        let at = match kill {
            0 => Duration::ZERO,
            k if k + 1 == KILLS => full * 20,
            _ => Duration::from_micros(next() % (full.as_micros() as u64 * 3 / 2 + 1)),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_swag"))
            .args(report("NEW", out.clone()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        while started.elapsed() < at && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_micros(200).min(at));
        }
        let _ = child.kill();
        child.wait()?;
        match dir_contents(Path::new(&out))? {
            Some(now) if now == old => saw_old += 1,
            Some(now) if now == new => saw_new += 1,
            Some(now) => {
                return Err(format!(
                "kill {kill} at {at:?}: the report is neither the old nor the new one ({} files)",
                now.len()
            )
                .into())
            }
            None => {
                return Err(
                    format!("kill {kill} at {at:?}: the report directory is missing").into(),
                )
            }
        }
    }
    eprintln!("report: {saw_old} kills left the old report, {saw_new} the new one");
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
    Ok(())
}
