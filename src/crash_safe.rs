//! Atomic writes: a reader never sees a half-written file or directory.
//!
//! Files are written to a temporary sibling, flushed with `fsync`, then renamed over the target
//! (rename is atomic on POSIX file systems). Directories are built under a temporary sibling name
//! and renamed into place once complete; an existing target directory is replaced only after the
//! new one is complete.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn temp_sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let unique = format!(
        ".{name}.{tag}-{}-{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(unique),
        _ => PathBuf::from(unique),
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_file_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let tmp = temp_sibling(path, "part");
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Persist the rename itself; failure to open a directory is not fatal on all systems.
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes a file atomically through `fill`, which gets the open temporary file (it may seek):
/// the file is synced and renamed to `path` only when `fill` succeeds, and removed otherwise.
pub fn write_file_with<F>(path: impl AsRef<Path>, fill: F) -> Result<()>
where
    F: FnOnce(&mut fs::File) -> Result<()>,
{
    let path = path.as_ref();
    let tmp = temp_sibling(path, "part");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
    let result = fill(&mut f).and_then(|()| {
        f.sync_all().map_err(|e| Error::io(path, e))?;
        rename_durable(&tmp, path)
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Renames a complete, synced file `from` over `to` (atomic on POSIX file systems), then syncs
/// the directory so that the rename itself survives a power loss (failure to open a directory
/// is not fatal on all systems). A process killed at any moment leaves at `to` the old file or
/// the new one.
pub fn rename_durable(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
    let to = to.as_ref();
    fs::rename(from, to).map_err(|e| Error::io(to, e))?;
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Builds a directory atomically: `fill` writes into a fresh temporary directory, which is renamed
/// to `dir` only when `fill` succeeds. On error the temporary directory is removed and an existing
/// `dir` is left as it was.
pub fn write_dir_atomic<F>(dir: impl AsRef<Path>, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = dir.as_ref();
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_sibling(dir, "dir");
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let had_old = dir.exists();
    // Linux swaps the two directories in one step: no moment without a report at `dir`.
    if had_old && exchange(&tmp, dir).is_ok() {
        let _ = fs::remove_dir_all(&tmp);
        return Ok(());
    }
    // Elsewhere (or on a file system without the exchange), two renames: a kill between them
    // leaves the previous directory under its temporary `.old` name beside `dir`.
    let old = temp_sibling(dir, "old");
    if had_old {
        fs::rename(dir, &old).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            Error::io(dir, e)
        })?;
    }
    if let Err(e) = fs::rename(&tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        let _ = fs::remove_dir_all(&tmp);
        return Err(Error::io(dir, e));
    }
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
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
