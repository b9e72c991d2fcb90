//! [`FileState`]: a helper whose state is a file.

use crate::atomic::AtomicFile;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::copy::copy_blocks;
use super::{BoxError, State, StreamIn, StreamOut};

/// A [`State`] kept in a file: `Save` returns the file's bytes and `Load`
/// replaces the file atomically (a temporary file in the same directory,
/// synced, then renamed over it).
///
/// On the streaming path the kernel sends the file into the coordinator's
/// socket (`sendfile(2)`), and a loaded state goes from the socket into
/// the new file through one 1 MiB buffer, so a state of any size passes
/// through bounded memory in few system calls.
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

    fn send_error(&self, source: io::Error) -> BoxError {
        Box::new(FileError {
            what: "cannot send state file",
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
        replace_file(&self.path, |temp| temp.write_all(&data)).map_err(|e| self.replace_error(e))
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        let mut file = std::fs::File::open(&self.path).map_err(|e| self.read_error(e))?;
        copy_blocks(&mut file, out).map_err(|e| self.send_error(e))?;
        Ok(())
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        replace_file(&self.path, |temp| copy_blocks(input, temp).map(drop))
            .map_err(|e| self.replace_error(e))
    }

    fn save_to_stream(&self, out: &mut StreamOut) -> Result<(), BoxError> {
        let file = std::fs::File::open(&self.path).map_err(|e| self.read_error(e))?;
        out.copy_from(&file).map_err(|e| self.send_error(e))?;
        Ok(())
    }

    fn load_from_stream(&self, input: &mut StreamIn) -> Result<(), BoxError> {
        replace_file(&self.path, |temp| input.copy_to(temp.as_file()).map(drop))
            .map_err(|e| self.replace_error(e))
    }
}

/// Writes what `fill` puts into a temporary file to `path`, atomically
/// and durably: nothing replaces `path` unless `fill` succeeded and the
/// file was synced. The new file keeps the permission bits of the one it
/// replaces.
fn replace_file(
    path: &Path,
    fill: impl FnOnce(&mut AtomicFile) -> io::Result<()>,
) -> io::Result<()> {
    let mut temp = AtomicFile::create(path)?;
    match std::fs::metadata(path) {
        Ok(old) => temp.set_mode(std::os::unix::fs::PermissionsExt::mode(&old.permissions()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fill(&mut temp)?;
    temp.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn state_with(bytes: &[u8]) -> (tempfile::TempDir, FileState) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, bytes).unwrap();
        (dir, FileState::new("f", path))
    }

    fn stream_out() -> (StreamOut, std::thread::JoinHandle<Vec<u8>>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        (StreamOut::new(OwnedFd::from(a)).unwrap(), peer)
    }

    /// A socket carrying `bytes` and then end-of-file, as `LoadFd` passes
    /// it, announcing `size` bytes.
    fn stream_in(bytes: Vec<u8>, size: u64) -> StreamIn {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || b.write_all(&bytes));
        StreamIn::new(OwnedFd::from(a), size).unwrap()
    }

    #[test]
    fn the_stream_path_moves_every_byte_both_ways() {
        for len in [0, 1, 4095, 4096, 4097, (3 << 20) + 5] {
            let data = pattern(len);
            let (_dir, state) = state_with(&data);
            let (mut out, peer) = stream_out();
            state.save_to_stream(&mut out).unwrap();
            assert_eq!(out.finish().unwrap(), len as u64);
            assert_eq!(peer.join().unwrap(), data, "save of {len} bytes");

            let (_dir2, target) = state_with(b"old");
            let mut input = stream_in(data.clone(), len as u64);
            target.load_from_stream(&mut input).unwrap();
            input.finish().unwrap();
            assert_eq!(std::fs::read(&target.path).unwrap(), data, "load of {len}");
        }
    }

    #[test]
    fn the_write_and_read_path_moves_every_byte_both_ways() {
        let data = pattern((2 << 20) + 3);
        let (_dir, state) = state_with(&data);
        let mut saved = Vec::new();
        state.save_to(&mut saved).unwrap();
        assert_eq!(saved, data);
        let (_dir2, target) = state_with(b"old");
        target.load_from(&mut saved.as_slice()).unwrap();
        assert_eq!(std::fs::read(&target.path).unwrap(), data);
    }

    #[test]
    fn a_missing_file_is_named_on_save() {
        let state = FileState::new("f", "/nonexistent/dir/state");
        let (mut out, _peer) = stream_out();
        let e = state.save_to_stream(&mut out).unwrap_err();
        let msg = crate::error::chain(e.as_ref());
        assert!(
            msg.starts_with("cannot read state file /nonexistent/dir/state"),
            "{msg}"
        );
    }

    #[test]
    fn a_coordinator_gone_is_named_and_is_broken_pipe() {
        let (_dir, state) = state_with(&pattern(4 << 20));
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut out = StreamOut::new(OwnedFd::from(a)).unwrap();
        let e = state.save_to_stream(&mut out).unwrap_err();
        let msg = crate::error::chain(e.as_ref());
        assert!(msg.starts_with("cannot send state file "), "{msg}");
        let source = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn every_load_keeps_the_replaced_files_permission_bits() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |state: &FileState| {
            std::fs::metadata(&state.path).unwrap().permissions().mode() & 0o7777
        };
        let data = pattern(4097);
        for how in ["load", "load_from", "load_from_stream"] {
            let (_dir, target) = state_with(b"old");
            let perms = std::fs::Permissions::from_mode(0o640);
            std::fs::set_permissions(&target.path, perms).unwrap();
            match how {
                "load" => target.load(data.clone()).unwrap(),
                "load_from" => target.load_from(&mut data.as_slice()).unwrap(),
                _ => {
                    let mut input = stream_in(data.clone(), data.len() as u64);
                    target.load_from_stream(&mut input).unwrap();
                    input.finish().unwrap();
                }
            }
            assert_eq!(std::fs::read(&target.path).unwrap(), data, "{how}");
            assert_eq!(mode(&target), 0o640, "{how}");
        }
    }

    #[test]
    fn a_short_stream_leaves_the_old_file_and_says_how_short() {
        let (_dir, target) = state_with(b"old state");
        let mut input = stream_in(pattern(1000), 4097);
        let e = target.load_from_stream(&mut input).unwrap_err();
        let msg = crate::error::chain(e.as_ref());
        assert!(msg.starts_with("cannot replace state file "), "{msg}");
        assert!(msg.contains("after 1000 of the 4097 bytes"), "{msg}");
        assert_eq!(std::fs::read(&target.path).unwrap(), b"old state");
    }

    #[test]
    fn a_long_stream_leaves_the_old_file() {
        let (_dir, target) = state_with(b"old state");
        let mut input = stream_in(pattern(4098), 4097);
        let e = target.load_from_stream(&mut input).unwrap_err();
        let msg = crate::error::chain(e.as_ref());
        assert!(msg.contains("more than the announced 4097 bytes"), "{msg}");
        assert_eq!(std::fs::read(&target.path).unwrap(), b"old state");
    }
}
