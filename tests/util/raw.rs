//! The fake helper written directly on zbus, for what the library's helper
//! side never does: report any Id (empty, too long, with a NUL), reply with
//! the wrong type, close its connection in the middle of a call, lie about
//! a streamed transfer, connect as to a message bus, serve its object at
//! another path. It records the destination field of the `Save` calls it
//! gets.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dbus_vmstate::iface;
use zbus::message::Header;
use zbus::Connection;

/// What its `Save` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Save {
    /// Replies with its state.
    Reply,
    /// Replies with a string instead of `ay`.
    WrongType,
    /// Closes the connection in the middle of the call (as a crash would).
    Crash,
}

/// A streaming extension whose `SaveFd` writes `write` bytes but claims
/// `claim`, and whose `LoadFd` reads `read` bytes, closes its end and
/// claims success.
#[derive(Debug, Clone, Copy)]
struct Liar {
    write: usize,
    claim: u64,
    read: usize,
}

/// A misbehaving helper on raw zbus, built as `Raw::new("a").crash_in_save()`
/// and connected with [`Raw::connect`] or [`Raw::connect_bus_style`]. Clones
/// share the state and the counters.
#[derive(Debug, Clone)]
pub struct Raw {
    id: String,
    path: String,
    save: Save,
    crash_in_load: bool,
    liar: Option<Liar>,
    data: Arc<Mutex<Vec<u8>>>,
    calls: Arc<AtomicUsize>,
    id_reads: Arc<AtomicUsize>,
    save_destinations: Arc<Mutex<Vec<Option<String>>>>,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl Raw {
    /// A helper that reports `id` (whatever it is) and saves and loads an
    /// empty state.
    pub fn new(id: &str) -> Raw {
        Raw {
            id: id.to_string(),
            path: iface::OBJECT_PATH.to_string(),
            save: Save::Reply,
            crash_in_load: false,
            liar: None,
            data: Default::default(),
            calls: Default::default(),
            id_reads: Default::default(),
            save_destinations: Default::default(),
            conn: Default::default(),
        }
    }

    /// Holds `data`.
    pub fn with_data(self, data: Vec<u8>) -> Raw {
        self.set_data(data);
        self
    }

    /// Closes its connection in the middle of `Save`.
    pub fn crash_in_save(mut self) -> Raw {
        self.save = Save::Crash;
        self
    }

    /// Closes its connection in the middle of `Load`.
    pub fn crash_in_load(mut self) -> Raw {
        self.crash_in_load = true;
        self
    }

    /// `Save` replies with a string instead of `ay`.
    pub fn wrong_save_type(mut self) -> Raw {
        self.save = Save::WrongType;
        self
    }

    /// Serves `org.dbusvmstate.Stream1`, lying: `SaveFd` writes `write`
    /// bytes and reports `claim`; `LoadFd` reads `read` bytes, closes its
    /// end and reports success.
    pub fn lying_stream(mut self, write: usize, claim: u64, read: usize) -> Raw {
        self.liar = Some(Liar { write, claim, read });
        self
    }

    /// Serves its object at `path` instead of `/org/qemu/VMState1`.
    pub fn at_path(mut self, path: &str) -> Raw {
        self.path = path.to_string();
        self
    }

    /// Connects to `socket` peer to peer; keep the connection for the test.
    pub async fn connect(&self, socket: &Path) -> Connection {
        let stream = UnixStream::connect(socket).expect("connect");
        let builder = zbus::connection::Builder::unix_stream(stream).p2p();
        let conn = self
            .objects(builder)
            .build()
            .await
            .unwrap_or_else(|e| panic!("raw helper {:?}: handshake: {e}", self.id));
        self.keep_for_crash(&conn);
        conn
    }

    /// Connects to `address` as to a message bus (`Hello`, then
    /// `RequestName("org.qemu.VMState1")`), as Rust helpers for QEMU's
    /// dbus-vmstate (libslirp-helper among them) do.
    pub async fn connect_bus_style(&self, address: &str) -> zbus::Result<Connection> {
        let builder = zbus::connection::Builder::address(address).name(iface::INTERFACE);
        let conn = self.objects(builder).build().await?;
        self.keep_for_crash(&conn);
        Ok(conn)
    }

    /// A helper that crashes closes its own connection, so it keeps a
    /// handle to it (only then: the handle keeps the connection alive).
    fn keep_for_crash(&self, conn: &Connection) {
        if self.save == Save::Crash || self.crash_in_load {
            *self.conn.lock().unwrap() = Some(conn.clone());
        }
    }

    fn objects<'a>(&self, builder: zbus::connection::Builder<'a>) -> zbus::connection::Builder<'a> {
        let path = self.path.clone();
        let builder = match self.save {
            Save::WrongType => builder.serve_at(path.clone(), WrongType(self.id.clone())),
            _ => builder.serve_at(path.clone(), Vm(self.clone())),
        };
        match self.liar {
            Some(liar) => builder.serve_at(path, liar),
            None => builder,
        }
    }

    /// The state it holds now.
    pub fn data(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    /// Replaces the state it holds.
    pub fn set_data(&self, data: Vec<u8>) {
        *self.data.lock().unwrap() = data;
    }

    /// `Save` and `Load` calls seen.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Reads of its `Id` property (the coordinator's check on accepting it).
    pub fn id_reads(&self) -> usize {
        self.id_reads.load(Ordering::SeqCst)
    }

    /// The destination field of each `Save` call seen.
    pub fn save_destinations(&self) -> Vec<Option<String>> {
        self.save_destinations.lock().unwrap().clone()
    }

    async fn crash(&self) {
        let conn = self.conn.lock().unwrap().take();
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
        futures::future::pending::<()>().await;
    }
}

struct Vm(Raw);

#[zbus::interface(name = "org.qemu.VMState1")]
impl Vm {
    #[zbus(property)]
    async fn id(&self) -> String {
        self.0.id_reads.fetch_add(1, Ordering::SeqCst);
        self.0.id.clone()
    }

    async fn save(&self, #[zbus(header)] header: Header<'_>) -> iface::Blob {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let destination = header.destination().map(|d| d.to_string());
        self.0.save_destinations.lock().unwrap().push(destination);
        if self.0.save == Save::Crash {
            self.0.crash().await;
        }
        iface::Blob(self.0.data())
    }

    async fn load(&self, data: serde_bytes::ByteBuf) {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if self.0.crash_in_load {
            self.0.crash().await;
        }
        self.0.set_data(data.into_vec());
    }
}

struct WrongType(String);

#[zbus::interface(name = "org.qemu.VMState1")]
impl WrongType {
    #[zbus(property)]
    async fn id(&self) -> String {
        self.0.clone()
    }

    async fn save(&self) -> String {
        "not bytes".to_string()
    }
}

#[zbus::interface(name = "org.dbusvmstate.Stream1")]
impl Liar {
    async fn save_fd(&self, fd: zbus::OwnedFd) -> u64 {
        let mut s = UnixStream::from(std::os::fd::OwnedFd::from(fd));
        let _ = s.write_all(&vec![1; self.write]);
        self.claim
    }

    async fn load_fd(&self, fd: zbus::OwnedFd, _size: u64) {
        let mut s = UnixStream::from(std::os::fd::OwnedFd::from(fd));
        let _ = s.read_exact(&mut vec![0; self.read]);
    }
}
