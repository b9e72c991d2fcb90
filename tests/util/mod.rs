//! Shared test support: short temporary socket directories, in-process
//! helpers with scripted behaviour, and a timeout around every socket test.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbus_vmstate::helper::{self, BoxError, State};
use dbus_vmstate::{coordinator, iface, rt};
use zbus::Connection;

pub mod process;

/// Every socket test runs under this deadline, so a hang fails the test
/// instead of stalling CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Short timeouts so that tests of missing or hung helpers finish quickly.
pub const SHORT: Duration = Duration::from_millis(500);

/// Runs `body` on the runtime, failing the test if it takes longer than
/// [`TEST_TIMEOUT`].
pub fn run<F: Future<Output = T>, T>(body: F) -> T {
    rt::block_on(async {
        match rt::timeout(TEST_TIMEOUT, body).await {
            Ok(v) => v,
            Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
        }
    })
}

/// A temporary directory under /tmp with a short name (`sun_path` is 108
/// bytes), removed when dropped.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dv")
        .tempdir_in("/tmp")
        .expect("create temporary directory")
}

/// Deterministic test data of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// How an in-memory helper behaves when called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Save returns the state; Load replaces it.
    Normal,
    /// Save fails with this message.
    FailSave(String),
    /// Load fails with this message.
    FailLoad(String),
    /// Save never returns (until the test process ends).
    HangSave,
    /// Load never returns.
    HangLoad,
}

/// An in-memory helper built on the library's [`State`] trait, counting
/// the calls it sees.
#[derive(Debug)]
pub struct MemHelper {
    pub id: String,
    pub data: Mutex<Vec<u8>>,
    pub behaviour: Behaviour,
    pub saves: AtomicUsize,
    pub loads: AtomicUsize,
}

impl MemHelper {
    pub fn new(id: &str, data: Vec<u8>) -> Arc<Self> {
        Self::with(id, data, Behaviour::Normal)
    }

    pub fn with(id: &str, data: Vec<u8>, behaviour: Behaviour) -> Arc<Self> {
        Arc::new(MemHelper {
            id: id.to_string(),
            data: Mutex::new(data),
            behaviour,
            saves: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
        })
    }

    pub fn data(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    pub fn saves(&self) -> usize {
        self.saves.load(Ordering::SeqCst)
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

/// Blocks a blocking-pool thread "forever" (long past any test).
fn hang() {
    std::thread::sleep(Duration::from_secs(3600));
}

impl State for MemHelper {
    fn id(&self) -> &str {
        &self.id
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::FailSave(msg) => Err(msg.clone().into()),
            Behaviour::HangSave => {
                hang();
                Err("woke up".into())
            }
            _ => Ok(self.data()),
        }
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::FailLoad(msg) => Err(msg.clone().into()),
            Behaviour::HangLoad => {
                hang();
                Err("woke up".into())
            }
            _ => {
                *self.data.lock().unwrap() = data;
                Ok(())
            }
        }
    }
}

/// Serves `state` on `socket` in the background; the task ends when the
/// coordinator closes the connection.
pub fn spawn_helper(
    socket: impl AsRef<Path>,
    state: Arc<dyn State>,
) -> rt::Task<dbus_vmstate::Result<()>> {
    let socket = socket.as_ref().to_path_buf();
    rt::spawn(async move {
        helper::serve(
            socket,
            state,
            helper::Options::default().connect_timeout(Duration::from_secs(10)),
        )
        .await
    })
}

/// A coordinator builder for `ids` in `dir`, with short timeouts.
pub fn builder(dir: &Path, ids: &[&str]) -> coordinator::Builder {
    coordinator::Builder::new()
        .socket_dir(dir, ids.iter().copied())
        .connect_timeout(Duration::from_secs(10))
        .call_timeout(Duration::from_secs(10))
}

/// Socket path of `id` in `dir`.
pub fn sock(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.sock"))
}

/// Waits until the coordinator sees every required helper.
pub async fn connected(c: &coordinator::Coordinator) {
    c.wait_connected(Duration::from_secs(10))
        .await
        .expect("helpers connect");
}

/// What a [`Scripted`] helper does on `Save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Close the connection in the middle of the call (as a crash would).
    CrashInSave,
    /// Close the connection in the middle of `Load`.
    CrashInLoad,
}

/// A misbehaving helper written directly on zbus, for what the library's
/// helper side never does.
pub struct Scripted {
    id: String,
    script: Script,
    conn: Arc<Mutex<Option<Connection>>>,
    pub calls: Arc<AtomicUsize>,
}

#[zbus::interface(name = "org.qemu.VMState1")]
impl Scripted {
    #[zbus(property)]
    async fn id(&self) -> String {
        self.id.clone()
    }

    async fn save(&self) -> zbus::fdo::Result<iface::Blob> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.script == Script::CrashInSave {
            self.crash().await;
        }
        Ok(iface::Blob(vec![1, 2, 3]))
    }

    async fn load(&self, _data: serde_bytes::ByteBuf) -> zbus::fdo::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.script == Script::CrashInLoad {
            self.crash().await;
        }
        Ok(())
    }
}

impl Scripted {
    async fn crash(&self) {
        let conn = self.conn.lock().unwrap().take();
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
        futures::future::pending::<()>().await;
    }
}

/// Connects a [`Scripted`] helper to `socket`; returns its call counter.
pub async fn spawn_scripted(socket: &Path, id: &str, script: Script) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let slot = Arc::new(Mutex::new(None));
    let object = Scripted {
        id: id.to_string(),
        script,
        conn: slot.clone(),
        calls: calls.clone(),
    };
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let conn = zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .serve_at(iface::OBJECT_PATH, object)
        .build()
        .await
        .expect("handshake");
    *slot.lock().unwrap() = Some(conn);
    calls
}

/// A helper whose `Save` replies with a string instead of `ay`.
pub struct WrongType;

#[zbus::interface(name = "org.qemu.VMState1")]
impl WrongType {
    #[zbus(property)]
    async fn id(&self) -> String {
        "a".to_string()
    }

    async fn save(&self) -> String {
        "not bytes".to_string()
    }
}

/// Connects a [`WrongType`] helper (Id "a") to `socket`; keep the returned
/// connection alive for the test.
pub async fn connect_wrong_type(socket: &Path) -> Connection {
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .serve_at(iface::OBJECT_PATH, WrongType)
        .build()
        .await
        .expect("handshake")
}
