//! Binding a helper's listening socket: stale-file cleanup, permissions,
//! and removal on shutdown.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::Error;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes,
/// including the terminating NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Mode of every socket file the coordinator creates.
pub const SOCKET_MODE: u32 = 0o600;

/// Connections that may wait in the kernel's accept queue.
const LISTEN_BACKLOG: i32 = 16;

/// A socket file this process created. Dropping it removes the file, but
/// only while the path still names the same file (same device, inode and
/// change time, still a socket): a file that another process put there
/// since is left alone.
#[derive(Debug)]
pub struct BoundPath {
    path: PathBuf,
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl BoundPath {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.file_type().is_socket() && identity(&meta) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening Unix socket at `path` for helper `id`, mode 0600.
///
/// A socket file left behind by a dead process (nothing accepts on it) is
/// replaced. A socket where a live process answers, or any path that is not
/// a socket, is an error: nothing is removed then.
///
/// # Errors
///
/// [`Error::SocketInUse`] for a live listener, [`Error::Bind`] otherwise.
pub fn bind(id: &str, path: &Path) -> Result<(UnixListener, BoundPath), Error> {
    let fail = |reason: &'static str, source: io::Error| Error::Bind {
        id: id.to_string(),
        path: path.to_path_buf(),
        reason,
        source,
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        return Err(fail(
            "path too long for a unix socket",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes, the limit is {MAX_SOCKET_PATH_BYTES}",
                    path.as_os_str().len()
                ),
            ),
        ));
    }
    remove_stale(id, path)?;

    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| fail("cannot create socket", e))?;
    let addr = SockAddr::unix(path).map_err(|e| fail("bad socket path", e))?;
    socket.bind(&addr).map_err(|e| fail("cannot bind", e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail("cannot stat socket", e))?;
    let mut guard = BoundPath {
        path: path.to_path_buf(),
        identity: identity(&meta),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| fail("cannot set socket mode", e))?;
    // chmod changed the change time.
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail("cannot stat socket", e))?;
    guard.identity = identity(&meta);
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| fail("cannot listen", e))?;
    Ok((socket.into(), guard))
}

/// Removes `path` if it is a socket nobody listens on.
fn remove_stale(id: &str, path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Bind {
                id: id.to_string(),
                path: path.to_path_buf(),
                reason: "cannot stat existing path",
                source: e,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Bind {
            id: id.to_string(),
            path: path.to_path_buf(),
            reason: "path exists and is not a socket",
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::SocketInUse {
            id: id.to_string(),
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(helper = id, path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|e| Error::Bind {
                id: id.to_string(),
                path: path.to_path_buf(),
                reason: "cannot remove stale socket",
                source: e,
            })
        }
        Err(e) => Err(Error::Bind {
            id: id.to_string(),
            path: path.to_path_buf(),
            reason: "cannot probe existing socket",
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_0600_and_removes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let (_l, guard) = bind("a", &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale); // file remains, nobody listens
        assert!(path.exists());
        let (_l, _guard) = bind("a", &path).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn refuses_live_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let err = bind("a", &path).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn refuses_non_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let err = bind("a", &path).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn refuses_long_path() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let err = bind("a", &path).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn guard_leaves_replaced_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let (l, guard) = bind("a", &path).unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"other").unwrap();
        drop(guard);
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
    }
}
