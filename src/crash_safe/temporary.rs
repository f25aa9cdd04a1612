//! Temporary siblings: the files and directories a write fills before renaming them into place.
//!
//! # Names
//! The temporary of destination `DIR/NAME` is `DIR/.NAME.TAG-PID-NANOS-SEQ.tmp`: unique per
//! process (`PID`), per moment (`NANOS`) and per call (`SEQ`, a process-wide counter), so that
//! no two writers ever fill one file.
//!
//! # Cleanup
//! - A [`Temporary`] dropped without [`Temporary::commit`] (an error, a panic) removes its file
//!   or directory.
//! - Every live temporary is registered, so that a process ending on a signal removes them all
//!   with [`remove_temporaries_before_exit`] (the `swag` binary does so on SIGINT and SIGTERM).
//! - A process killed outright (SIGKILL, power loss) leaves its temporaries behind; the next
//!   writer of the same destination removes those of processes that no longer run
//!   ([`remove_dead_writers_leftovers`], Linux), once it holds the destination's
//!   [`WriteLock`](super::WriteLock).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::error::{Error, Result};

/// The temporaries alive in this process.
fn registry() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    static REGISTRY: OnceLock<Mutex<BTreeSet<PathBuf>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A temporary sibling of a destination, removed on drop unless committed: see the
/// [module docs](self).
#[derive(Debug)]
#[must_use = "a temporary is removed when dropped"]
pub struct Temporary {
    path: PathBuf,
    committed: bool,
}

impl Temporary {
    /// Names and registers a new temporary beside `destination` (nothing is created on disk:
    /// the caller creates the file or directory at [`Temporary::path`]). `tag` says what it is
    /// (`part`, `dir`, `partial`...): letters only.
    pub fn beside(destination: &Path, tag: &str) -> Self {
        let path = sibling_name(destination, tag);
        registry().insert(path.clone());
        Self {
            path,
            committed: false,
        }
    }

    /// Where to create the temporary file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the complete temporary over `destination` (atomic on POSIX file systems), then
    /// syncs the directory so that the rename itself survives a power loss. The rename happens
    /// under the registry's lock, so a signal's cleanup never removes a file in the middle of
    /// its commit: it runs before (the temporary is removed, `destination` untouched) or after
    /// (the new file is in place).
    pub fn commit(mut self, destination: &Path) -> Result<()> {
        let mut reg = registry();
        fs::rename(&self.path, destination).map_err(|e| Error::io(destination, e))?;
        reg.remove(&self.path);
        self.committed = true;
        drop(reg);
        sync_parent(destination);
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut reg = registry();
        remove_path(&self.path);
        reg.remove(&self.path);
    }
}

/// Removes every live temporary of this process and the lock files it holds: for a process
/// about to exit on a signal. It waits for a commit in progress to finish, then keeps the
/// registry locked for good, so that no write of this process starts or commits afterwards
/// (they block): **exit right after it**. Returns how many temporaries were removed.
///
/// Call it from a signal-handling thread (not from inside a signal handler). The `swag` binary
/// does, then exits with status 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
pub fn remove_temporaries_before_exit() -> usize {
    let mut reg = registry();
    let removed = reg.iter().filter(|p| remove_path(p)).count();
    reg.clear();
    super::lock::remove_held_lock_files();
    std::mem::forget(reg);
    removed
}

/// Removes the temporaries left beside `destination` by writers that no longer run (killed
/// before they could clean up). Call it while holding the destination's
/// [`WriteLock`](super::WriteLock): every live writer of `destination` holds that lock, so no
/// temporary of a running writer of another process can be removed. Linux only (it asks
/// `/proc` whether a process runs); elsewhere it removes nothing. Returns how many it removed.
pub fn remove_dead_writers_leftovers(destination: &Path) -> usize {
    let Some(name) = destination.file_name().map(|n| n.to_string_lossy()) else {
        return 0;
    };
    let dir = match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!(".{name}.");
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let file = e.file_name();
            let file = file.to_string_lossy();
            // A temporary, or the lock file of one (a disk posterior locks its own file).
            let rest = file.strip_prefix(&prefix).or_else(|| {
                file.strip_prefix('.')?
                    .strip_prefix(&prefix)?
                    .strip_suffix(".lock")
            });
            rest.and_then(writer_pid)
                .is_some_and(|pid| pid != std::process::id() && !process_runs(pid))
        })
        .filter(|e| remove_path(&e.path()))
        .count()
}

/// The writer's process id in a temporary's name after its `.NAME.` prefix
/// (`TAG-PID-NANOS-SEQ.tmp`), or `None` when the name is not a temporary's.
fn writer_pid(rest: &str) -> Option<u32> {
    let stem = rest.strip_suffix(".tmp")?;
    let mut fields = stem.rsplitn(4, '-');
    let (seq, nanos, pid, tag) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let letters = !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_lowercase());
    (letters && digits(seq) && digits(nanos) && digits(pid))
        .then(|| pid.parse().ok())
        .flatten()
}

#[cfg(target_os = "linux")]
fn process_runs(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without `/proc`, every writer is assumed alive: nothing is removed.
#[cfg(not(target_os = "linux"))]
fn process_runs(_pid: u32) -> bool {
    true
}

fn sibling_name(destination: &Path, tag: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = destination
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let unique = format!(
        ".{name}.{tag}-{}-{nanos}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(unique),
        _ => PathBuf::from(unique),
    }
}

/// Removes a file or a directory tree; true when something was removed.
fn remove_path(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).is_ok(),
        Ok(_) => fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

/// Persists a rename: syncs the parent directory (failure to open a directory is not fatal
/// on all systems).
pub(super) fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_parse_back_to_their_writer() {
        let t = sibling_name(Path::new("/x/post.safetensors"), "partial");
        let name = t.file_name().map(|n| n.to_string_lossy().into_owned());
        let rest = name
            .as_deref()
            .and_then(|n| n.strip_prefix(".post.safetensors."));
        assert_eq!(rest.and_then(writer_pid), Some(std::process::id()));
        // Names that are not temporaries are never taken for one.
        for other in [
            "lock",
            "partial-1-2.tmp",
            "partial-1-2-3.tmpx",
            "Part-1-2-3.tmp",
            "part-1-x-3.tmp",
            "part--2-3.tmp",
        ] {
            assert_eq!(writer_pid(other), None, "{other}");
        }
        assert_eq!(writer_pid("dir-42-7-0.tmp"), Some(42));
    }

    #[test]
    fn a_dropped_temporary_is_removed_and_a_committed_one_kept() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("out.bin");
        let t = Temporary::beside(&out, "part");
        fs::write(t.path(), b"half")?;
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());
        let t = Temporary::beside(&out, "dir");
        fs::create_dir(t.path())?;
        fs::write(t.path().join("f"), b"x")?;
        t.commit(&out)?;
        assert_eq!(fs::read(out.join("f"))?, b"x");
        assert_eq!(fs::read_dir(root.path())?.count(), 1);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn leftovers_of_dead_writers_are_removed_and_live_ones_kept() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("post.st");
        // A process id that cannot run: above the kernel's maximum.
        let dead = root.path().join(".post.st.partial-4294967295-1-0.tmp");
        let dead_dir = root.path().join(".post.st.dir-4294967294-1-0.tmp");
        let dead_lock = root
            .path()
            .join("..post.st.partial-4294967295-1-0.tmp.lock");
        let mine = root
            .path()
            .join(format!(".post.st.part-{}-1-0.tmp", std::process::id()));
        let other_dest = root.path().join(".other.partial-4294967295-1-0.tmp");
        let unrelated = root.path().join(".post.st.notes");
        fs::write(&dead, b"x")?;
        fs::write(&dead_lock, b"")?;
        fs::create_dir(&dead_dir)?;
        for p in [&mine, &other_dest, &unrelated] {
            fs::write(p, b"x")?;
        }
        assert_eq!(remove_dead_writers_leftovers(&out), 3);
        assert!(!dead.exists() && !dead_dir.exists() && !dead_lock.exists());
        assert!(mine.exists() && other_dest.exists() && unrelated.exists());
        Ok(())
    }
}
