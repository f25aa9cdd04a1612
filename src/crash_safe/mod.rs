//! Crash-safe writes: a reader never sees a half-written file or directory, and two writers
//! never mix their output.
//!
//! - **Atomic replacement.** Files are written to a [`Temporary`] sibling with a name unique
//!   to the process and the call, flushed with `fsync`, then renamed over the target (rename is
//!   atomic on POSIX file systems). Directories are built under a temporary sibling and renamed
//!   into place once complete; an existing target directory is replaced only after the new one
//!   is complete (on Linux in one step, `renameat2(RENAME_EXCHANGE)`).
//! - **One writer per destination.** Every write holds the destination's [`WriteLock`] (an
//!   advisory lock on `.NAME.lock` beside it): a second process writing the same destination
//!   is refused at once with [`Error::Locked`], naming the holder's process id, or waits with
//!   [`LockWait::Wait`]. A long job takes the lock itself at its start (as `swag collect` does),
//!   so that a second job is refused before it computes anything.
//! - **Cleanup.** A failed write removes its temporary; a process ending on a signal removes
//!   all of them with [`remove_temporaries_before_exit`]; the temporaries of a killed process
//!   are removed by the next writer of the same destination.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

pub mod lock;
pub mod temporary;

pub use lock::{LockWait, WriteLock};
pub use temporary::{remove_dead_writers_leftovers, remove_temporaries_before_exit, Temporary};

/// Takes the write lock of `destination` (at once if this process holds it already) and
/// removes what killed writers left beside it: how every writer starts.
pub fn lock_destination(destination: &Path, wait: LockWait) -> Result<WriteLock> {
    let guard = WriteLock::acquire(destination, wait)?;
    remove_dead_writers_leftovers(destination);
    Ok(guard)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename), under `path`'s
/// [`WriteLock`].
pub fn write_file_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    write_file_with(path, |f| f.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Writes a file atomically through `fill`, which gets the open temporary file (it may seek):
/// the file is synced and renamed to `path` only when `fill` succeeds, and removed otherwise.
/// The write holds `path`'s [`WriteLock`]: a second process writing `path` meanwhile is
/// refused with [`Error::Locked`].
pub fn write_file_with<F>(path: impl AsRef<Path>, fill: F) -> Result<()>
where
    F: FnOnce(&mut fs::File) -> Result<()>,
{
    let path = path.as_ref();
    let _lock = lock_destination(path, LockWait::Refuse)?;
    let tmp = Temporary::beside(path, "part");
    let mut f = fs::File::create(tmp.path()).map_err(|e| Error::io(path, e))?;
    fill(&mut f)?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    drop(f);
    tmp.commit(path)
}

/// Builds a directory atomically: `fill` writes into a fresh temporary directory, which is renamed
/// to `dir` only when `fill` succeeds. On error the temporary directory is removed and an existing
/// `dir` is left as it was. The write holds `dir`'s [`WriteLock`].
pub fn write_dir_atomic<F>(dir: impl AsRef<Path>, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = dir.as_ref();
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _lock = lock_destination(dir, LockWait::Refuse)?;
    let tmp = Temporary::beside(dir, "dir");
    fs::create_dir_all(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
    fill(tmp.path())?;
    if !dir.exists() {
        return tmp.commit(dir);
    }
    // Linux swaps the two directories in one step: no moment without a report at `dir`. The
    // temporary then holds the previous directory, removed when it is dropped.
    if exchange(tmp.path(), dir).is_ok() {
        temporary::sync_parent(dir);
        return Ok(());
    }
    // Elsewhere (or on a file system without the exchange), two renames: a kill between them
    // leaves the previous directory under its temporary `.old` name beside `dir`.
    let old = Temporary::beside(dir, "old");
    fs::rename(dir, old.path()).map_err(|e| Error::io(dir, e))?;
    if let Err(e) = fs::rename(tmp.path(), dir) {
        let _ = fs::rename(old.path(), dir);
        return Err(Error::io(dir, e));
    }
    temporary::sync_parent(dir);
    Ok(())
}

/// Atomically exchanges two paths (`renameat2` with `RENAME_EXCHANGE`, Linux ≥ 3.15).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (cstr(a)?, cstr(b)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// No atomic exchange here: the caller falls back to two renames.
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_previous_directory_intact() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("run");
        write_dir_atomic(&dir, |d| write_file_atomic(d.join("a.txt"), b"first"))?;
        let err = write_dir_atomic(&dir, |d| {
            write_file_atomic(d.join("a.txt"), b"second")?;
            Err(Error::invalid("test", "interrupted"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(dir.join("a.txt"))?, b"first");
        // No temporary directories are left behind.
        let leftovers: Vec<_> = fs::read_dir(root.path())?.collect();
        assert_eq!(leftovers.len(), 1);
        Ok(())
    }

    #[test]
    fn a_directory_is_replaced_whole_with_nothing_left_beside_it() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("report");
        write_dir_atomic(&dir, |d| write_file_atomic(d.join("old.txt"), b"old"))?;
        write_dir_atomic(&dir, |d| write_file_atomic(d.join("new.txt"), b"new"))?;
        assert_eq!(fs::read(dir.join("new.txt"))?, b"new");
        assert!(!dir.join("old.txt").exists());
        assert_eq!(fs::read_dir(root.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn file_write_replaces_content() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let f = root.path().join("x.bin");
        write_file_atomic(&f, b"one")?;
        write_file_atomic(&f, b"two")?;
        assert_eq!(fs::read(&f)?, b"two");
        Ok(())
    }
}
