//! Accepting helpers: the D-Bus handshake as server, the peer's uid, its
//! `Id`, and installing the connection in its slot.
//!
//! The handshake accepts the authentication styles of every common D-Bus
//! library (checked by `tests/interop.rs`): GDBus's bare `AUTH` to list
//! mechanisms, libdbus's `AUTH EXTERNAL <uid>` exchange, sd-bus's pipelined
//! `AUTH EXTERNAL`, `DATA`, `NEGOTIATE_UNIX_FD`, `BEGIN` in one write, and
//! zbus's own. Each connection serves the [`bus_shim`] so
//! that bus-style helpers find the `org.freedesktop.DBus` calls they make
//! answered.

use std::any::Any;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use zbus::connection::{AuthMechanism, Builder};
use zbus::{Connection, Guid};

use super::bus_shim::{self, BusShim};
use super::{Inner, Peer};
use crate::iface;
use crate::rt;
use crate::stream;

/// Pause after an accept error (e.g. out of file descriptors) before
/// trying again, so a persistent error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Starts the accept loop of slot `index`; abort the handle to stop it.
pub(super) fn start(inner: Arc<Inner>, index: usize, listener: rt::Listener) -> AbortHandle {
    let (handle, registration) = AbortHandle::new_pair();
    let task = Abortable::new(accept_loop(inner, index, listener), registration);
    drop(rt::spawn(task));
    handle
}

async fn accept_loop(inner: Arc<Inner>, index: usize, listener: rt::Listener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let inner = inner.clone();
                drop(rt::spawn(async move { admit(inner, index, stream).await }));
            }
            Err(e) => {
                let id = &inner.slots[index].spec.id;
                tracing::warn!(helper = %id, error = %e, "accept failed");
                rt::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug)]
enum Rejection {
    /// Closed before saying anything: something probing whether the socket
    /// is live (a second coordinator starting), not a helper. Not recorded.
    Probe,
    Handshake(zbus::Error),
    HandshakePanic(String),
    HandshakeTimeout,
    Credentials(std::io::Error),
    Uid(u32),
    IdCall(zbus::Error),
    IdTimeout,
    InvalidId(String, stream::Error),
    WrongId(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Probe => write!(f, "closed before the D-Bus handshake"),
            Rejection::Handshake(e) => write!(f, "D-Bus handshake failed: {e}"),
            Rejection::HandshakePanic(what) => {
                write!(
                    f,
                    "D-Bus handshake failed: malformed input crashed it ({what})"
                )
            }
            Rejection::HandshakeTimeout => write!(f, "D-Bus handshake did not finish in time"),
            Rejection::Credentials(e) => write!(f, "cannot read peer credentials: {e}"),
            Rejection::Uid(uid) => write!(f, "peer uid {uid} is not allowed"),
            Rejection::IdCall(e) => write!(f, "reading its Id failed: {e}"),
            Rejection::IdTimeout => write!(f, "it did not report its Id in time"),
            Rejection::InvalidId(id, e) => write!(f, "its Id {id:?} is invalid: {e}"),
            Rejection::WrongId(id) => write!(f, "it claims Id {id:?}"),
        }
    }
}

/// Handshakes with a new connection and, if it is acceptable, installs it
/// as the slot's helper (replacing an older connection).
async fn admit(inner: Arc<Inner>, index: usize, stream: UnixStream) {
    let slot = &inner.slots[index];
    let id = slot.spec.id.as_str();
    match handshake(&inner, index, stream).await {
        Ok(peer) => {
            if inner.stopping.load(Ordering::Acquire) {
                peer.conn.close_now().await;
                return;
            }
            let conn = Connection::clone(&peer.conn);
            let generation = peer.generation;
            tracing::info!(helper = %id, pid = peer.pid, uid = peer.uid, "helper connected");
            let old = slot.state().peer.replace(peer);
            inner.notify();
            if let Some(old) = old {
                // Closed once a call still running on it (if any) is done.
                tracing::info!(helper = %id, old_pid = old.pid, "replacing older connection");
            }
            // Learn now whether it streams, so that the first save or load
            // (in the VM's downtime) does not wait for the introspection.
            if let Some(peer) = slot.peer().filter(|p| p.generation == generation) {
                super::transfer::mode(&inner, index, &peer).await;
            }
            watch(inner.clone(), index, conn, generation).await;
        }
        Err((pid, Rejection::Probe)) => {
            tracing::debug!(helper = %id, pid, "a connection closed before the handshake (a probe)");
        }
        Err((pid, why)) => {
            tracing::warn!(helper = %id, pid, "rejected connection: {why}");
            slot.state().last_rejection = Some(why.to_string());
        }
    }
}

/// Waits until the connection closes, then empties the slot if it still
/// holds this connection.
async fn watch(inner: Arc<Inner>, index: usize, conn: Connection, generation: u64) {
    conn.closed().await;
    let slot = &inner.slots[index];
    let mut state = slot.state();
    if state.peer.as_ref().map(|p| p.generation) == Some(generation) {
        state.peer = None;
        drop(state);
        tracing::info!(helper = %slot.spec.id, "helper disconnected");
        inner.notify();
    }
}

async fn handshake(
    inner: &Inner,
    index: usize,
    stream: UnixStream,
) -> Result<Peer, (Option<u32>, Rejection)> {
    let slot = &inner.slots[index];
    // Checked before any D-Bus byte, as the control socket does: a peer of
    // another user gets no handshake at all.
    let (uid, pid) =
        crate::sys::peer_credentials(&stream).map_err(|e| (None, Rejection::Credentials(e)))?;
    // The kernel reports pid 0 for a peer outside this pid namespace.
    let pid = u32::try_from(pid).ok().filter(|&pid| pid != 0);
    if !inner.config.allow_uids.contains(&uid) {
        return Err((pid, Rejection::Uid(uid)));
    }
    let limit = inner.config.handshake_timeout;
    if probe(&stream, limit).await {
        return Err((pid, Rejection::Probe));
    }
    let guid = Guid::generate();
    let (shim, bus) = BusShim::new(guid.to_string());
    let build = Builder::unix_stream(stream)
        .server(guid)
        .p2p()
        .auth_mechanism(AuthMechanism::External)
        .serve_at(bus_shim::BUS_PATH, shim)
        .build();
    // zbus 6.2.1's handshake server indexes before the start of its buffer
    // when a line is a bare "\n" and panics: contain that to this peer.
    let build = AssertUnwindSafe(build).catch_unwind();
    let conn = match rt::timeout(limit, build).await {
        Ok(Ok(Ok(conn))) => conn,
        Ok(Ok(Err(e))) => return Err((None, Rejection::Handshake(e))),
        Ok(Err(panic)) => return Err((None, Rejection::HandshakePanic(panic_text(&*panic)))),
        Err(rt::Elapsed) => return Err((None, Rejection::HandshakeTimeout)),
    };
    // Taken before anything else can await, to see the peer's first message.
    let messages = zbus::MessageStream::from(&conn);
    let result = check_id(inner, index, &conn, &bus, messages).await;
    match result {
        Ok(bus_name) => {
            if let Some(name) = &bus_name {
                tracing::debug!(unique_name = %name, "bus-style helper");
            }
            let generation = {
                let mut state = slot.state();
                state.next_generation += 1;
                state.next_generation
            };
            Ok(Peer {
                conn: super::PeerConn::new(conn),
                pid,
                uid,
                generation,
                bus_name,
            })
        }
        Err(rejection) => {
            // The helper learns why before the connection closes.
            let _ = crate::iface::send_rejected(&conn, &rejection.to_string()).await;
            let _ = conn.close().await;
            Err((pid, rejection))
        }
    }
}

/// Whether the peer closed the connection without a byte, waiting up to
/// `limit` for it to say something (a D-Bus client speaks first: GDBus,
/// libdbus, sd-bus and zbus at once).
pub(super) async fn probe(stream: &UnixStream, limit: Duration) -> bool {
    match rt::timeout(limit, rt::readable(stream)).await {
        Ok(Ok(())) => crate::sys::closed_without_data(stream),
        // The handshake reports what is wrong.
        _ => false,
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Reads the helper's `Id` and checks it against its socket's; returns,
/// for a bus-style helper, the unique name it was given.
async fn check_id(
    inner: &Inner,
    index: usize,
    conn: &Connection,
    bus: &bus_shim::Shared,
    messages: zbus::MessageStream,
) -> Result<Option<String>, Rejection> {
    // The Id reads end a little before the whole wait does, so that a peer
    // that keeps answering wrongly is rejected for its last answer rather
    // than for the time.
    let limit = inner.config.handshake_timeout;
    let deadline = Instant::now() + limit - limit / 10;
    let read = async {
        let bus_name = bus_shim::settle(messages, bus).await;
        let id = read_id_when_exported(conn, bus_name.as_deref(), deadline).await;
        id.map(|id| (id, bus_name))
    };
    let (id, bus_name) = match rt::timeout(inner.config.handshake_timeout, read).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Err(Rejection::IdCall(e)),
        Err(rt::Elapsed) => return Err(Rejection::IdTimeout),
    };
    if let Err(e) = stream::validate_id(&id) {
        return Err(Rejection::InvalidId(id, e));
    }
    if id != inner.slots[index].spec.id {
        return Err(Rejection::WrongId(id));
    }
    Ok(bus_name)
}

/// First pause before reading the Id again from a peer that has not
/// exported its object yet; doubled after each try.
const ID_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(2);
/// Longest pause between two reads of the Id.
const ID_RETRY_MAX_PAUSE: Duration = Duration::from_millis(100);
/// How long one read of the Id may take before it is sent again (a peer
/// still setting up may drop a call); the handshake timeout bounds all.
const ID_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads the peer's `Id`, trying again while the peer answers that the
/// object or interface does not exist (yet), or does not answer, until
/// `deadline`; then the last answer is the error.
///
/// Libraries other than zbus (GDBus, libdbus, sd-bus) authenticate first
/// and export objects afterwards, and bus-style helpers export only after
/// `Hello` and `RequestName`: a read right after the handshake can reach
/// them before `/org/qemu/VMState1` exists. The caller also bounds the
/// whole read with a timeout at `deadline`.
async fn read_id_when_exported(
    conn: &Connection,
    destination: Option<&str>,
    deadline: Instant,
) -> zbus::Result<String> {
    let mut pause = ID_RETRY_FIRST_PAUSE;
    let mut last: Option<zbus::Error> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Past the deadline with no answer at all, the caller's timeout
        // ends the wait.
        let attempt = if left.is_zero() {
            ID_ATTEMPT_TIMEOUT
        } else {
            ID_ATTEMPT_TIMEOUT.min(left)
        };
        match rt::timeout(attempt, iface::read_id_at(conn, destination)).await {
            Ok(Err(e)) if not_exported_yet(&e) => {
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tracing::debug!("Id not readable yet, trying again: {e}");
                last = Some(e);
            }
            Ok(other) => return other,
            Err(rt::Elapsed) => {
                if let Some(e) = last.take().filter(|_| Instant::now() >= deadline) {
                    return Err(e);
                }
                tracing::debug!("Id read unanswered, trying again");
            }
        }
        rt::sleep(pause).await;
        pause = (pause * 2).min(ID_RETRY_MAX_PAUSE);
    }
}

/// Whether `e` says the object, interface or method is not there (which
/// a peer still setting up replies), rather than a real failure.
fn not_exported_yet(e: &zbus::Error) -> bool {
    use zbus::fdo::Error as Fdo;
    match e {
        zbus::Error::FDO(e) => matches!(
            **e,
            Fdo::UnknownObject(_) | Fdo::UnknownInterface(_) | Fdo::UnknownMethod(_)
        ),
        _ => false,
    }
}
