//! How one helper's state moves, and how the coordinator finds out.
//!
//! A helper that serves `org.dbusvmstate.Stream1` gets its state moved
//! through a socket pair ([`Mode::Stream`]); any other helper through
//! `org.qemu.VMState1` `Save`/`Load` messages ([`Mode::Plain`]). A
//! streaming helper that also serves `org.dbusvmstate.SealedLoad1` can be
//! loaded before its state's size is known ([`extensions`]). The
//! coordinator asks once per connection, by introspecting the helper's
//! object before the first save or load on it, and remembers the answer
//! until the helper reconnects.

use std::fmt;

use super::{Inner, Peer};
use crate::iface;
use crate::rt;

pub(crate) mod pair;
pub(crate) mod pool;

/// How a helper's state moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `org.qemu.VMState1` `Save`/`Load`: the state inside one D-Bus
    /// message, at most 128 MiB.
    Plain,
    /// `org.dbusvmstate.Stream1` `SaveFd`/`LoadFd`: the state through a
    /// socket passed to the helper, any size, never through D-Bus.
    Stream,
}

impl Mode {
    /// `"plain"` or `"stream"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Stream => "stream",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mode to use with the helper in slot `index`, connected as `peer`
/// (from its [`extensions`]).
pub(crate) async fn mode(inner: &Inner, index: usize, peer: &Peer) -> Mode {
    if extensions(inner, index, peer).await.stream {
        Mode::Stream
    } else {
        Mode::Plain
    }
}

/// The extensions the helper in slot `index`, connected as `peer`, serves.
///
/// Introspects the helper unless its answer for this connection is known.
/// A helper that answers with an error (no introspection, say) serves
/// none, and that is remembered; one that does not answer in the handshake
/// timeout or whose connection fails is taken as serving none this time
/// only (its `Save` or `Load` will then report the real problem).
pub(crate) async fn extensions(inner: &Inner, index: usize, peer: &Peer) -> iface::Extensions {
    let slot = &inner.slots[index];
    if let Some((generation, known)) = slot.state().stream_support {
        if generation == peer.generation {
            return known;
        }
    }
    let id = &slot.spec.id;
    let limit = inner.config.handshake_timeout;
    let none = iface::Extensions::default();
    let found = match rt::timeout(limit, iface::extensions(&peer.conn, peer.destination())).await {
        Ok(Ok(found)) => found,
        Ok(Err(e @ (zbus::Error::MethodError(..) | zbus::Error::FDO(_)))) => {
            tracing::debug!(helper = %id, "introspection refused, using plain Save/Load: {e}");
            none
        }
        Ok(Err(e)) => {
            tracing::debug!(helper = %id, "introspection failed, using plain Save/Load: {e}");
            return none;
        }
        Err(rt::Elapsed) => {
            tracing::debug!(helper = %id, "no introspection reply in {limit:?}, using plain Save/Load");
            return none;
        }
    };
    tracing::debug!(
        helper = %id,
        streams = found.stream,
        sealed_load = found.sealed_load,
        "detected the extensions"
    );
    slot.state().stream_support = Some((peer.generation, found));
    found
}
