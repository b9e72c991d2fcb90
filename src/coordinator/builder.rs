//! Configuring a coordinator: the helpers it expects and its limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::budget::{Budget, DEFAULT_MEMORY_LIMIT_BYTES};
use super::{policy, Coordinator};
use crate::error::Error;
use crate::iface;

/// One helper the coordinator expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSpec {
    /// The helper's Id: what its `Id` property must say, and its record's
    /// name in the stream.
    pub id: String,
    /// The socket the coordinator listens on for this helper.
    pub socket: PathBuf,
    /// A required helper fails a save or load when absent; an optional one
    /// is skipped with a warning.
    pub required: bool,
}

/// Settings shared by every part of a coordinator.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub helpers: Vec<HelperSpec>,
    pub allow_uids: Vec<u32>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_blob_bytes: u64,
    pub socket_owner: Option<(u32, Option<u32>)>,
    /// QEMU's front door socket.
    pub qemu_socket: Option<PathBuf>,
    /// The memory budget of plain states, shared by every save and load.
    pub budget: Arc<Budget>,
}

/// Configures and binds a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct Builder {
    helpers: Vec<HelperSpec>,
    optional: Vec<String>,
    allow_uids: Vec<u32>,
    connect_timeout: Duration,
    call_timeout: Duration,
    handshake_timeout: Duration,
    max_blob_bytes: u64,
    socket_owner: Option<(u32, Option<u32>)>,
    qemu_socket: Option<PathBuf>,
    memory_limit: u64,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A coordinator with no helpers yet and the default timeouts.
    pub fn new() -> Self {
        Builder {
            helpers: Vec::new(),
            optional: Vec::new(),
            allow_uids: Vec::new(),
            connect_timeout: iface::DEFAULT_CONNECT_TIMEOUT,
            call_timeout: iface::DEFAULT_CALL_TIMEOUT,
            handshake_timeout: iface::DEFAULT_HANDSHAKE_TIMEOUT,
            max_blob_bytes: iface::DEFAULT_MAX_STATE_BYTES,
            socket_owner: None,
            qemu_socket: None,
            memory_limit: DEFAULT_MEMORY_LIMIT_BYTES,
        }
    }

    /// Also listens on `path` for QEMU: an unmodified QEMU started with
    /// `-object dbus-vmstate,id=dv0,addr=unix:path=PATH,id-list=...`
    /// takes this socket for its D-Bus bus, and the coordinator answers
    /// it as one, saving and loading the helpers connected on their own
    /// sockets whenever QEMU migrates. See [the front door's
    /// docs](crate::coordinator#qemu).
    pub fn qemu_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu_socket = Some(path.into());
        self
    }

    /// Expects helper `id` on the socket at `socket` (required).
    pub fn helper(mut self, id: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        self.helpers.push(HelperSpec {
            id: id.into(),
            socket: socket.into(),
            required: true,
        });
        self
    }

    /// Expects each helper of `ids` on `dir/<ID>.sock` (required).
    pub fn socket_dir<I, S>(mut self, dir: impl AsRef<Path>, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for id in ids {
            let id = id.into();
            let socket = dir.as_ref().join(format!("{id}.sock"));
            self = self.helper(id, socket);
        }
        self
    }

    /// Marks helper `id` optional: skipped with a warning when it is absent
    /// at save time, or has no state in the stream at load time.
    pub fn optional(mut self, id: impl Into<String>) -> Self {
        self.optional.push(id.into());
        self
    }

    /// Accepts helpers running as `uid`. Without any call, only the
    /// coordinator's own effective uid is accepted.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allow_uids.push(uid);
        self
    }

    /// Gives every socket file to `uid` (and `gid`, if given), keeping mode
    /// 0600, so that helpers running as that user can connect while others
    /// cannot; `uid` is added to the allowed peer uids. This is how a
    /// coordinator running as root serves helpers that run as an
    /// unprivileged user. Changing a file's owner needs privilege.
    pub fn socket_owner(mut self, uid: u32, gid: Option<u32>) -> Self {
        self.socket_owner = Some((uid, gid));
        self
    }

    /// How long `save` and `load` wait for required helpers to connect.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one `Save` or `Load` call may take.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long a new connection has to authenticate and report its Id.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The largest state accepted from or sent to one helper (default
    /// [`iface::DEFAULT_MAX_STATE_BYTES`]). Helpers without the streaming
    /// extension are limited to one D-Bus message besides.
    pub fn max_blob_bytes(mut self, bytes: u64) -> Self {
        self.max_blob_bytes = bytes;
        self
    }

    /// The most memory the states of plain helpers (those without the
    /// streaming extension, whose state travels in one D-Bus message) may
    /// hold at once, over every save and load of this coordinator
    /// (default [`DEFAULT_MEMORY_LIMIT_BYTES`](super::DEFAULT_MEMORY_LIMIT_BYTES),
    /// 256 MiB).
    ///
    /// A plain `Save` waits until its helper's last saved size (the
    /// largest reply, at most the limit, when none is known) fits, and
    /// holds the reply's size until it is written. A plain `Load` takes
    /// three times its state's size (the state and the two copies zbus
    /// serialises the message into), at most the whole limit: a load
    /// collects a plain state in memory while that room is free beside the
    /// others, else in an unlinked temporary file (`$TMPDIR`, else
    /// `/var/tmp`, which unlike `/tmp` is seldom a tmpfs), and each `Load`
    /// waits for its room. A state larger than the limit fails with
    /// [`Error::TooLarge`] naming its helper (on load, before any call).
    /// Streaming helpers need none of it.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Checks the configuration, binds every socket and starts accepting
    /// helpers. Must be called within an async runtime context or from a
    /// thread where spawning is allowed (any thread with async-std).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty list, an invalid or duplicate Id, an
    /// unknown optional Id; [`Error::Bind`] or [`Error::SocketInUse`] when a
    /// socket cannot be bound (sockets bound before it are removed again).
    pub fn bind(self) -> Result<Coordinator, Error> {
        let config = self.into_config()?;
        Coordinator::bind_with(config, Vec::new(), None)
    }

    /// Like [`Builder::bind`], but some helpers' listening sockets come
    /// ready-made (from socket activation, say): each `(id, listener)` is
    /// used for helper `id` instead of binding its socket path, and its
    /// path becomes the listener's own. Those socket files are left in
    /// place on shutdown: whoever bound them owns them.
    ///
    /// # Errors
    ///
    /// As [`Builder::bind`]; [`Error::Config`] when a listener is for an Id
    /// that is not in the helper list, or for the same Id twice.
    pub fn bind_with<I>(self, listeners: I) -> Result<Coordinator, Error>
    where
        I: IntoIterator<Item = (String, std::os::unix::net::UnixListener)>,
    {
        let config = self.into_config()?;
        Coordinator::bind_with(config, listeners.into_iter().collect(), None)
    }

    /// Like [`Builder::bind_with`], and QEMU's front door listens on
    /// `qemu` (a passed socket) instead of binding a path; its path becomes
    /// the front door's socket.
    ///
    /// # Errors
    ///
    /// As [`Builder::bind_with`].
    pub fn bind_with_qemu<I>(
        mut self,
        listeners: I,
        qemu: std::os::unix::net::UnixListener,
    ) -> Result<Coordinator, Error>
    where
        I: IntoIterator<Item = (String, std::os::unix::net::UnixListener)>,
    {
        if let Some(path) = qemu
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        {
            self.qemu_socket = Some(path);
        }
        let mut config = self.into_config()?;
        config.qemu_socket.get_or_insert_with(PathBuf::new);
        Coordinator::bind_with(config, listeners.into_iter().collect(), Some(qemu))
    }

    fn into_config(self) -> Result<Config, Error> {
        let Builder {
            mut helpers,
            optional,
            mut allow_uids,
            connect_timeout,
            call_timeout,
            handshake_timeout,
            max_blob_bytes,
            socket_owner,
            qemu_socket,
            memory_limit,
        } = self;
        policy::check_helpers(&helpers)?;
        if let Some(qemu) = &qemu_socket {
            if let Some(h) = helpers.iter().find(|h| &h.socket == qemu) {
                return Err(Error::Config {
                    reason: format!(
                        "QEMU's socket {} is also helper {:?}'s",
                        qemu.display(),
                        h.id
                    ),
                });
            }
        }
        for id in &optional {
            let spec = helpers
                .iter_mut()
                .find(|h| &h.id == id)
                .ok_or_else(|| Error::Config {
                    reason: format!("optional helper {id:?} is not in the helper list"),
                })?;
            spec.required = false;
        }
        if allow_uids.is_empty() {
            allow_uids.push(crate::sys::effective_uid());
        }
        if let Some((uid, _)) = socket_owner {
            if !allow_uids.contains(&uid) {
                allow_uids.push(uid);
            }
        }
        Ok(Config {
            helpers,
            allow_uids,
            connect_timeout,
            call_timeout,
            handshake_timeout,
            max_blob_bytes,
            socket_owner,
            qemu_socket,
            budget: Budget::new(memory_limit),
        })
    }
}
