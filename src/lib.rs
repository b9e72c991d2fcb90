//! Daemonless migration of VM helper-process state over peer-to-peer D-Bus.
//!
//! A virtual machine is a VMM plus helper processes (a network helper, a
//! TPM emulator, virtiofsd, ...) whose state must move with the VM. QEMU's
//! `dbus-vmstate` object moves it by calling `Save` and `Load` of the
//! `org.qemu.VMState1` interface on every helper, through a D-Bus bus
//! daemon started per VM. This crate does the same with no daemon:
//!
//! - the **coordinator** ([`coordinator`]) listens on one Unix socket per
//!   helper. The socket a helper reaches is its identity;
//! - each **helper** ([`helper`]) connects to its socket and speaks
//!   peer-to-peer D-Bus (no `Hello`, no bus names), serving
//!   `org.qemu.VMState1` unchanged, so the same helper binary also works
//!   with QEMU;
//! - the coordinator calls `Save` (or `Load`) on all helpers concurrently,
//!   each with its own timeout, and writes (or reads and verifies) a
//!   versioned, checksummed **state stream** ([`stream`]);
//! - a helper whose state is large also serves the extension
//!   `org.dbusvmstate.Stream1`: its state then streams through a socket
//!   passed as a file descriptor, of any size and through bounded memory
//!   (see [`helper::State::save_to`] and [`coordinator::Mode`]).
//!
//! Helpers may be written on any D-Bus library (GDBus, libdbus, sd-bus,
//! zbus, ...). Helpers written for QEMU's `dbus-vmstate`, which expect a bus
//! (`Hello`, `RequestName("org.qemu.VMState1")`), work unmodified with their
//! socket as their bus address: the coordinator answers those
//! `org.freedesktop.DBus` calls itself (`protocol/README.md`).
//!
//! ```text
//!  coordinator                                  helper "slirp"
//!  bind DIR/slirp.sock (0600) ─────────────────  connect DIR/slirp.sock
//!  D-Bus auth as server (EXTERNAL) ◀───────────  D-Bus auth as client
//!  check peer uid, Get Id == "slirp" ──────────▶ Id
//!  ... VM stops ...
//!  Save() ─────────────────────────────────────▶ returns ay
//!  write record "slirp" into the stream
//!                                  (destination)
//!  read + verify the whole stream
//!  Load(ay) ───────────────────────────────────▶ replaces its state
//! ```
//!
//! # Coordinator
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, Mutex};
//! use dbus_vmstate::{coordinator, helper};
//! # struct Mem(Mutex<Vec<u8>>);
//! # impl helper::State for Mem {
//! #     fn id(&self) -> &str { "slirp" }
//! #     fn save(&self) -> Result<Vec<u8>, helper::BoxError> { Ok(self.0.lock().unwrap().clone()) }
//! #     fn load(&self, d: Vec<u8>) -> Result<(), helper::BoxError> { *self.0.lock().unwrap() = d; Ok(()) }
//! # }
//! let dir = tempfile::tempdir()?;
//! let coordinator = coordinator::Builder::new()
//!     .socket_dir(dir.path(), ["slirp"])
//!     .bind()?;
//!
//! // A helper (normally another process) connects to slirp.sock.
//! let state = Arc::new(Mem(Mutex::new(b"tables".to_vec())));
//! let helper = {
//!     let (socket, state) = (dir.path().join("slirp.sock"), state.clone());
//!     std::thread::spawn(move || helper::serve_blocking(socket, state, helper::Options::default()))
//! };
//!
//! // Any executor runs the coordinator's futures; this is the plainest.
//! let stream = dir.path().join("helpers.vmstate");
//! futures::executor::block_on(async {
//!     coordinator.save_to_path(&stream).await?;
//!     *state.0.lock().unwrap() = Vec::new();
//!     coordinator.load_from_path(&stream, None).await?;
//!     Ok::<_, dbus_vmstate::Error>(())
//! })?;
//! assert_eq!(*state.0.lock().unwrap(), b"tables");
//!
//! futures::executor::block_on(coordinator.shutdown()); // the helper sees its connection close
//! helper.join().expect("helper thread")?;
//! # Ok(()) }
//! ```
//!
//! # Helper
//!
//! Implement [`helper::State`] and call [`helper::serve`] (or
//! [`helper::serve_blocking`]); see the [`helper`] module.
//!
//! # Runtime
//!
//! The library is async, and its futures run under any executor (tokio,
//! smol, `futures::executor`, as above). zbus runs its D-Bus I/O on its own
//! thread; the few other runtime services the library needs (spawning,
//! blocking work, timers, accepting) bring their own threads too, behind
//! one crate-private module, so nothing has to be driven by the caller.

#![deny(missing_docs)]

pub mod atomic;
pub mod control;
pub mod coordinator;
pub mod error;
pub mod helper;
pub mod iface;
mod rt;
pub mod stream;
mod sys;

pub use error::{Error, Result};
