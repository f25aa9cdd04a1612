//! Two writers never corrupt an output: four `swag` processes started at once on one
//! destination, for each kind of writer (disk and in-memory collect, sample, fit's run
//! directory, report directory), round after round: one finishes, the others are refused at
//! once by name, and the destination is always one writer's complete output. Also: a lock left
//! by a killed writer is taken over, `--wait` waits, and SIGINT / SIGTERM at random moments
//! remove every temporary and exit with 130 / 143.
#![cfg(unix)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Rounds of four writers per kind of writer (the protocol: 4 processes, 20 rounds).
const ROUNDS: usize = 20;
const WRITERS: usize = 4;

fn swag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_swag"))
}

fn snapshot(path: &Path, k: usize, n: usize) -> candle_core::Result<()> {
    let w: Vec<f32> = (0..n)
        .map(|i| ((i * 7 + k * 13) % 101) as f32 / 50.0 - 1.0 + k as f32 * 1e-3)
        .collect();
    let mut m = HashMap::new();
    m.insert(
        "layer.weight".to_string(),
        Tensor::from_vec(w, n, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&m, path)
}

/// Snapshots large enough that one collect holds its lock for a good part of a second, so that
/// four processes started together overlap.
fn snapshots(dir: &Path) -> Result<Vec<String>, candle_core::Error> {
    (0..8)
        .map(|k| {
            let p = dir.join(format!("s{k}.safetensors"));
            snapshot(&p, k, 300_000)?;
            Ok(p.to_string_lossy().into_owned())
        })
        .collect()
}

/// Starts the `WRITERS` commands at once and waits for all of them.
fn race(commands: Vec<Command>) -> std::io::Result<Vec<Output>> {
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn())
        .collect::<std::io::Result<_>>()?;
    children.into_iter().map(Child::wait_with_output).collect()
}

/// Checks one round: at least one writer succeeded, every other was refused with the one-line
/// lock error naming the destination and a process; returns the indices of the successes.
fn winners(outputs: &[Output], destination: &Path) -> Result<Vec<usize>, String> {
    let mut won = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            won.push(i);
            continue;
        }
        let lines: Vec<&str> = stderr.lines().collect();
        let expected = format!(
            "error: {}: is being written by process ",
            destination.display()
        );
        if lines.len() != 1 || !lines[0].starts_with(&expected) {
            return Err(format!(
                "writer {i} failed otherwise than refused: {stderr}"
            ));
        }
    }
    if won.is_empty() {
        return Err("every writer was refused".into());
    }
    Ok(won)
}

/// No temporary or lock file beside the destinations in `dir`, only the `keep` names.
fn assert_no_leftovers(dir: &Path, keep: &[&str]) -> TestResult {
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            return Err(format!("left behind in {}: {name}", dir.display()).into());
        }
        if !keep.iter().any(|k| name == *k || name.starts_with(k)) {
            return Err(format!("unexpected file {name}").into());
        }
    }
    Ok(())
}

/// Runs `ROUNDS` races of the commands `make(i)` on `destination`, and checks each round's
/// destination with `check(winners, round)`. Returns how many writers were refused in all.
fn rounds(
    destination: &Path,
    make: impl Fn(usize) -> Command,
    check: impl Fn(&[usize]) -> Result<(), String>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut refused = 0;
    for round in 0..ROUNDS {
        let outputs = race((0..WRITERS).map(&make).collect())?;
        let won = winners(&outputs, destination).map_err(|e| format!("round {round}: {e}"))?;
        check(&won).map_err(|e| format!("round {round}: {e}"))?;
        refused += WRITERS - won.len();
    }
    Ok(refused)
}

/// Asserts that contention really happened: most writers were refused (with a writer holding
/// its lock for a good part of a second, four processes started together overlap).
fn assert_contended(kind: &str, refused: usize) {
    eprintln!("{kind}: {refused} of {} writers refused", ROUNDS * WRITERS);
    assert!(
        refused >= ROUNDS * (WRITERS - 1) / 2,
        "{kind}: only {refused} writers refused: the writers did not overlap"
    );
}

fn collect_command(store: &str, rank: usize, out: &Path, snaps: &[String]) -> Command {
    let mut c = swag();
    c.args(["collect", "--store", store, "--rank", &rank.to_string()])
        .arg("--out")
        .arg(out)
        .args(snaps);
    c
}

#[test]
fn four_collects_on_one_posterior_one_wins_and_the_file_is_complete() -> TestResult {
    let dir = tempfile::tempdir()?;
    let snaps = snapshots(dir.path())?;
    for store in ["disk", "device"] {
        let work = dir.path().join(store);
        std::fs::create_dir(&work)?;
        // Writer i keeps rank 2 + i: each writes a different posterior, known beforehand.
        let expected: Vec<Vec<u8>> = (0..WRITERS)
            .map(|i| {
                let p = work.join(format!("expected-{i}.st"));
                let o = collect_command(store, 2 + i, &p, &snaps).output()?;
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                std::fs::read(&p)
            })
            .collect::<std::io::Result<_>>()?;
        let out = work.join("out.st");
        std::fs::write(&out, &expected[0])?;
        let refused = rounds(
            &out,
            |i| collect_command(store, 2 + i, &out, &snaps),
            |won| {
                let now = std::fs::read(&out).map_err(|e| e.to_string())?;
                // Each winner renamed a complete file; the last rename is what stays.
                if won.iter().any(|&i| now == expected[i]) {
                    Ok(())
                } else {
                    Err(format!(
                        "{store}: the posterior is no winner's ({} bytes)",
                        now.len()
                    ))
                }
            },
        )?;
        assert_contended(&format!("collect --store {store}"), refused);
        assert_no_leftovers(&work, &["expected-", "out.st"])?;
    }
    Ok(())
}

#[test]
fn four_samples_into_one_file_one_wins_and_the_file_is_complete() -> TestResult {
    let dir = tempfile::tempdir()?;
    let snaps = snapshots(dir.path())?;
    let post = dir.path().join("post.st");
    assert!(collect_command("device", 5, &post, &snaps)
        .status()?
        .success());
    let sample = |seed: usize, out: &Path| {
        let mut c = swag();
        c.args(["sample", "--seed", &seed.to_string()])
            .arg("--posterior")
            .arg(&post)
            .arg("--out")
            .arg(out);
        c
    };
    let work = dir.path().join("samples");
    std::fs::create_dir(&work)?;
    let expected: Vec<Vec<u8>> = (0..WRITERS)
        .map(|i| {
            let p = work.join(format!("expected-{i}.st"));
            assert!(sample(i, &p).status()?.success());
            std::fs::read(&p)
        })
        .collect::<std::io::Result<_>>()?;
    let out = work.join("out.st");
    let refused = rounds(
        &out,
        |i| sample(i, &out),
        |won| {
            let now = std::fs::read(&out).map_err(|e| e.to_string())?;
            won.iter()
                .any(|&i| now == expected[i])
                .then_some(())
                .ok_or_else(|| "the sample is no winner's".to_string())
        },
    )?;
    // A sample is quick: contention is likely but not certain; refusals were checked above.
    eprintln!("sample: {refused} of {} writers refused", ROUNDS * WRITERS);
    assert_no_leftovers(&work, &["expected-", "out.st"])?;
    Ok(())
}

/// A small classification table: `x0, x1, label`.
fn table(path: &Path) -> std::io::Result<()> {
    let mut csv = String::from("x0,x1,label\n");
    for i in 0..400 {
        let (a, b) = (
            (i * 37 % 101) as f32 / 50.0 - 1.0,
            (i * 53 % 97) as f32 / 48.0 - 1.0,
        );
        csv += &format!("{a},{b},{}\n", usize::from(a + 0.5 * b > 0.0));
    }
    std::fs::write(path, csv)
}

#[test]
fn four_fits_into_one_run_directory_one_wins_and_the_run_is_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("t.csv");
    table(&data)?;
    let run = dir.path().join("run");
    let fit = |seed: usize| {
        let mut c = swag();
        c.args(["fit", "--target", "label", "--task", "classification"])
            .args(["--epochs", "150", "--no-tune", "--seed", &seed.to_string()])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run);
        c
    };
    let refused = rounds(&run, fit, |won| {
        // The run directory is one winner's: its config names that writer's seed, and every
        // file of a run is there.
        let config = std::fs::read_to_string(run.join("config.json")).map_err(|e| e.to_string())?;
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let seed = config
            .pointer("/fit/train/seed")
            .and_then(serde_json::Value::as_u64)
            .ok_or("config.json has no seed")?;
        if !won.contains(&(seed as usize)) {
            return Err(format!("the run is seed {seed}'s, a refused writer"));
        }
        let files = std::fs::read_dir(&run).map_err(|e| e.to_string())?.count();
        (files >= 3)
            .then_some(())
            .ok_or(format!("only {files} files in the run"))
    })?;
    assert_contended("fit", refused);
    assert_no_leftovers(dir.path(), &["t.csv", "run"])?;
    Ok(())
}

#[test]
fn four_reports_into_one_directory_one_wins_and_the_report_is_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Probabilities of 2000 rows, 10 classes, and their labels, as CSV.
    let (mut probs, mut labels) = (String::new(), String::from("label\n"));
    probs += &(0..10)
        .map(|c| format!("p{c}"))
        .collect::<Vec<_>>()
        .join(",");
    probs.push('\n');
    for i in 0..2000usize {
        let hot = i % 10;
        let row: Vec<String> = (0..10)
            .map(|c| {
                if c == hot {
                    "0.91".into()
                } else {
                    "0.01".into()
                }
            })
            .collect();
        probs += &row.join(",");
        probs.push('\n');
        labels += &format!("{}\n", (i * 7) % 10);
    }
    let (p, l) = (dir.path().join("probs.csv"), dir.path().join("labels.csv"));
    std::fs::write(&p, probs)?;
    std::fs::write(&l, labels)?;
    let out = dir.path().join("report");
    let report = |i: usize| {
        let mut c = swag();
        c.arg("report")
            .arg("--probs")
            .arg(&p)
            .args(["--method", &format!("writer{i}")])
            .arg("--labels")
            .arg(&l)
            .arg("--out")
            .arg(&out);
        c
    };
    let refused = rounds(&out, report, |won| {
        let html = std::fs::read_to_string(out.join("report.html")).map_err(|e| e.to_string())?;
        let json = std::fs::read_to_string(out.join("metrics.json")).map_err(|e| e.to_string())?;
        // Both files are the same writer's, and that writer won.
        let owner = (0..WRITERS)
            .find(|i| json.contains(&format!("writer{i}")))
            .ok_or("metrics.json names no writer")?;
        if !won.contains(&owner) || !html.contains(&format!("writer{owner}")) {
            return Err(format!(
                "the report mixes or names a refused writer ({owner})"
            ));
        }
        Ok(())
    })?;
    eprintln!("report: {refused} of {} writers refused", ROUNDS * WRITERS);
    assert_no_leftovers(dir.path(), &["probs.csv", "labels.csv", "report"])?;
    Ok(())
}

#[test]
fn a_killed_writers_lock_is_taken_over_and_its_leftovers_removed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let snaps = snapshots(dir.path())?;
    let out = dir.path().join("out.st");
    let mut child = collect_command("disk", 5, &out, &snaps)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Wait until it has taken the lock and started its temporary, then kill it outright.
    let lock = dir.path().join(".out.st.lock");
    let started = Instant::now();
    while !(lock.exists() && has_temporary(dir.path(), "out.st")?) {
        if started.elapsed() > Duration::from_secs(20) || child.try_wait()?.is_some() {
            return Err("the collect never showed its lock and temporary".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill()?;
    child.wait()?;
    assert!(
        lock.exists(),
        "a killed process cannot remove its lock file"
    );
    let o = collect_command("disk", 5, &out, &snaps).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "leftovers of the killed writer remain: {names:?}"
    );
    Ok(())
}

fn has_temporary(dir: &Path, name: &str) -> std::io::Result<bool> {
    let prefix = format!(".{name}.partial-");
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
}

#[test]
fn with_wait_a_second_writer_waits_for_the_first_and_then_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let snaps = snapshots(dir.path())?;
    let out = dir.path().join("out.st");
    let first = collect_command("disk", 3, &out, &snaps)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let lock = dir.path().join(".out.st.lock");
    let started = Instant::now();
    while !lock.exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let second = collect_command("disk", 4, &out, &snaps)
        .arg("--wait")
        .output()?;
    let first = first.wait_with_output()?;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // The waiting writer wrote last: its rank-4 posterior is what remains.
    let expected = dir.path().join("expected.st");
    assert!(collect_command("disk", 4, &expected, &snaps)
        .status()?
        .success());
    assert_eq!(std::fs::read(&out)?, std::fs::read(&expected)?);
    Ok(())
}

/// Sends `signal` to a running `swag collect --store disk` at moments spread over a whole run:
/// each ends with status 128 + signal (or 0 when it finished first), leaves no temporary and
/// no lock file, and leaves the old posterior or the complete new one.
fn interrupted_collects(signal: i32, expected_status: i32) -> TestResult {
    let dir = tempfile::tempdir()?;
    let snaps = snapshots(dir.path())?;
    let (old_path, new_path) = (dir.path().join("old.st"), dir.path().join("new.st"));
    assert!(collect_command("disk", 5, &old_path, &snaps[..2])
        .status()?
        .success());
    let t = Instant::now();
    assert!(collect_command("disk", 5, &new_path, &snaps)
        .status()?
        .success());
    let full = t.elapsed();
    let (old, new) = (std::fs::read(&old_path)?, std::fs::read(&new_path)?);
    let work: PathBuf = dir.path().join("work");
    std::fs::create_dir(&work)?;
    let out = work.join("out.st");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ signal as u64;
    let (mut interrupted, mut finished) = (0, 0);
    for round in 0..12 {
        std::fs::copy(&old_path, &out)?;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Moments over 0.1..1.2 × a full run (the process needs a moment to install its handler).
        let at = full / 10 + Duration::from_micros(state % (full.as_micros() as u64 * 11 / 10 + 1));
        let mut child = collect_command("disk", 5, &out, &snaps)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        while started.elapsed() < at && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc_kill(child.id() as i32, signal) };
        let status = child.wait()?;
        match status.code() {
            Some(0) => finished += 1,
            Some(c) if c == expected_status => interrupted += 1,
            other => return Err(format!("round {round}: exit status {other:?}").into()),
        }
        let now = std::fs::read(&out)?;
        if now != old && now != new {
            return Err(format!("round {round}: the posterior is neither old nor new").into());
        }
        assert_no_leftovers(&work, &["out.st"]).map_err(|e| format!("round {round}: {e}"))?;
    }
    eprintln!("signal {signal}: {interrupted} interrupted, {finished} finished first");
    assert!(interrupted > 0, "no signal landed during a run");
    Ok(())
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn sigterm_during_a_disk_collect_removes_the_temporary_and_exits_143() -> TestResult {
    interrupted_collects(15, 143)
}

#[test]
fn sigint_during_a_disk_collect_removes_the_temporary_and_exits_130() -> TestResult {
    interrupted_collects(2, 130)
}
