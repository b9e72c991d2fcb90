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
//! A path that exists and is not a regular file (a FIFO, a character
//! device such as `/dev/null`) cannot be replaced that way: renaming over
//! it would put a regular file in its place. [`AtomicFile::create`]
//! refuses one, and [`OutputFile`], for outputs named by the user, writes
//! into it in place.
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
    /// When `path` has no file name, is an existing file that is not a
    /// regular file ([`written_in_place`]), or the directory refuses a new
    /// file.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        if written_in_place(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file: replacing it would put one in its place",
                    path.display()
                ),
            ));
        }
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

/// Whether `path` names an existing file that is neither a regular file
/// nor a directory (a FIFO, a character or block device, a socket),
/// following symbolic links: one that output is written into in place.
pub fn written_in_place(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// A stream's output named by a path: an [`AtomicFile`], or, for a path
/// that is [`written_in_place`] (`/dev/null`, a FIFO, `/dev/stdout`), that
/// file opened for writing. Only the first appears whole or not at all; in
/// place, a failure leaves what was written, which for a native stream
/// lacks its end record, so every reader rejects it.
#[derive(Debug)]
pub enum OutputFile {
    /// A temporary file renamed over the path by [`OutputFile::commit`].
    Atomic(AtomicFile),
    /// The existing file itself.
    InPlace {
        /// The file, open for writing.
        file: File,
        /// Its path.
        path: PathBuf,
    },
}

impl OutputFile {
    /// Opens the output for `path`.
    ///
    /// # Errors
    ///
    /// As [`AtomicFile::create`], or opening the file in place fails.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        if written_in_place(path) {
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            return Ok(OutputFile::InPlace {
                file,
                path: path.to_path_buf(),
            });
        }
        AtomicFile::create(path).map(OutputFile::Atomic)
    }

    /// The path written to (once committed, for an atomic file).
    pub fn path(&self) -> &Path {
        match self {
            OutputFile::Atomic(file) => file.path(),
            OutputFile::InPlace { path, .. } => path,
        }
    }

    /// The file to write to or to pass on as a descriptor.
    pub fn as_file(&self) -> &File {
        match self {
            OutputFile::Atomic(file) => file.as_file(),
            OutputFile::InPlace { file, .. } => file,
        }
    }

    /// Commits an atomic file ([`AtomicFile::commit`]); a file written in
    /// place has nothing left to do.
    ///
    /// # Errors
    ///
    /// As [`AtomicFile::commit`].
    pub fn commit(self) -> io::Result<()> {
        match self {
            OutputFile::Atomic(file) => file.commit(),
            OutputFile::InPlace { .. } => Ok(()),
        }
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            OutputFile::Atomic(file) => file.write(buf),
            OutputFile::InPlace { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            OutputFile::Atomic(file) => file.flush(),
            OutputFile::InPlace { file, .. } => file.flush(),
        }
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
    fn a_device_or_fifo_is_written_in_place_and_never_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let e = AtomicFile::create("/dev/null").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let mut null = OutputFile::create("/dev/null").unwrap();
        assert!(matches!(null, OutputFile::InPlace { .. }));
        null.write_all(b"discarded").unwrap();
        null.commit().unwrap();
        let meta = std::fs::metadata("/dev/null").unwrap();
        assert!(meta.file_type().is_char_device());

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        assert!(written_in_place(&fifo));
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let mut out = OutputFile::create(&fifo).unwrap();
        out.write_all(b"through the fifo").unwrap();
        out.commit().unwrap();
        assert_eq!(reader.join().unwrap(), b"through the fifo");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

        // A regular file, or none yet, is still replaced atomically.
        let path = dir.path().join("file");
        assert!(!written_in_place(&path));
        assert!(matches!(
            OutputFile::create(&path).unwrap(),
            OutputFile::Atomic(_)
        ));
        assert!(!written_in_place(dir.path()));
    }

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
