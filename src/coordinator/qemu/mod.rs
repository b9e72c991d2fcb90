//! QEMU's front door: one more socket, on which the coordinator is the
//! D-Bus "bus" of an unmodified QEMU's `dbus-vmstate` object, for QEMU
//! alone.
//!
//! QEMU connects once, at start-up, to the address of its
//! `-object dbus-vmstate,addr=...` and keeps that connection for its whole
//! life. The coordinator accepts it like a helper's (the peer's uid checked
//! before any D-Bus byte, then the handshake as server), keeps it until it
//! closes, and lets a newer QEMU connection replace an older one (a
//! restarted QEMU). What it answers on that connection ([`door`]) and how
//! it runs QEMU's saves and loads ([`round`], [`transfer`]) is described in
//! [the coordinator's docs](crate::coordinator#qemu) and
//! `protocol/qemu-front-door.md`.

mod door;
mod round;
mod rules;
mod transfer;

use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use zbus::connection::{AuthMechanism, Builder};
use zbus::Guid;

use super::report::{QemuRound, QemuStatus};
use super::{Inner, PeerConn};
use crate::error::Call;
use crate::rt;

/// The front door's name: in errors about its socket, and the name of a
/// socket-activated front door socket.
pub(crate) const NAME: &str = "qemu";

/// The error of binding QEMU's socket, which is no helper's: `Bind` and
/// `SocketInUse` from [`socket::bind`](super::socket::bind) said of QEMU's
/// socket.
pub(crate) fn bind_error(e: crate::Error) -> crate::Error {
    use crate::Error;
    match e {
        Error::Bind {
            path,
            reason,
            source,
            ..
        } => Error::Io {
            what: "cannot listen on QEMU's socket",
            path: Some(path),
            source: std::io::Error::new(source.kind(), format!("{reason}: {source}")),
        },
        Error::SocketInUse { path, .. } => Error::Io {
            what: "cannot listen on QEMU's socket",
            path: Some(path),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "a live listener serves it already",
            ),
        },
        other => other,
    }
}

/// Pause after an accept error before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// QEMU's connection.
#[derive(Debug)]
struct Connected {
    conn: Arc<PeerConn>,
    pid: Option<u32>,
    uid: u32,
    generation: u64,
}

/// What the front door knows, shared by its tasks.
#[derive(Debug, Default)]
struct State {
    connected: Option<Connected>,
    next_generation: u64,
    last_save: Option<(u64, QemuRound)>,
    last_load: Option<(u64, QemuRound)>,
    last_rejection: Option<String>,
}

/// The front door's socket and QEMU's connection on it.
#[derive(Debug)]
pub(crate) struct QemuSlot {
    /// The socket QEMU connects to.
    pub socket: PathBuf,
    state: Mutex<State>,
}

impl QemuSlot {
    /// A front door on `socket`, no QEMU connected yet.
    pub fn new(socket: PathBuf) -> Self {
        QemuSlot {
            socket,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is one assignment or push: a poisoned lock still
        // holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `status` shows.
    pub fn status(&self) -> QemuStatus {
        let state = self.state();
        let connected = state.connected.as_ref();
        QemuStatus {
            socket: self.socket.clone(),
            connected: connected.is_some(),
            pid: connected.and_then(|c| c.pid),
            uid: connected.map(|c| c.uid),
            last_save: state.last_save.as_ref().map(|(_, r)| r.clone()),
            last_load: state.last_load.as_ref().map(|(_, r)| r.clone()),
            last_rejection: state.last_rejection.clone(),
        }
    }

    /// Takes QEMU's connection out, for closing at shutdown.
    pub fn take(&self) -> Option<Arc<PeerConn>> {
        self.state().connected.take().map(|c| c.conn)
    }

    /// Adds one call's outcome to round `round`'s record of `call`: a new
    /// round starts a new record.
    fn record(
        &self,
        call: Call,
        round: u64,
        started: std::time::Instant,
        outcome: Result<(&str, u64), String>,
    ) {
        let mut state = self.state();
        let last = match call {
            Call::Save => &mut state.last_save,
            _ => &mut state.last_load,
        };
        if last.as_ref().map(|(r, _)| *r) != Some(round) {
            *last = Some((
                round,
                QemuRound {
                    helpers: Vec::new(),
                    bytes: 0,
                    duration: Duration::ZERO,
                    failures: Vec::new(),
                },
            ));
        }
        let Some((_, record)) = last.as_mut() else {
            return;
        };
        record.duration = started.elapsed();
        match outcome {
            Ok((id, bytes)) => {
                record.helpers.push(id.to_string());
                record.bytes += bytes;
            }
            Err(failure) => record.failures.push(failure),
        }
    }
}

/// Starts the front door's accept loop; abort the handle to stop it.
pub(super) fn start(inner: Arc<Inner>, listener: rt::Listener) -> AbortHandle {
    let (handle, registration) = AbortHandle::new_pair();
    let task = Abortable::new(accept_loop(inner, listener), registration);
    drop(rt::spawn(task));
    handle
}

async fn accept_loop(inner: Arc<Inner>, listener: rt::Listener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let inner = inner.clone();
                drop(rt::spawn(async move { admit(inner, stream).await }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on QEMU's socket");
                rt::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Handshakes with a new connection, installs it as QEMU's (closing an
/// older one) and answers it until it closes.
async fn admit(inner: Arc<Inner>, stream: UnixStream) {
    let Some(slot) = inner.qemu.as_ref() else {
        return;
    };
    let (conn, messages, pid, uid) = match handshake(&inner, stream).await {
        Ok(accepted) => accepted,
        Err((pid, why)) => {
            tracing::warn!(pid, "rejected connection on QEMU's socket: {why}");
            slot.state().last_rejection = Some(why);
            return;
        }
    };
    if inner.stopping.load(Ordering::Acquire) {
        let _ = conn.close().await;
        return;
    }
    let peer = PeerConn::new(conn.clone());
    let (generation, old) = {
        let mut state = slot.state();
        state.next_generation += 1;
        let generation = state.next_generation;
        let old = state.connected.replace(Connected {
            conn: peer,
            pid,
            uid,
            generation,
        });
        (generation, old)
    };
    tracing::info!(pid, uid, "QEMU connected");
    if let Some(old) = old {
        tracing::info!(
            old_pid = old.pid,
            "a newer QEMU connection replaces the older one"
        );
        old.conn.close_now().await;
    }
    door::serve(inner.clone(), conn.clone(), messages, generation).await;
    let mut state = slot.state();
    if state.connected.as_ref().map(|c| c.generation) == Some(generation) {
        state.connected = None;
        drop(state);
        tracing::info!("QEMU disconnected");
    }
}

/// The peer's credentials and the D-Bus handshake as server.
async fn handshake(
    inner: &Inner,
    stream: UnixStream,
) -> Result<(zbus::Connection, zbus::MessageStream, Option<u32>, u32), (Option<u32>, String)> {
    let (uid, pid) = crate::sys::peer_credentials(&stream)
        .map_err(|e| (None, format!("cannot read peer credentials: {e}")))?;
    let pid = u32::try_from(pid).ok().filter(|&pid| pid != 0);
    if !inner.config.allow_uids.contains(&uid) {
        return Err((pid, format!("peer uid {uid} is not allowed")));
    }
    let build = Builder::unix_stream(stream)
        .server(Guid::generate())
        .p2p()
        .auth_mechanism(AuthMechanism::External)
        .build_message_stream();
    // As for helpers (see `accept`): a malformed handshake must not take
    // the process down.
    let build = AssertUnwindSafe(build).catch_unwind();
    let messages = match rt::timeout(inner.config.handshake_timeout, build).await {
        Ok(Ok(Ok(messages))) => messages,
        Ok(Ok(Err(e))) => return Err((pid, format!("D-Bus handshake failed: {e}"))),
        Ok(Err(_)) => {
            return Err((
                pid,
                "D-Bus handshake failed: malformed input crashed it".to_string(),
            ))
        }
        Err(rt::Elapsed) => return Err((pid, "D-Bus handshake did not finish in time".into())),
    };
    let conn = zbus::Connection::from(&messages);
    Ok((conn, messages, pid, uid))
}
