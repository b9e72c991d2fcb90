//! A connected helper and its connection.

use std::sync::Arc;

use zbus::Connection;

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
    pub uid: u32,
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
