//! The helper side: implement [`State`] for your state and call [`serve`].
//!
//! [`serve`] connects to the coordinator's socket for this helper (retrying
//! until the socket exists, up to a deadline), exports `org.qemu.VMState1`
//! and the streaming extension `org.dbusvmstate.Stream1` at
//! `/org/qemu/VMState1` over a peer-to-peer D-Bus connection, and returns
//! when the coordinator closes the connection. [`serve_bus`] serves the
//! same objects on a D-Bus bus, the way QEMU's `dbus-vmstate` finds
//! helpers, so one helper binary works with both.
//!
//! Two paths move the state, and the coordinator picks one per helper:
//!
//! - **plain**: `Save() -> ay` and `Load(ay)` carry the state in one D-Bus
//!   message, at most 128 MiB. The library calls [`State::save_shared`]
//!   (by default [`State::save`]) and [`State::load`].
//! - **streaming**: `SaveFd(h)` and `LoadFd(h, t)` pass a socket, and the
//!   state flows through it with no size limit and no D-Bus copies. The
//!   library calls [`State::save_to_stream`] with the socket as a
//!   [`StreamOut`] and [`State::load_from_stream`] with it as a
//!   [`StreamIn`]; by default they hand the socket to [`State::save_to`]
//!   as a [`Write`] and to [`State::load_from`] as a [`Read`], which by
//!   default wrap [`State::save`] and [`State::load`].
//!
//! Every call runs on a blocking thread pool, never on the D-Bus I/O
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
//!
//! A helper with large state also implements the streaming pair: on the
//! streaming path it never holds a second copy of its state, on either
//! side. `save` and `load` still serve the plain path (QEMU uses it).
//!
//! ```
//! use std::io::{Read, Write};
//! use std::sync::{Arc, Mutex};
//! use dbus_vmstate::helper::{BoxError, State};
//!
//! /// Connection tracking entries, 64 bytes each.
//! struct Conntrack { table: Mutex<Vec<[u8; 64]>> }
//!
//! impl State for Conntrack {
//!     fn id(&self) -> &str { "conntrack" }
//!     fn save(&self) -> Result<Vec<u8>, BoxError> {
//!         Ok(self.table.lock().unwrap().concat())
//!     }
//!     fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
//!         self.load_from(&mut data.as_slice())
//!     }
//!     fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
//!         // Each write goes to the socket: gather small pieces first.
//!         let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
//!         for entry in self.table.lock().unwrap().iter() {
//!             out.write_all(entry)?;
//!         }
//!         out.flush()?;
//!         Ok(())
//!     }
//!     fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
//!         let mut table = Vec::new();
//!         let mut entry = [0u8; 64];
//!         loop {
//!             match input.read(&mut entry[..1])? {
//!                 0 => break,
//!                 _ => input.read_exact(&mut entry[1..])?,
//!             }
//!             table.push(entry);
//!         }
//!         // Only now, with the whole state read, replace the old one.
//!         *self.table.lock().unwrap() = table;
//!         Ok(())
//!     }
//! }
//!
//! let state = Conntrack { table: Mutex::new(vec![[7; 64]; 1000]) };
//! let mut saved = Vec::new();
//! state.save_to(&mut saved)?;
//! let copy = Conntrack { table: Mutex::new(Vec::new()) };
//! copy.load_from(&mut saved.as_slice())?;
//! assert_eq!(copy.table.lock().unwrap().len(), 1000);
//! # Ok::<(), BoxError>(())
//! ```

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::iface;
use crate::rt;
use crate::stream;

mod copy;
mod fd;
mod file;
mod object;

pub use copy::copy_blocks;
pub use fd::{StreamIn, StreamOut};
pub use file::FileState;

/// Any error a [`State`] implementation returns; its text (with causes)
/// travels to the coordinator in the D-Bus error reply.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Read-only bytes shared with the library without a copy: what
/// [`State::save_shared`] returns. An `Arc<Vec<u8>>` is one.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A helper's migratable state.
///
/// Implement [`State::id`], [`State::save`] and [`State::load`]: they serve
/// both paths, and the others default to them. The plain `Save` and `Load`
/// of `org.qemu.VMState1` (what QEMU calls) always use them, so they are
/// required.
///
/// A helper with large state also implements the streaming pair,
/// [`State::save_to`] and [`State::load_from`], which the coordinator uses
/// when the helper serves `org.dbusvmstate.Stream1`: the state then moves
/// through bounded memory on both sides. A helper whose state is already
/// shared bytes implements [`State::save_shared`] to skip a copy. A helper
/// whose state sits in a file, or comes out of or goes into a pipe,
/// implements [`State::save_to_stream`] and [`State::load_from_stream`]
/// instead, to let the kernel copy it ([`StreamOut::copy_from`],
/// [`StreamIn::copy_to`]), as [`FileState`] does.
///
/// The methods are called on a blocking thread pool; they may block.
///
/// Every default is built on the required methods, never on another
/// default, so a helper that leaves one out does not compile rather than
/// recursing at run time:
///
/// ```compile_fail,E0046
/// use dbus_vmstate::helper::{BoxError, State};
/// use std::io::Write;
///
/// struct OnlyStreams;
///
/// impl State for OnlyStreams {
///     fn id(&self) -> &str { "only-streams" }
///     fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
///         Ok(out.write_all(b"state")?)
///     }
/// }
/// ```
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
    fn save(&self) -> Result<Vec<u8>, BoxError>;

    /// Replaces the state with `data`, which [`State::save`] (or
    /// [`State::save_to`]) produced on the source.
    ///
    /// # Errors
    ///
    /// Any error, reported to the coordinator as
    /// `org.dbusvmstate.Error.LoadFailed`.
    fn load(&self, data: Vec<u8>) -> Result<(), BoxError>;

    /// Writes the whole state into `out`, for the streaming path. The
    /// default writes what [`State::save`] returns.
    ///
    /// On the streaming path `out` is the coordinator's socket: every
    /// write goes straight to it, so write large blocks (or the whole
    /// state at once) rather than many small pieces.
    ///
    /// # Errors
    ///
    /// As [`State::save`]; a write error (the coordinator gave up) should
    /// be returned as is.
    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        out.write_all(&self.save()?)?;
        Ok(())
    }

    /// Reads the whole state from `input` and replaces the current one,
    /// for the streaming path. The default reads all of `input` and passes
    /// it to [`State::load`].
    ///
    /// On the streaming path `input` yields exactly the bytes the source
    /// saved and then end-of-file; a read fails if the coordinator aborts
    /// or sends more or less. Replace the state only once `input` reached
    /// end-of-file without error, so an aborted load keeps the old state.
    ///
    /// # Errors
    ///
    /// As [`State::load`].
    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        let mut data = Vec::new();
        input.read_to_end(&mut data)?;
        self.load(data)
    }

    /// Returns the whole state for the plain `Save` path, shared rather
    /// than copied: a helper that keeps its state in an `Arc<Vec<u8>>`
    /// returns a clone of the `Arc`. The default wraps [`State::save`].
    ///
    /// # Errors
    ///
    /// As [`State::save`].
    fn save_shared(&self) -> Result<SharedBytes, BoxError> {
        Ok(Arc::new(self.save()?))
    }

    /// Writes the whole state into the coordinator's socket, for the
    /// streaming path (`SaveFd`). The default calls [`State::save_to`]
    /// with `out` as its [`Write`]; a helper overrides it to reach the
    /// socket itself, above all to let the kernel copy a file or a pipe
    /// into it with [`StreamOut::copy_from`].
    ///
    /// This default is built on a provided method, not a required one:
    /// [`State::save_to`]'s default calls only [`State::save`], so the
    /// chain cannot turn back on itself.
    ///
    /// # Errors
    ///
    /// As [`State::save_to`].
    fn save_to_stream(&self, out: &mut StreamOut) -> Result<(), BoxError> {
        self.save_to(out)
    }

    /// Reads the whole state from the coordinator's socket and replaces
    /// the current one, for the streaming path (`LoadFd`). The default
    /// calls [`State::load_from`] with `input` as its [`Read`]; a helper
    /// overrides it to reach the socket itself, for instance to let the
    /// kernel move the state into a pipe with [`StreamIn::copy_to`].
    /// [`StreamIn::size`] tells the size before the first byte is read,
    /// except on a sealed load (a stream the coordinator reads from a
    /// pipe), whose size is known only at its end.
    ///
    /// # Errors
    ///
    /// As [`State::load_from`].
    fn load_from_stream(&self, input: &mut StreamIn) -> Result<(), BoxError> {
        self.load_from(input)
    }
}

/// How [`serve`] connects and what it serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// How long to keep retrying while the socket does not exist yet or
    /// refuses connections.
    pub connect_timeout: Duration,
    /// Whether to serve the streaming extension `org.dbusvmstate.Stream1`
    /// beside `org.qemu.VMState1` (default `true`). Without it the
    /// coordinator uses plain `Save` and `Load`, and the state must fit in
    /// one D-Bus message.
    pub streaming: bool,
    /// Whether to serve `org.dbusvmstate.SealedLoad1` beside
    /// `org.dbusvmstate.Stream1` (default `true`; nothing without
    /// [`Options::streaming`]). It lets a coordinator reading a stream from
    /// a pipe load this helper while the stream arrives; without it such a
    /// coordinator first spools the stream, as one without this extension
    /// does.
    pub sealed_loads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: iface::DEFAULT_CONNECT_TIMEOUT,
            streaming: true,
            sealed_loads: true,
        }
    }
}

impl Options {
    /// Sets [`Options::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`Options::streaming`].
    #[must_use]
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// Sets [`Options::sealed_loads`].
    #[must_use]
    pub fn sealed_loads(mut self, sealed_loads: bool) -> Self {
        self.sealed_loads = sealed_loads;
        self
    }
}

/// Pause between connection attempts while the socket is not there yet.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

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

/// Checks the helper's Id before anything is served.
fn checked_id(state: &dyn State) -> Result<String, Error> {
    let id = state.id().to_string();
    stream::validate_id(&id).map_err(|e| Error::Config {
        reason: format!("helper Id {id:?}: {e}"),
    })?;
    Ok(id)
}

/// Adds the helper's objects to a connection being built.
fn objects<'a>(
    builder: zbus::connection::Builder<'a>,
    state: Arc<dyn State>,
    id: &str,
    options: &Options,
) -> zbus::connection::Builder<'a> {
    let builder = builder.serve_at(
        iface::OBJECT_PATH,
        object::VmState {
            state: state.clone(),
            id: id.to_string(),
        },
    );
    if !options.streaming {
        return builder;
    }
    let builder = builder.serve_at(
        iface::OBJECT_PATH,
        object::Stream {
            state: state.clone(),
            id: id.to_string(),
        },
    );
    if options.sealed_loads {
        builder.serve_at(
            iface::OBJECT_PATH,
            object::SealedLoad {
                state,
                id: id.to_string(),
            },
        )
    } else {
        builder
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
    let id = checked_id(state.as_ref())?;
    let stream = {
        let (id, socket) = (id.clone(), socket.clone());
        let timeout = options.connect_timeout;
        rt::spawn_blocking(move || connect(&id, &socket, timeout)).await?
    };
    let builder = zbus::connection::Builder::unix_stream(stream).p2p();
    let conn = objects(builder, state, &id, &options)
        .build()
        .await
        .map_err(|source| Error::Connect {
            id: id.clone(),
            path: socket.clone(),
            what: "D-Bus handshake failed on",
            source: Box::new(source),
        })?;
    // Taken at once: a coordinator that turns this helper away says why
    // right after reading its Id.
    let rejected = iface::rejections(&conn).await;
    // Tells the coordinator at once that this helper is not bus-style.
    if let Err(e) = iface::announce_peer_to_peer(&conn).await {
        tracing::debug!(helper = %id, "cannot announce peer-to-peer: {e}");
    }
    tracing::info!(helper = %id, socket = %socket.display(), "connected to coordinator");
    let reason = match rejected {
        Ok(rejected) => rejected.await,
        Err(e) => {
            tracing::debug!(helper = %id, "cannot watch for a rejection: {e}");
            conn.closed().await;
            None
        }
    };
    match reason {
        Some(reason) => Err(Error::Rejected {
            id,
            path: socket,
            reason,
        }),
        None => {
            tracing::info!(helper = %id, "coordinator closed the connection");
            Ok(())
        }
    }
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

/// Serves `state` on the D-Bus bus at `address` (a D-Bus address such as
/// `unix:path=/run/vm0/bus`), as QEMU's `dbus-vmstate` object expects:
/// the objects at `/org/qemu/VMState1`, and the name
/// [`iface::BUS_NAME`] requested in the queue of its owners (QEMU calls
/// every queued owner). Returns when the bus connection closes.
///
/// [`Options::connect_timeout`] does not apply: the bus must be up.
///
/// # Errors
///
/// [`Error::Config`] for an invalid Id; [`Error::Connect`] when the bus
/// cannot be reached or the name cannot be requested.
pub async fn serve_bus(
    address: &str,
    state: Arc<dyn State>,
    options: Options,
) -> Result<(), Error> {
    let id = checked_id(state.as_ref())?;
    let connect_error = |what: &'static str| {
        let id = id.clone();
        move |source| Error::Connect {
            id,
            path: PathBuf::from(address),
            what,
            source: Box::new(source),
        }
    };
    let builder = zbus::connection::Builder::address(address);
    let conn = objects(builder, state, &id, &options)
        .build()
        .await
        .map_err(connect_error("cannot connect to the bus at"))?;
    conn.request_name_with_flags(iface::BUS_NAME, zbus::fdo::RequestNameFlags::empty())
        .await
        .map_err(connect_error(
            "cannot request the name org.qemu.VMState1 on",
        ))?;
    tracing::info!(helper = %id, bus = %address, "serving on the bus");
    conn.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Mem(Mutex<Vec<u8>>);

    impl State for Mem {
        fn id(&self) -> &str {
            "mem"
        }
        fn save(&self) -> Result<Vec<u8>, BoxError> {
            Ok(self.0.lock().map_err(|_| "poisoned")?.clone())
        }
        fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
            *self.0.lock().map_err(|_| "poisoned")? = data;
            Ok(())
        }
    }

    /// Neither side needs the crate's own runtime to drive its futures:
    /// both run here under `futures::executor`, with deadlines so that a
    /// hang fails the test.
    #[test]
    fn serve_and_the_coordinator_run_under_futures_executor() {
        let dir = tempfile::Builder::new()
            .prefix("dv")
            .tempdir_in("/tmp")
            .unwrap();
        let deadline = Duration::from_secs(10);
        let coordinator = crate::coordinator::Builder::new()
            .socket_dir(dir.path(), ["mem"])
            .connect_timeout(deadline)
            .call_timeout(deadline)
            .bind()
            .unwrap();
        let state = Arc::new(Mem(Mutex::new(b"before".to_vec())));
        let helper = {
            let (socket, state) = (dir.path().join("mem.sock"), state.clone());
            let options = Options::default().connect_timeout(deadline);
            std::thread::spawn(move || futures::executor::block_on(serve(socket, state, options)))
        };
        let stream = dir.path().join("helpers.vmstate");
        futures::executor::block_on(async {
            coordinator.save_to_path(&stream).await?;
            *state.0.lock().unwrap() = Vec::new();
            coordinator.load_from_path(&stream, None).await?;
            coordinator.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(*state.0.lock().unwrap(), b"before");
        helper.join().unwrap().unwrap();
    }

    /// A helper turned away after the handshake fails with the
    /// coordinator's reason instead of ending as if all went well.
    #[test]
    fn a_rejected_helper_fails_with_the_reason() {
        let dir = tempfile::Builder::new()
            .prefix("dv")
            .tempdir_in("/tmp")
            .unwrap();
        // The socket is for "other"; the helper says it is "mem".
        let coordinator = crate::coordinator::Builder::new()
            .socket_dir(dir.path(), ["other"])
            .bind()
            .unwrap();
        let state = Arc::new(Mem(Mutex::new(Vec::new())));
        let options = Options::default().connect_timeout(Duration::from_secs(10));
        let served =
            futures::executor::block_on(serve(dir.path().join("other.sock"), state, options));
        let e = served.unwrap_err();
        assert!(
            matches!(&e, Error::Rejected { id, .. } if id == "mem"),
            "{e:?}"
        );
        assert!(e.to_string().contains(r#"it claims Id "mem""#), "{e}");
        assert!(!e.is_migration_failure());
        futures::executor::block_on(coordinator.shutdown());
    }
}
