//! Files that appear whole or not at all.
//!
//! A state stream written to a path, a helper's state file replaced by a
//! `Load`: a reader must never see half of one, and a failure must leave the
//! previous file untouched. [`AtomicFile`] writes into a temporary file in the
//! same directory (so the final rename stays within one file system), and
//! [`AtomicFile::commit`] syncs it, renames it over the path and syncs the
//! directory, so the new file survives a crash once `commit` returns.
//! Dropped without `commit`, the temporary file is removed.
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! use std::io::Write;
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("helpers.vmstate");
//! let mut file = dbus_vmstate::atomic::AtomicFile::create(&path)?;
//! file.write_all(b"state")?;
//! assert!(!path.exists()); // nothing at the path until commit
//! file.commit()?;
//! assert_eq!(std::fs::read(&path)?, b"state");
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written beside `path`, renamed over it by
/// [`AtomicFile::commit`]; removed if dropped before.
#[derive(Debug)]
pub struct AtomicFile {
    temp: NamedTempFile,
    path: PathBuf,
}

/// The directory a path's file lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `e` without the temporary file's name, which `tempfile` appends ("at
/// path .../.NAME.XXXXXX.tmp"): the caller names the file it means, and
/// the temporary name is gone by the time anyone reads the error.
fn without_temp_path(e: io::Error) -> io::Error {
    // tempfile's wrapper hides the inner error (its `source` is the inner
    // error's own source), so the name is cut off its text; a test checks
    // the form.
    let text = e.to_string();
    let Some(at) = text.rfind(" at path \"") else {
        return e;
    };
    let head = &text[..at];
    let code = head
        .strip_suffix(')')
        .and_then(|h| h.rsplit_once("(os error "))
        .and_then(|(_, n)| n.parse::<i32>().ok());
    match code {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), head.to_string()),
    }
}

impl AtomicFile {
    /// Creates the temporary file, named `.NAME.XXXXXX.tmp` in the
    /// directory of `path`, mode 0600.
    ///
    /// # Errors
    ///
    /// When `path` has no file name, or the directory refuses a new file.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a file name", path.display()),
            )
        })?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(parent_of(path))
            .map_err(without_temp_path)?;
        Ok(AtomicFile {
            temp,
            path: path.to_path_buf(),
        })
    }

    /// The path the file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file, to write to or to pass on as a descriptor.
    pub fn as_file(&self) -> &File {
        self.temp.as_file()
    }

    /// Gives the temporary file the permission bits of `mode` (for example
    /// those of the file it replaces).
    ///
    /// # Errors
    ///
    /// The `fchmod(2)` error.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Syncs the file, renames it over the path and syncs the directory.
    ///
    /// # Errors
    ///
    /// When syncing or renaming fails; the temporary file is then removed
    /// and the path keeps what it had.
    pub fn commit(mut self) -> io::Result<()> {
        self.temp.flush()?;
        self.temp.as_file().sync_all()?;
        let AtomicFile { temp, path } = self;
        temp.persist(&path)
            .map_err(|e| without_temp_path(e.error))?;
        File::open(parent_of(&path))?.sync_all()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/x.vmstate");
        let err = AtomicFile::create(&path).expect_err("no such directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(!text.contains(".tmp"), "{text}");
        assert!(text.contains("os error 2"), "{text}");
    }

    #[test]
    fn dropped_before_commit_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"new").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn commit_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"new").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let e = AtomicFile::create("/").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is not a file name"), "{e}");
    }
}
