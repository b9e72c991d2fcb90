//! Binding a helper's listening socket: stale-file cleanup, permissions,
//! and removal on shutdown.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::Error;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes,
/// including the terminating NUL).
pub(crate) const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Mode of every socket file the coordinator creates.
pub(crate) const SOCKET_MODE: u32 = 0o600;

/// Connections that may wait in the kernel's accept queue.
const LISTEN_BACKLOG: i32 = 16;

/// A socket file this process created. Dropping it removes the file, but
/// only while the path still names the same file (same device, inode and
/// change time, still a socket): a file that another process put there
/// since is left alone.
#[derive(Debug)]
pub(crate) struct BoundPath {
    path: PathBuf,
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
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

/// Binds a listening Unix socket at `path` for helper `id`, mode 0600,
/// owned by `owner` (uid, gid) when given (changing the owner needs
/// privilege).
///
/// A socket file left behind by a dead process (nothing accepts on it) is
/// replaced. A socket where a live process answers, or any path that is not
/// a socket, is an error: nothing is removed then.
///
/// # Errors
///
/// [`Error::SocketInUse`] for a live listener, [`Error::Bind`] otherwise.
pub(crate) fn bind(
    id: &str,
    path: &Path,
    owner: Option<(u32, Option<u32>)>,
) -> Result<(UnixListener, BoundPath), Error> {
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
    check_dir(id, path)?;
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
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), gid)
            .map_err(|e| fail("cannot change the socket's owner", e))?;
    }
    // chmod and chown changed the change time.
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail("cannot stat socket", e))?;
    guard.identity = identity(&meta);
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| fail("cannot listen", e))?;
    Ok((socket.into(), guard))
}

/// Mode of socket directories the coordinator creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Makes sure the directory holding a socket is safe: created 0700 when
/// missing; refused when another user owns it or when it is group- or
/// world-writable (anyone who can write there could replace the socket
/// and impersonate the coordinator to helpers).
fn check_dir(id: &str, path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = |reason: &'static str, source: io::Error| Error::Bind {
        id: id.to_string(),
        path: path.to_path_buf(),
        reason,
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| fail("cannot create the socket directory", e))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| fail("cannot stat the socket directory", e))?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(fail(
            "unsafe socket directory",
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is group- or world-writable (mode {:o}): another user could replace \
                     the socket; use a directory of its own with mode 0700",
                    dir.display(),
                    mode & 0o7777
                ),
            ),
        ));
    }
    let me = crate::sys::effective_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(fail(
            "unsafe socket directory",
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to this process (uid {me}) or root",
                    dir.display(),
                    meta.uid()
                ),
            ),
        ));
    }
    Ok(())
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
        let (_l, guard) = bind("a", &path, None).unwrap();
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
        let (_l, _guard) = bind("a", &path, None).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn refuses_live_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let err = bind("a", &path, None).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn refuses_non_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let err = bind("a", &path, None).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn creates_missing_directory_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/a.sock");
        let (_l, _guard) = bind("a", &path, None).unwrap();
        for d in [dir.path().join("new"), dir.path().join("new/sub")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn refuses_group_or_world_writable_directory() {
        for mode in [0o770, 0o702, 0o1777] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let path = dir.path().join("a.sock");
            let err = bind("a", &path, None).unwrap_err();
            let text = crate::error::chain(&err);
            assert!(
                text.contains("group- or world-writable"),
                "{mode:o}: {text}"
            );
            assert!(!path.exists());
        }
    }

    #[test]
    fn accepts_private_and_read_only_shared_directories() {
        for mode in [0o700, 0o755, 0o711] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            bind("a", &dir.path().join("a.sock"), None).unwrap();
        }
    }

    #[test]
    fn refuses_long_path() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let err = bind("a", &path, None).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn guard_leaves_replaced_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let (l, guard) = bind("a", &path, None).unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"other").unwrap();
        drop(guard);
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
    }
}
