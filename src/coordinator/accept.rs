//! Accepting helpers: the D-Bus handshake as server, the peer's uid, its
//! `Id`, and installing the connection in its slot.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use zbus::connection::{AuthMechanism, Builder};
use zbus::{Connection, Guid};

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
    Handshake(zbus::Error),
    HandshakeTimeout,
    Credentials(std::io::Error),
    Uid(Option<u32>),
    IdCall(zbus::Error),
    IdTimeout,
    InvalidId(String, stream::Error),
    WrongId(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Handshake(e) => write!(f, "D-Bus handshake failed: {e}"),
            Rejection::HandshakeTimeout => write!(f, "D-Bus handshake did not finish in time"),
            Rejection::Credentials(e) => write!(f, "cannot read peer credentials: {e}"),
            Rejection::Uid(Some(uid)) => write!(f, "peer uid {uid} is not allowed"),
            Rejection::Uid(None) => write!(f, "peer uid is unknown"),
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
            tracing::info!(helper = %id, pid = ?peer.pid, uid = ?peer.uid, "helper connected");
            let old = slot.state().peer.replace(peer);
            inner.notify();
            if let Some(old) = old {
                // Closed once a call still running on it (if any) is done.
                tracing::info!(helper = %id, old_pid = ?old.pid, "replacing older connection");
            }
            watch(inner.clone(), index, conn, generation).await;
        }
        Err((pid, why)) => {
            tracing::warn!(helper = %id, pid = ?pid, "rejected connection: {why}");
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
    let limit = inner.config.handshake_timeout;
    let build = Builder::unix_stream(stream)
        .server(Guid::generate())
        .p2p()
        .auth_mechanism(AuthMechanism::External)
        .build();
    let conn = match rt::timeout(limit, build).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err((None, Rejection::Handshake(e))),
        Err(rt::Elapsed) => return Err((None, Rejection::HandshakeTimeout)),
    };
    let result = check_peer(inner, index, &conn).await;
    match result {
        Ok((pid, uid)) => {
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
            })
        }
        Err(rejection) => {
            let _ = conn.close().await;
            Err(rejection)
        }
    }
}

/// Checks the peer's uid and its `Id`; returns its pid and uid.
async fn check_peer(
    inner: &Inner,
    index: usize,
    conn: &Connection,
) -> Result<(Option<u32>, Option<u32>), (Option<u32>, Rejection)> {
    let creds = conn
        .peer_creds()
        .await
        .map_err(|e| (None, Rejection::Credentials(e)))?;
    let (pid, uid) = (creds.process_id(), creds.unix_user_id());
    match uid {
        Some(uid) if inner.config.allow_uids.contains(&uid) => {}
        other => return Err((pid, Rejection::Uid(other))),
    }
    let id = match rt::timeout(inner.config.handshake_timeout, iface::read_id(conn)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return Err((pid, Rejection::IdCall(e))),
        Err(rt::Elapsed) => return Err((pid, Rejection::IdTimeout)),
    };
    if let Err(e) = stream::validate_id(&id) {
        return Err((pid, Rejection::InvalidId(id, e)));
    }
    if id != inner.slots[index].spec.id {
        return Err((pid, Rejection::WrongId(id)));
    }
    Ok((pid, uid))
}
