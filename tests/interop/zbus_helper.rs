//! Helpers written directly on zbus: bus-style, the way Rust helpers for
//! QEMU's dbus-vmstate (libslirp-helper among them) connect, to a bus
//! address with `Hello` and `RequestName("org.qemu.VMState1")`; and
//! peer-to-peer. Both record the destination field of the calls they get.

use std::sync::{Arc, Mutex};

use dbus_vmstate::iface;
use zbus::message::Header;
use zbus::Connection;

/// A helper's state and the destinations of the `Save` calls it got,
/// shared with the test.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub save_destinations: Arc<Mutex<Vec<Option<String>>>>,
}

impl Seen {
    pub fn with(data: Vec<u8>) -> Self {
        let seen = Seen::default();
        *seen.data.lock().unwrap() = data;
        seen
    }

    pub fn data(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    pub fn save_destinations(&self) -> Vec<Option<String>> {
        self.save_destinations.lock().unwrap().clone()
    }
}

struct VmState {
    id: String,
    seen: Seen,
}

#[zbus::interface(name = "org.qemu.VMState1")]
impl VmState {
    #[zbus(property)]
    async fn id(&self) -> String {
        self.id.clone()
    }

    async fn save(&self, #[zbus(header)] header: Header<'_>) -> iface::Blob {
        let destination = header.destination().map(|d| d.to_string());
        self.seen
            .save_destinations
            .lock()
            .unwrap()
            .push(destination);
        iface::Blob(self.seen.data())
    }

    async fn load(&self, data: serde_bytes::ByteBuf) {
        *self.seen.data.lock().unwrap() = data.into_vec();
    }
}

fn object(id: &str, seen: &Seen) -> VmState {
    VmState {
        id: id.to_string(),
        seen: seen.clone(),
    }
}

/// Connects to `address` as to a message bus, owns org.qemu.VMState1 and
/// serves as helper `id`. Keep the connection for the test.
pub async fn connect_bus_style(address: &str, id: &str, seen: &Seen) -> Connection {
    try_connect_bus_style(address, id, seen)
        .await
        .unwrap_or_else(|e| panic!("zbus bus-style helper {id}: {e}"))
}

/// [`connect_bus_style`], for a helper the coordinator may turn away
/// before the helper's own setup is done.
pub async fn try_connect_bus_style(
    address: &str,
    id: &str,
    seen: &Seen,
) -> zbus::Result<Connection> {
    zbus::connection::Builder::address(address)
        .name(iface::INTERFACE)
        .serve_at(iface::OBJECT_PATH, object(id, seen))
        .build()
        .await
}

/// Connects to `socket` peer to peer and serves as helper `id`.
pub async fn connect_p2p(socket: &std::path::Path, id: &str, seen: &Seen) -> Connection {
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .serve_at(iface::OBJECT_PATH, object(id, seen))
        .build()
        .await
        .unwrap_or_else(|e| panic!("zbus p2p helper {id}: {e}"))
}

/// A bus-style helper that serves its object at the wrong path, so that
/// reading its Id keeps failing with `UnknownObject`.
pub async fn connect_bus_style_elsewhere(address: &str, id: &str) -> zbus::Result<Connection> {
    zbus::connection::Builder::address(address)
        .name(iface::INTERFACE)
        .serve_at("/elsewhere", object(id, &Seen::default()))
        .build()
        .await
}
