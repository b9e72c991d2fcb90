//! A bus-style helper written directly on zbus, the way Rust helpers for
//! QEMU's dbus-vmstate (libslirp-helper among them) connect: to a bus
//! address, with `Hello` and `RequestName("org.qemu.VMState1")`.

use std::sync::{Arc, Mutex};

use dbus_vmstate::iface;
use zbus::Connection;

/// The helper's state, shared with the test.
pub type Shared = Arc<Mutex<Vec<u8>>>;

struct VmState {
    id: String,
    data: Shared,
}

#[zbus::interface(name = "org.qemu.VMState1")]
impl VmState {
    #[zbus(property)]
    async fn id(&self) -> String {
        self.id.clone()
    }

    async fn save(&self) -> iface::Blob {
        iface::Blob(self.data.lock().unwrap().clone())
    }

    async fn load(&self, data: serde_bytes::ByteBuf) {
        *self.data.lock().unwrap() = data.into_vec();
    }
}

/// Connects to `address` as to a message bus, owns org.qemu.VMState1 and
/// serves `data` as helper `id`. Keep the connection for the test.
pub async fn connect_bus_style(address: &str, id: &str, data: Shared) -> Connection {
    zbus::connection::Builder::address(address)
        .name(iface::INTERFACE)
        .serve_at(
            iface::OBJECT_PATH,
            VmState {
                id: id.to_string(),
                data,
            },
        )
        .build()
        .await
        .unwrap_or_else(|e| panic!("zbus bus-style helper {id}: {e}"))
}
