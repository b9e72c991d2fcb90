//! The control server: serves `org.dbusvmstate.Control1` for one
//! coordinator on a control socket.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{AbortHandle, Abortable};
use zbus::connection::{AuthMechanism, Builder};
use zbus::{Connection, Guid};

use super::error::Reply;
use super::fdio::{check_access, Direction};
use super::ops;
use super::wire::{OptionsDict, QemuStatusDict, ReportDict, StatusDict};
use super::{Report, OBJECT_PATH};
use crate::coordinator::{socket, Coordinator};
use crate::error::Error;
use crate::iface;
use crate::rt;
use crate::stream::native::{ReadOptions, WriteOptions};
use crate::stream::Format;
use crate::sys;

/// Pause after an accept error before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The step of binding the control socket that failed, with its cause:
/// [`socket::bind`]'s error without its helper Id (this socket is no
/// helper's).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct BindStep {
    reason: &'static str,
    #[source]
    source: io::Error,
}

/// Serves a [`Coordinator`] on a control socket.
///
/// Stop it with [`Server::shutdown`], which also cancels a save or load in
/// progress; merely dropping it stops accepting and closes the control
/// connections, but lets a running save or load finish first.
///
/// Callers must run as the server's own effective uid or as root (checked
/// with `SO_PEERCRED` before the D-Bus handshake); the socket file is mode
/// 0600 as well.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    accept: AbortHandle,
    bound: Option<socket::BoundPath>,
    path: Option<PathBuf>,
}

/// State shared by the server handle, its tasks and the served objects.
#[derive(Debug)]
struct Shared {
    coordinator: Mutex<Option<Arc<Coordinator>>>,
    op: Mutex<Op>,
    connections: Mutex<HashMap<u64, Connection>>,
    next_connection: AtomicU64,
    stopping: AtomicBool,
    allowed_uids: Vec<u32>,
}

/// The save or load in progress, if any.
#[derive(Debug, Default)]
struct Op {
    running: Option<Running>,
    next_ticket: u64,
}

struct Running {
    ticket: u64,
    what: &'static str,
    task: rt::Task<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("ticket", &self.ticket)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment or insertion,
    // so a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn coordinator(&self) -> Option<Arc<Coordinator>> {
        lock(&self.coordinator).clone()
    }

    /// Marks the operation `ticket` finished.
    fn finish(&self, ticket: u64) {
        let mut op = lock(&self.op);
        if op.running.as_ref().map(|r| r.ticket) == Some(ticket) {
            // Dropping the task handle detaches the (finishing) task.
            op.running = None;
        }
    }
}

impl Server {
    /// Binds the control socket at `path` (mode 0600; a stale socket file
    /// is replaced) and serves `coordinator` on it. The file is removed on
    /// shutdown.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket cannot be bound, or a live process
    /// listens on it.
    pub fn bind(coordinator: Coordinator, path: impl AsRef<Path>) -> Result<Server, Error> {
        let path = path.as_ref();
        let (listener, bound) = socket::bind(super::ACTIVATION_NAME, path, None).map_err(|e| {
            let source = match e {
                Error::Bind { source, reason, .. } => {
                    io::Error::new(source.kind(), BindStep { reason, source })
                }
                Error::SocketInUse { .. } => {
                    io::Error::new(io::ErrorKind::AddrInUse, "a live process listens on it")
                }
                other => io::Error::other(other),
            };
            Error::Io {
                what: "cannot listen on the control socket",
                path: Some(path.to_path_buf()),
                source,
            }
        })?;
        let mut server = Self::from_listener(coordinator, listener)?;
        server.bound = Some(bound);
        server.path = Some(path.to_path_buf());
        Ok(server)
    }

    /// Serves `coordinator` on an already-bound, listening socket (from
    /// socket activation, say). Its file, if any, is left in place on
    /// shutdown: whoever bound it owns it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the socket cannot be registered with the runtime.
    pub fn from_listener(
        coordinator: Coordinator,
        listener: UnixListener,
    ) -> Result<Server, Error> {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        let listener = rt::Listener::new(listener).map_err(|source| Error::Io {
            what: "cannot register the control socket",
            path: path.clone(),
            source,
        })?;
        let euid = sys::effective_uid();
        let shared = Arc::new(Shared {
            coordinator: Mutex::new(Some(Arc::new(coordinator))),
            op: Mutex::new(Op::default()),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            allowed_uids: if euid == 0 { vec![0] } else { vec![euid, 0] },
        });
        let (accept, registration) = AbortHandle::new_pair();
        drop(rt::spawn(Abortable::new(
            accept_loop(shared.clone(), listener),
            registration,
        )));
        Ok(Server {
            shared,
            accept,
            bound: None,
            path,
        })
    }

    /// The control socket's path, when it has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Stops serving: cancels a save or load in progress (a save's stream
    /// is cut off before it ends, so readers reject it), closes every
    /// control connection, shuts the coordinator down (its helper
    /// connections close, its sockets are removed) and removes the control
    /// socket file.
    pub async fn shutdown(mut self) {
        self.stop();
        let running = lock(&self.shared.op).running.take();
        if let Some(running) = running {
            tracing::warn!("cancelling the {} in progress", running.what);
            running.task.cancel().await;
        }
        let connections: Vec<Connection> = lock(&self.shared.connections)
            .drain()
            .map(|(_, c)| c)
            .collect();
        for conn in connections {
            let _ = conn.close().await;
        }
        let coordinator = lock(&self.shared.coordinator).take();
        if let Some(coordinator) = coordinator {
            coordinator.shutdown().await;
        }
        self.bound = None;
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.accept.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        lock(&self.shared.op).running = None;
        let connections: Vec<Connection> = lock(&self.shared.connections)
            .drain()
            .map(|(_, c)| c)
            .collect();
        if !connections.is_empty() {
            drop(rt::spawn(async move {
                for conn in connections {
                    let _ = conn.close().await;
                }
            }));
        }
        lock(&self.shared.coordinator).take();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: rt::Listener) {
    loop {
        match listener.accept().await {
            Ok(stream) => drop(rt::spawn(admit(shared.clone(), stream))),
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                rt::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Checks a new control connection's uid, handshakes, serves the control
/// object on it until it closes.
async fn admit(shared: Arc<Shared>, stream: UnixStream) {
    // Read before any D-Bus byte: a stranger gets no handshake at all.
    let (uid, pid) = match sys::peer_credentials(&stream) {
        Ok(creds) => creds,
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot read peer credentials");
            return;
        }
    };
    if !shared.allowed_uids.contains(&uid) {
        tracing::warn!(
            uid,
            pid,
            "control socket: rejected a connection from uid {uid}"
        );
        return;
    }
    let object = Control {
        shared: Arc::downgrade(&shared),
    };
    let build = Builder::unix_stream(stream)
        .server(Guid::generate())
        .p2p()
        .auth_mechanism(AuthMechanism::External)
        .serve_at(OBJECT_PATH, object)
        .build();
    let conn = match rt::timeout(iface::DEFAULT_HANDSHAKE_TIMEOUT, build).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::warn!(pid, error = %e, "control socket: D-Bus handshake failed");
            return;
        }
        Err(rt::Elapsed) => {
            tracing::warn!(
                pid,
                "control socket: D-Bus handshake did not finish in time"
            );
            return;
        }
    };
    if shared.stopping.load(Ordering::Acquire) {
        let _ = conn.close().await;
        return;
    }
    tracing::debug!(pid, uid, "control client connected");
    let key = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    lock(&shared.connections).insert(key, conn.clone());
    conn.closed().await;
    lock(&shared.connections).remove(&key);
    tracing::debug!(pid, "control client disconnected");
}

/// The `org.dbusvmstate.Control1` object.
struct Control {
    shared: Weak<Shared>,
}

impl Control {
    fn shared(&self) -> Result<Arc<Shared>, Reply> {
        self.shared.upgrade().ok_or_else(stopped)
    }
}

fn stopped() -> Reply {
    Reply::cancelled("the coordinator is shutting down".to_string())
}

#[zbus::interface(name = "org.dbusvmstate.Control1")]
impl Control {
    /// Saves every helper and writes the state stream into `fd`.
    #[zbus(out_args("report"))]
    async fn save(&self, fd: zbus::OwnedFd, mut options: OptionsDict) -> Result<ReportDict, Reply> {
        let key = options.take_key().map_err(Reply::invalid_args)?;
        let encoding = WriteOptions {
            compress: options.compress.unwrap_or(false),
            key,
            ..WriteOptions::default()
        };
        let format = options
            .parse_format()
            .map_err(Reply::invalid_args)?
            .unwrap_or(Format::Native);
        let connect_timeout = options
            .parse_connect_timeout()
            .map_err(Reply::invalid_args)?;
        check_access(&fd, Direction::Write).map_err(Reply::invalid_args)?;
        let fd = std::os::fd::OwnedFd::from(fd);
        let report = run(&self.shared()?, "save", move |c| {
            ops::save(c, fd, format, encoding, connect_timeout)
        })
        .await?;
        Ok(ReportDict::from(&report))
    }

    /// Reads a whole state stream from `fd`, verifies it and loads it.
    #[zbus(out_args("report"))]
    async fn load(&self, fd: zbus::OwnedFd, mut options: OptionsDict) -> Result<ReportDict, Reply> {
        let decoding = ReadOptions {
            key: options.take_key().map_err(Reply::invalid_args)?,
            allow_unencrypted: options.allow_unencrypted.unwrap_or(false),
        };
        let format = options.parse_format().map_err(Reply::invalid_args)?;
        let connect_timeout = options
            .parse_connect_timeout()
            .map_err(Reply::invalid_args)?;
        check_access(&fd, Direction::Read).map_err(Reply::invalid_args)?;
        let fd = std::os::fd::OwnedFd::from(fd);
        let report = run(&self.shared()?, "load", move |c| {
            ops::load(c, fd, format, decoding, connect_timeout)
        })
        .await?;
        Ok(ReportDict::from(&report))
    }

    /// Each helper's connection and last transfers.
    #[zbus(out_args("helpers"))]
    async fn status(&self) -> Result<Vec<StatusDict>, Reply> {
        let coordinator = self.shared()?.coordinator().ok_or_else(stopped)?;
        Ok(coordinator.status().iter().map(StatusDict::from).collect())
    }

    /// QEMU's front door: its socket, QEMU's connection, and the last save
    /// and load QEMU ran through it; empty without a front door.
    #[zbus(name = "QemuStatus", out_args("qemu"))]
    async fn qemu_status(&self) -> Result<QemuStatusDict, Reply> {
        let coordinator = self.shared()?.coordinator().ok_or_else(stopped)?;
        Ok(QemuStatusDict::from(coordinator.qemu_status().as_ref()))
    }
}

/// Runs a save or load as a task of its own (so it survives its caller
/// going away, and shutdown can cancel it), one at a time.
async fn run<F, Fut>(shared: &Arc<Shared>, what: &'static str, work: F) -> Result<Report, Reply>
where
    F: FnOnce(Arc<Coordinator>) -> Fut,
    Fut: Future<Output = Result<Report, Reply>> + Send + 'static,
{
    let coordinator = shared.coordinator().ok_or_else(stopped)?;
    let (tx, rx) = oneshot::channel();
    {
        let mut op = lock(&shared.op);
        if let Some(running) = &op.running {
            return Err(Reply::busy(format!(
                "a {} is in progress; try again when it has finished",
                running.what
            )));
        }
        op.next_ticket += 1;
        let ticket = op.next_ticket;
        let work = work(coordinator);
        let weak = Arc::downgrade(shared);
        let task = rt::spawn(async move {
            let result = work.await;
            match &result {
                Ok(r) => tracing::info!(
                    helpers = r.helpers.len(),
                    skipped = r.skipped.len(),
                    "{what} done in {:.2} ms",
                    r.duration.as_secs_f64() * 1e3
                ),
                Err(e) => tracing::warn!("{what} failed: {e}"),
            }
            let _ = tx.send(result);
            if let Some(shared) = weak.upgrade() {
                shared.finish(ticket);
            }
        });
        op.running = Some(Running { ticket, what, task });
    }
    rx.await.unwrap_or_else(|_| {
        Err(Reply::cancelled(format!(
            "the coordinator stopped before the {what} finished"
        )))
    })
}
