//! One writer per destination: an advisory lock beside the file or directory being written.
//!
//! # Protocol
//! The lock of destination `DIR/NAME` is the file `DIR/.NAME.lock`, locked exclusively with the
//! operating system's advisory file lock (`flock` on Unix, `LockFileEx` on Windows, through
//! `std::fs::File::try_lock`). The holder writes its process id into it, so that a second
//! writer is refused by name: `OUT is being written by process N`. The kernel releases the
//! lock when its holder exits, however it exits (a `SIGKILL` included), so the lock of a dead
//! process is taken over by the next writer without any staleness heuristic.
//!
//! The holder removes the lock file when it releases the lock. A writer that opened the old
//! lock file and then acquires it checks that the path still names the file it locked
//! (device and inode) and starts again otherwise, so that two writers never hold locks on two
//! different files for one destination.
//!
//! Within one process the lock is re-entrant: [`WriteLock::acquire`] on a destination this
//! process already holds returns a second guard at once (each write still goes through its
//! own temporary file, so threads of one process never tear a file; the last rename wins).
//! The lock is released when the last guard is dropped.
//!
//! Readers take no lock: every write is a rename of a complete file, so a reader sees the old
//! file or the new one (see [`super`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};

/// What a writer does when another process holds the destination's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockWait {
    /// Refuse at once with [`Error::Locked`] naming the holder (the default).
    #[default]
    Refuse,
    /// Block until the holder releases the lock (exits or finishes), then write.
    Wait,
}

/// A lock this process holds, shared by every guard on its destination.
struct Held {
    /// The open, locked lock file (closing it releases the lock).
    file: File,
    lock_path: PathBuf,
    guards: usize,
}

/// How often a waiting writer tries the lock again.
const WAIT_POLL: Duration = Duration::from_millis(20);

fn held() -> MutexGuard<'static, HashMap<PathBuf, Held>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Held>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Exclusive right to write one destination: see the [module docs](self). Released on drop.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct WriteLock {
    key: PathBuf,
}

impl WriteLock {
    /// Takes the write lock of `destination` (a file or a directory, existing or not; its
    /// parent directory must exist). With [`LockWait::Refuse`], fails at once with
    /// [`Error::Locked`] when another process holds it; with [`LockWait::Wait`], blocks until
    /// it is free.
    pub fn acquire(destination: impl AsRef<Path>, wait: LockWait) -> Result<Self> {
        let destination = destination.as_ref();
        let key = lock_key(destination)?;
        let lock_path = lock_path_of(&key);
        loop {
            // Acquisition runs under the registry's mutex: two threads of this process must
            // not both open the lock file, as the second `try_lock` would see the first.
            let mut map = held();
            if let Some(h) = map.get_mut(&key) {
                h.guards += 1;
                return Ok(Self { key });
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(|e| Error::io(&lock_path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => match wait {
                    LockWait::Refuse => {
                        return Err(Error::Locked {
                            path: destination.to_path_buf(),
                            holder: holder_of(&mut file),
                        })
                    }
                    LockWait::Wait => {
                        drop((map, file));
                        std::thread::sleep(WAIT_POLL);
                        continue;
                    }
                },
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
            }
            if !still_named_by(&file, &lock_path) {
                // Its holder removed this lock file as it released it: lock the new one.
                continue;
            }
            // One write of fixed width over whatever a previous holder left: a reader never
            // sees a half-written id.
            let record = (|| {
                file.seek(SeekFrom::Start(0))?;
                file.write_all(format!("{:>10}\n", std::process::id()).as_bytes())?;
                file.set_len(PID_RECORD_LEN)
            })();
            if let Err(e) = record {
                let _ = fs::remove_file(&lock_path);
                return Err(Error::io(&lock_path, e));
            }
            map.insert(
                key.clone(),
                Held {
                    file,
                    lock_path,
                    guards: 1,
                },
            );
            return Ok(Self { key });
        }
    }

    /// The lock file of this guard's destination.
    pub fn lock_path(&self) -> PathBuf {
        lock_path_of(&self.key)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let mut map = held();
        let last = match map.get_mut(&self.key) {
            Some(h) => {
                h.guards -= 1;
                h.guards == 0
            }
            None => false,
        };
        if last {
            if let Some(h) = map.remove(&self.key) {
                // Removed while still locked, then closed: see the module docs.
                let _ = fs::remove_file(&h.lock_path);
                drop(h.file);
            }
        }
    }
}

/// Removes the lock files this process holds, for a process about to exit on a signal (the
/// locks themselves end with the process). Returns how many were removed.
pub(crate) fn remove_held_lock_files() -> usize {
    let map = held();
    map.values()
        .filter(|h| fs::remove_file(&h.lock_path).is_ok())
        .count()
}

/// The absolute path naming `destination` (its parent canonicalised, so that two spellings of
/// one directory give one key).
fn lock_key(destination: &Path) -> Result<PathBuf> {
    let name = destination.file_name().ok_or_else(|| {
        Error::invalid(
            "destination",
            format!("`{}` does not name a file", destination.display()),
        )
    })?;
    let parent = match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent.canonicalize().map_err(|e| Error::io(parent, e))?;
    Ok(parent.join(name))
}

fn lock_path_of(key: &Path) -> PathBuf {
    let name = key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    key.with_file_name(format!(".{name}.lock"))
}

/// The bytes of a lock file: the holder's process id, right-aligned in 10 characters, and a
/// newline.
const PID_RECORD_LEN: u64 = 11;

/// The holder's process id, read from its lock file. A holder that has just taken the lock
/// writes its id a moment later: the read is tried again for up to 100 ms before giving up
/// (`None`: the message then says "another process").
fn holder_of(file: &mut File) -> Option<u32> {
    for _ in 0..20 {
        if let Some(pid) = read_holder(file) {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The process id recorded in a lock file (`None` while its holder has not written it yet).
fn read_holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Whether `path` still names the open `file` (it was not removed and recreated).
#[cfg(unix)]
fn still_named_by(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Elsewhere a lock file cannot be removed while open, so it is never replaced.
#[cfg(not(unix))]
fn still_named_by(_file: &File, _path: &Path) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_reentrant_in_one_process_and_removed_with_its_last_guard() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("post.safetensors");
        let first = WriteLock::acquire(&out, LockWait::Refuse)?;
        let lock_file = first.lock_path();
        assert_eq!(
            fs::read_to_string(&lock_file)?.trim(),
            std::process::id().to_string()
        );
        let second = WriteLock::acquire(&out, LockWait::Refuse)?;
        drop(first);
        assert!(lock_file.exists(), "released before its last guard");
        drop(second);
        assert!(!lock_file.exists());
        assert_eq!(fs::read_dir(root.path())?.count(), 0);
        Ok(())
    }

    #[test]
    fn another_open_file_is_refused_with_the_holder_named() -> anyhow::Result<()> {
        // A second open file description behaves as another process does.
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        let guard = WriteLock::acquire(&out, LockWait::Refuse)?;
        let mut other = OpenOptions::new()
            .read(true)
            .write(true)
            .open(guard.lock_path())?;
        assert!(matches!(
            other.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        assert_eq!(read_holder(&mut other), Some(std::process::id()));
        Ok(())
    }

    #[test]
    fn a_path_without_a_file_name_is_refused_by_name() {
        let err = WriteLock::acquire("/", LockWait::Refuse).map(|_| ());
        assert!(
            matches!(err, Err(Error::InvalidArgument { ref name, .. }) if name == "destination")
        );
    }
}
