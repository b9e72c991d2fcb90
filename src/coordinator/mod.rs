//! The coordinator: listens on one socket per helper, accepts each helper as
//! the server side of a peer-to-peer D-Bus connection, and calls `Save` and
//! `Load` on all of them concurrently.
//!
//! ```no_run
//! # async fn example() -> dbus_vmstate::Result<()> {
//! use dbus_vmstate::coordinator;
//!
//! let coordinator = coordinator::Builder::new()
//!     .socket_dir("/run/vm0/vmstate", ["slirp", "tpm"])
//!     .optional("tpm")
//!     .bind()?;
//! // ... helpers connect to /run/vm0/vmstate/slirp.sock and tpm.sock ...
//! let report = coordinator.save_to_path("/var/lib/vm0/helpers.vmstate").await?;
//! println!("saved {} helpers", report.helpers.len());
//! coordinator.shutdown().await;
//! # Ok(()) }
//! ```

mod accept;
mod bus_shim;
mod load;
pub(crate) mod policy;
mod save;
pub(crate) mod socket;
mod transfer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::AbortHandle;
use zbus::Connection;

use crate::error::Error;
use crate::iface;
use crate::stream;

pub use load::LoadReport;
pub use save::SaveReport;
pub use transfer::Mode;

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

/// The result of one `Save` or `Load` on one helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// State bytes moved.
    pub bytes: u64,
    /// Time from the call to its reply.
    pub duration: Duration,
}

/// A helper that took part in a save or load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperReport {
    /// The helper's Id.
    pub id: String,
    /// What moved, and how long it took.
    pub transfer: Transfer,
    /// Which path the state took.
    pub mode: Mode,
}

/// An optional helper left out of a save or load, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The helper's Id.
    pub id: String,
    /// Why it was left out.
    pub reason: String,
}

/// What [`Coordinator::status`] reports about one helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperStatus {
    /// The helper's Id.
    pub id: String,
    /// Its socket.
    pub socket: PathBuf,
    /// Whether it is required.
    pub required: bool,
    /// Whether a helper is connected on that socket now.
    pub connected: bool,
    /// The connected peer's process Id (`SO_PEERCRED`).
    pub pid: Option<u32>,
    /// The connected peer's user Id (`SO_PEERCRED`).
    pub uid: Option<u32>,
    /// The last successful save.
    pub last_save: Option<Transfer>,
    /// The last successful load.
    pub last_load: Option<Transfer>,
    /// Why the last connection on this socket was turned away, if one was.
    pub last_rejection: Option<String>,
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
        }
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
        Coordinator::bind(config)
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
        Coordinator::bind_with(config, listeners.into_iter().collect())
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
        } = self;
        policy::check_helpers(&helpers)?;
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
            allow_uids.push(effective_uid());
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
        })
    }
}

/// The effective uid of this process.
pub(crate) fn effective_uid() -> u32 {
    crate::sys::effective_uid()
}

/// A helper's connection, closed when the last user lets go of it: a
/// helper that reconnects replaces the slot's reference at once, while a
/// `Save` or `Load` already running on the old connection finishes first.
#[derive(Debug)]
pub(crate) struct PeerConn(Connection);

impl PeerConn {
    pub fn new(conn: Connection) -> Arc<Self> {
        Arc::new(PeerConn(conn))
    }

    /// Closes the connection now, even while calls are in flight.
    pub async fn close_now(&self) {
        let _ = self.0.clone().close().await;
    }
}

impl std::ops::Deref for PeerConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        if !self.0.is_closed() {
            let conn = self.0.clone();
            drop(crate::rt::spawn(async move {
                let _ = conn.close().await;
            }));
        }
    }
}

/// A connected helper.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub conn: Arc<PeerConn>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub generation: u64,
    /// The unique name a bus-style helper was given, put in the
    /// destination field of every call to it; `None` for a peer-to-peer
    /// helper.
    pub bus_name: Option<String>,
}

impl Peer {
    /// The destination of calls to this helper.
    pub fn destination(&self) -> Option<&str> {
        self.bus_name.as_deref()
    }
}

#[derive(Debug, Default)]
pub(crate) struct SlotState {
    pub peer: Option<Peer>,
    pub next_generation: u64,
    pub last_save: Option<Transfer>,
    pub last_load: Option<Transfer>,
    pub last_rejection: Option<String>,
    /// Whether the helper of connection generation `.0` serves
    /// `org.dbusvmstate.Stream1`, once detected ([`transfer::mode`]).
    pub stream_support: Option<(u64, bool)>,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub spec: HelperSpec,
    state: Mutex<SlotState>,
}

impl Slot {
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock cannot leave the state half
        // updated (every update is one assignment), so a poisoned lock is
        // still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn peer(&self) -> Option<Peer> {
        self.state().peer.clone()
    }
}

/// State shared by the coordinator handle and its tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub config: Config,
    pub slots: Vec<Slot>,
    /// Notified whenever a helper connects or disconnects.
    pub changed: event_listener::Event,
    pub stopping: AtomicBool,
}

impl Inner {
    fn notify(&self) {
        self.changed.notify(usize::MAX);
    }

    /// Waits until every slot in `wanted` has a peer, or the deadline.
    /// Returns the slots still missing (empty on success).
    pub async fn wait_connected(&self, wanted: &[usize], timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let listener = self.changed.listen();
            let missing: Vec<usize> = wanted
                .iter()
                .copied()
                .filter(|&i| self.slots[i].peer().is_none())
                .collect();
            let now = Instant::now();
            if missing.is_empty() || now >= deadline {
                return missing;
            }
            let _ = crate::rt::timeout(deadline - now, listener).await;
        }
    }

    /// [`Error::NotConnected`] for each of `missing`.
    pub fn not_connected(&self, missing: &[usize], timeout: Duration) -> Vec<Error> {
        missing
            .iter()
            .map(|&i| {
                let slot = &self.slots[i];
                Error::NotConnected {
                    id: slot.spec.id.clone(),
                    timeout,
                    last_rejection: slot.state().last_rejection.clone(),
                }
            })
            .collect()
    }
}

/// A running coordinator: its sockets are bound and helpers are accepted
/// in the background.
///
/// Drop it, or better call [`Coordinator::shutdown`], to stop: the sockets
/// are removed and the helpers' connections closed.
#[derive(Debug)]
pub struct Coordinator {
    inner: Arc<Inner>,
    accept_tasks: Vec<AbortHandle>,
    bound: Vec<socket::BoundPath>,
}

impl Coordinator {
    fn bind(config: Config) -> Result<Self, Error> {
        Self::bind_with(config, Vec::new())
    }

    fn bind_with(
        mut config: Config,
        mut preset: Vec<(String, std::os::unix::net::UnixListener)>,
    ) -> Result<Self, Error> {
        for (i, (id, _)) in preset.iter().enumerate() {
            if !config.helpers.iter().any(|h| &h.id == id) {
                return Err(Error::Config {
                    reason: format!(
                        "a listening socket was given for helper {id:?}, which is not in the helper list"
                    ),
                });
            }
            if preset[..i].iter().any(|(other, _)| other == id) {
                return Err(Error::Config {
                    reason: format!("two listening sockets were given for helper {id:?}"),
                });
            }
        }
        let mut listeners = Vec::with_capacity(config.helpers.len());
        let mut bound = Vec::with_capacity(config.helpers.len());
        for spec in &mut config.helpers {
            match preset.iter().position(|(id, _)| *id == spec.id) {
                Some(pos) => {
                    let (_, listener) = preset.swap_remove(pos);
                    if let Some(path) = listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                    {
                        spec.socket = path;
                    }
                    listeners.push(listener);
                }
                None => {
                    // On error, the guards bound so far drop and remove
                    // their files.
                    let (listener, guard) =
                        socket::bind(&spec.id, &spec.socket, config.socket_owner)?;
                    listeners.push(listener);
                    bound.push(guard);
                }
            }
        }
        Self::from_listeners(config, listeners, bound)
    }

    fn from_listeners(
        config: Config,
        listeners: Vec<std::os::unix::net::UnixListener>,
        bound: Vec<socket::BoundPath>,
    ) -> Result<Self, Error> {
        let slots = config
            .helpers
            .iter()
            .map(|spec| Slot {
                spec: spec.clone(),
                state: Mutex::new(SlotState::default()),
            })
            .collect();
        let inner = Arc::new(Inner {
            config,
            slots,
            changed: event_listener::Event::new(),
            stopping: AtomicBool::new(false),
        });
        let mut accept_tasks = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let spec = &inner.slots[index].spec;
            let listener = crate::rt::Listener::new(listener).map_err(|e| Error::Bind {
                id: spec.id.clone(),
                path: spec.socket.clone(),
                reason: "cannot register socket",
                source: e,
            })?;
            accept_tasks.push(accept::start(inner.clone(), index, listener));
        }
        Ok(Coordinator {
            inner,
            accept_tasks,
            bound,
        })
    }

    /// The helpers this coordinator expects.
    pub fn helpers(&self) -> impl Iterator<Item = &HelperSpec> {
        self.inner.slots.iter().map(|s| &s.spec)
    }

    /// Each helper's connection and last transfers.
    pub fn status(&self) -> Vec<HelperStatus> {
        self.inner
            .slots
            .iter()
            .map(|slot| {
                let state = slot.state();
                HelperStatus {
                    id: slot.spec.id.clone(),
                    socket: slot.spec.socket.clone(),
                    required: slot.spec.required,
                    connected: state.peer.is_some(),
                    pid: state.peer.as_ref().and_then(|p| p.pid),
                    uid: state.peer.as_ref().and_then(|p| p.uid),
                    last_save: state.last_save.clone(),
                    last_load: state.last_load.clone(),
                    last_rejection: state.last_rejection.clone(),
                }
            })
            .collect()
    }

    /// Waits until every required helper is connected.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] (or [`Error::Several`]) naming the helpers
    /// still missing after `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let required: Vec<usize> = (0..self.inner.slots.len())
            .filter(|&i| self.inner.slots[i].spec.required)
            .collect();
        let missing = self.inner.wait_connected(&required, timeout).await;
        match Error::from_many(self.inner.not_connected(&missing, timeout)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Saves every connected helper into a native state stream written to
    /// `out`, and returns `out` with a report.
    ///
    /// Waits up to the connect timeout for every required helper, then
    /// saves all of them at once, each with the call timeout, and writes
    /// each state into the stream while it arrives. Optional helpers that
    /// are absent or fail are skipped and listed in the report.
    ///
    /// A helper that serves `org.dbusvmstate.Stream1` streams its state
    /// through a socket (`SaveFd`): the state is written into `out` chunk
    /// by chunk as the helper produces it, so coordinator memory stays flat
    /// (a few MiB per helper streaming at that moment) whatever the size.
    /// Other helpers are called with plain `Save`, whose reply (at most one
    /// D-Bus message) is held until it is written. An optional streaming
    /// helper's state is staged in an unlinked temporary file until it is
    /// complete, so that one failing midway can still be left out.
    ///
    /// # Errors
    ///
    /// Any required helper missing or failing fails the save, and no `Save`
    /// is called at all when one is missing. On error, `out` may hold a
    /// partial stream, which readers reject (it has no end record); use
    /// [`Coordinator::save_to_path`] to leave no file behind.
    pub async fn save<W>(&self, out: W) -> Result<(W, SaveReport), Error>
    where
        W: std::io::Write + Send + 'static,
    {
        save::save(&self.inner, out).await
    }

    /// Saves into the file at `path`, atomically: the stream goes to a
    /// temporary file in the same directory, which is synced and renamed
    /// over `path` only when the save succeeded. A failed save leaves no
    /// new file and an existing file untouched.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::save`], plus [`Error::Io`] for the file.
    pub async fn save_to_path(&self, path: impl AsRef<Path>) -> Result<SaveReport, Error> {
        save::save_to_path(&self.inner, path.as_ref()).await
    }

    /// Loads a state stream from `input` into the helpers.
    ///
    /// The whole stream is read and verified first: its format, every
    /// checksum, every required helper present, no unknown or duplicate Id,
    /// every helper without the streaming extension within one D-Bus
    /// message. Only then is any helper loaded, all of them at once. A
    /// stream that fails verification calls no `Load` at all. `format`
    /// `None` detects the format from the first bytes.
    ///
    /// **Memory.** Verifying first and yet not holding the state in memory
    /// takes two passes over a native stream: the first verifies it
    /// keeping only a summary, the second streams each helper's chunks to
    /// it as they come (through `LoadFd` for helpers that serve
    /// `org.dbusvmstate.Stream1`; collected into one `Load` message for
    /// the others). `input` here is read once, so it is first copied to a
    /// spool: memory up to 8 MiB, then an unlinked temporary file in
    /// `$TMPDIR`. [`Coordinator::load_seekable`] and
    /// [`Coordinator::load_from_path`] read a seekable input twice instead
    /// and spool nothing. A QEMU payload (at most 1 MiB per helper) is
    /// decoded into memory.
    ///
    /// The second pass checks every record again; should the input differ
    /// from the first pass, the load fails and a streaming helper's socket
    /// is closed before its last byte, so it never sees a complete state.
    ///
    /// # Errors
    ///
    /// [`Error::Stream`], [`Error::MissingInStream`],
    /// [`Error::UnknownInStream`], [`Error::OverMessageLimit`] before any
    /// `Load`; [`Error::NotConnected`] when a required helper is absent
    /// (again before any `Load`); [`Error::Io`] when the input or the spool
    /// fails; call and transfer errors of required helpers.
    pub async fn load<R>(
        &self,
        input: R,
        format: Option<stream::Format>,
    ) -> Result<LoadReport, Error>
    where
        R: std::io::Read + Send + 'static,
    {
        load::load(&self.inner, input, format).await
    }

    /// Loads a state stream from a seekable `input` (see
    /// [`Coordinator::load`]): a native stream is read twice from its
    /// current position, verified and then streamed, with nothing spooled.
    /// An input that turns out not to seek (a pipe behind a `File`) is
    /// spooled as [`Coordinator::load`] does. The input must not change
    /// during the load.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load`].
    pub async fn load_seekable<R>(
        &self,
        input: R,
        format: Option<stream::Format>,
    ) -> Result<LoadReport, Error>
    where
        R: std::io::Read + std::io::Seek + Send + 'static,
    {
        load::load_seekable(&self.inner, input, format).await
    }

    /// Loads the state stream in the file at `path` (see
    /// [`Coordinator::load`] and [`Coordinator::load_seekable`]: a regular
    /// file is read twice, a FIFO is spooled).
    ///
    /// # Errors
    ///
    /// As [`Coordinator::load`], plus [`Error::Io`] when the file cannot be
    /// opened.
    pub async fn load_from_path(
        &self,
        path: impl AsRef<Path>,
        format: Option<stream::Format>,
    ) -> Result<LoadReport, Error> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::Io {
            what: "cannot open state stream",
            path: Some(path.to_path_buf()),
            source: e,
        })?;
        // Small enough that a chunk's payload is mostly read straight into
        // the stream reader's buffer rather than copied through this one.
        self.load_seekable(std::io::BufReader::with_capacity(64 << 10, file), format)
            .await
    }

    /// Stops accepting, closes every helper connection and removes the
    /// socket files.
    pub async fn shutdown(mut self) {
        let peers = self.stop();
        for conn in peers {
            conn.close_now().await;
        }
        self.bound.clear();
    }

    /// Stops the accept tasks and takes every peer out; returns their
    /// connections for closing.
    fn stop(&mut self) -> Vec<Arc<PeerConn>> {
        self.inner.stopping.store(true, Ordering::Release);
        for task in self.accept_tasks.drain(..) {
            task.abort();
        }
        let peers = self
            .inner
            .slots
            .iter()
            .filter_map(|slot| slot.state().peer.take())
            .map(|p| p.conn)
            .collect();
        self.inner.notify();
        peers
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let peers = self.stop();
        if !peers.is_empty() {
            // Connections close asynchronously; the helpers see EOF.
            drop(crate::rt::spawn(async move {
                for conn in peers {
                    conn.close_now().await;
                }
            }));
        }
        // `bound` drops after this and removes the socket files.
    }
}
