//! [`FileState`]: a helper whose state is a file.

use crate::atomic::AtomicFile;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{BoxError, State};

/// A [`State`] kept in a file: `Save` returns the file's bytes and `Load`
/// replaces the file atomically (a temporary file in the same directory,
/// synced, then renamed over it).
///
/// On the streaming path the file is copied to and from the descriptor in
/// blocks, so a state of any size passes through bounded memory.
#[derive(Debug, Clone)]
pub struct FileState {
    id: String,
    path: PathBuf,
}

impl FileState {
    /// State of helper `id`, kept in the file at `path`.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        FileState {
            id: id.into(),
            path: path.into(),
        }
    }

    fn read_error(&self, source: io::Error) -> BoxError {
        Box::new(FileError {
            what: "cannot read state file",
            path: self.path.clone(),
            source,
        })
    }

    fn replace_error(&self, source: io::Error) -> BoxError {
        Box::new(FileError {
            what: "cannot replace state file",
            path: self.path.clone(),
            source,
        })
    }
}

/// A [`FileState`] could not read or replace its file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
struct FileError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl State for FileState {
    fn id(&self) -> &str {
        &self.id
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        std::fs::read(&self.path).map_err(|e| self.read_error(e))
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        replace_file(&self.path, &mut data.as_slice()).map_err(|e| self.replace_error(e))
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        let mut file = std::fs::File::open(&self.path).map_err(|e| self.read_error(e))?;
        io::copy(&mut file, out)?;
        Ok(())
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        replace_file(&self.path, input).map_err(|e| self.replace_error(e))
    }
}

/// Writes what `input` holds to `path`, atomically and durably: nothing
/// replaces `path` unless the whole input was read and synced. The new file
/// keeps the permission bits of the one it replaces.
fn replace_file(path: &Path, input: &mut dyn Read) -> io::Result<()> {
    let mut temp = AtomicFile::create(path)?;
    match std::fs::metadata(path) {
        Ok(old) => temp.set_mode(std::os::unix::fs::PermissionsExt::mode(&old.permissions()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    io::copy(input, &mut temp)?;
    temp.commit()
}
