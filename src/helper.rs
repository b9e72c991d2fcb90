//! The helper side: implement [`State`] for your state and call [`serve`].
//!
//! [`serve`] connects to the coordinator's socket for this helper (retrying
//! until the socket exists, up to a deadline), exports `org.qemu.VMState1`
//! at `/org/qemu/VMState1` over a peer-to-peer D-Bus connection, and
//! returns when the coordinator closes the connection.
//!
//! `Save` and `Load` run on a blocking thread pool, never on the D-Bus I/O
//! thread, so a slow save does not stall the connection.
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use dbus_vmstate::helper::{self, BoxError, State};
//!
//! struct Counter { id: String, value: Mutex<u64> }
//!
//! impl State for Counter {
//!     fn id(&self) -> &str { &self.id }
//!     fn save(&self) -> Result<Vec<u8>, BoxError> {
//!         Ok(self.value.lock().unwrap().to_le_bytes().to_vec())
//!     }
//!     fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
//!         let bytes: [u8; 8] = data.as_slice().try_into()?;
//!         *self.value.lock().unwrap() = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! let state = Arc::new(Counter { id: "counter".into(), value: Mutex::new(7) });
//! helper::serve_blocking("/run/vm0/vmstate/counter.sock", state, helper::Options::default())?;
//! # Ok::<(), dbus_vmstate::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::error::Error;
use crate::iface::{self, Blob};
use crate::rt;
use crate::stream;

/// Any error a [`State`] implementation returns; its text (with causes)
/// travels to the coordinator in the D-Bus error reply.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A helper's migratable state.
///
/// Implement [`State::id`] and either the buffer pair ([`State::save`],
/// [`State::load`]) or the streaming pair ([`State::save_to`],
/// [`State::load_from`]): each pair has a default built on the other.
/// Implementing neither of a pair recurses forever.
///
/// The methods are called on a blocking thread pool; they may block.
pub trait State: Send + Sync + 'static {
    /// The helper's Id: 1 to 255 bytes of UTF-8 without NUL. It must be the
    /// Id the coordinator expects on this socket.
    fn id(&self) -> &str;

    /// Returns the whole state.
    ///
    /// # Errors
    ///
    /// Any error, reported to the coordinator as
    /// `org.dbusvmstate.Error.SaveFailed`.
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        self.save_to(&mut out)?;
        Ok(out)
    }

    /// Replaces the state with `data`, which [`State::save`] produced on
    /// the source.
    ///
    /// # Errors
    ///
    /// Any error, reported to the coordinator as
    /// `org.dbusvmstate.Error.LoadFailed`.
    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        self.load_from(&mut data.as_slice())
    }

    /// Writes the whole state into `out`.
    ///
    /// # Errors
    ///
    /// As [`State::save`].
    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        out.write_all(&self.save()?)?;
        Ok(())
    }

    /// Reads the whole state from `input` and replaces the current one.
    ///
    /// # Errors
    ///
    /// As [`State::load`].
    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        let mut data = Vec::new();
        input.read_to_end(&mut data)?;
        self.load(data)
    }
}

/// How [`serve`] connects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// How long to keep retrying while the socket does not exist yet or
    /// refuses connections.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: iface::DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl Options {
    /// Sets [`Options::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// Pause between connection attempts while the socket is not there yet.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Errors `Save` and `Load` reply with.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.dbusvmstate.Error")]
enum CallError {
    #[zbus(error)]
    ZBus(zbus::Error),
    SaveFailed(String),
    LoadFailed(String),
}

/// The `org.qemu.VMState1` object.
struct Object {
    state: Arc<dyn State>,
    id: String,
}

#[zbus::interface(name = "org.qemu.VMState1")]
impl Object {
    /// The helper's Id.
    #[zbus(property)]
    async fn id(&self) -> String {
        self.id.clone()
    }

    /// Returns the helper's state.
    #[zbus(out_args("data"))]
    async fn save(&self) -> Result<Blob, CallError> {
        let state = self.state.clone();
        let saved = rt::spawn_blocking(move || state.save()).await;
        match saved {
            Ok(data) => Ok(Blob(data)),
            Err(e) => {
                let msg = crate::error::chain(e.as_ref());
                tracing::warn!(helper = %self.id, "Save failed: {msg}");
                Err(CallError::SaveFailed(msg))
            }
        }
    }

    /// Replaces the helper's state.
    async fn load(&self, data: ByteBuf) -> Result<(), CallError> {
        let state = self.state.clone();
        let loaded = rt::spawn_blocking(move || state.load(data.into_vec())).await;
        loaded.map_err(|e| {
            let msg = crate::error::chain(e.as_ref());
            tracing::warn!(helper = %self.id, "Load failed: {msg}");
            CallError::LoadFailed(msg)
        })
    }
}

/// Connects to `socket`, retrying while it does not exist or refuses
/// connections, until `timeout`.
fn connect(id: &str, socket: &Path, timeout: Duration) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(e) => {
                return Err(Error::Connect {
                    id: id.to_string(),
                    path: socket.to_path_buf(),
                    what: "cannot connect to",
                    source: Box::new(zbus::Error::InputOutput(Arc::new(e))),
                })
            }
        }
    }
}

/// Serves `state` to the coordinator listening on `socket` until the
/// coordinator closes the connection.
///
/// # Errors
///
/// [`Error::Config`] for an invalid Id; [`Error::Connect`] when the socket
/// cannot be reached before the deadline or the D-Bus handshake fails.
pub async fn serve(
    socket: impl AsRef<Path>,
    state: Arc<dyn State>,
    options: Options,
) -> Result<(), Error> {
    let socket: PathBuf = socket.as_ref().to_path_buf();
    let id = state.id().to_string();
    stream::validate_id(&id).map_err(|e| Error::Config {
        reason: format!("helper Id {id:?}: {e}"),
    })?;
    let stream = {
        let (id, socket) = (id.clone(), socket.clone());
        rt::spawn_blocking(move || connect(&id, &socket, options.connect_timeout)).await?
    };
    let object = Object {
        state,
        id: id.clone(),
    };
    let conn = zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .serve_at(iface::OBJECT_PATH, object)
        .build()
        .await
        .map_err(|source| Error::Connect {
            id: id.clone(),
            path: socket.clone(),
            what: "D-Bus handshake failed on",
            source: Box::new(source),
        })?;
    // Tells the coordinator at once that this helper is not bus-style.
    if let Err(e) = iface::announce_peer_to_peer(&conn).await {
        tracing::debug!(helper = %id, "cannot announce peer-to-peer: {e}");
    }
    tracing::info!(helper = %id, socket = %socket.display(), "connected to coordinator");
    conn.closed().await;
    tracing::info!(helper = %id, "coordinator closed the connection");
    Ok(())
}

/// [`serve`] for code that is not async: blocks the calling thread.
///
/// # Errors
///
/// As [`serve`].
pub fn serve_blocking(
    socket: impl AsRef<Path>,
    state: Arc<dyn State>,
    options: Options,
) -> Result<(), Error> {
    rt::block_on(serve(socket, state, options))
}

/// A [`State`] kept in a file: `Save` returns the file's bytes and `Load`
/// replaces the file atomically (a temporary file in the same directory,
/// synced, then renamed over it).
#[derive(Debug, Clone)]
pub struct FileState {
    id: String,
    path: PathBuf,
}

impl FileState {
    /// State of helper `id`, kept in the file at `path`.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        FileState {
            id: id.into(),
            path: path.into(),
        }
    }
}

impl State for FileState {
    fn id(&self) -> &str {
        &self.id
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        std::fs::read(&self.path)
            .map_err(|e| format!("cannot read state file {}: {e}", self.path.display()).into())
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        replace_file(&self.path, &data)
            .map_err(|e| format!("cannot replace state file {}: {e}", self.path.display()).into())
    }
}

/// Writes `data` to `path` atomically and durably.
fn replace_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".state-")
        .tempfile_in(dir)?;
    temp.write_all(data)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
