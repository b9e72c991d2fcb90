//! The control interface: drive a coordinator that runs in another process.
//!
//! `dbus-vmstate serve` runs a [`Coordinator`](crate::coordinator::Coordinator)
//! and listens on one more Unix socket, the **control socket**, where it
//! serves [`INTERFACE`] (`org.dbusvmstate.Control1`) over peer-to-peer
//! D-Bus, as specified in `protocol/org.dbusvmstate.Control1.xml`. Any
//! D-Bus library that can connect to an address peer-to-peer (zbus,
//! GDBus, sd-bus) can call it; [`Client`] is the Rust one, [`Server`] the serving side for
//! a program that runs its own coordinator.
//!
//! - `Save(h fd, a{sv} options) -> a{sv}` saves every helper and writes the
//!   state stream into `fd` (a file, a pipe, a socket). The caller keeps
//!   the file's atomicity in its hands: it passes a temporary file and
//!   renames it once `Save` succeeded.
//! - `Load(h fd, a{sv} options) -> a{sv}` reads a whole stream from `fd`
//!   (to its end), verifies it, and loads it into the helpers.
//! - `Status() -> aa{sv}` describes each helper: connected or not, its pid
//!   and uid, its last save and load.
//!
//! Only one `Save` or `Load` runs at a time; another one meanwhile fails
//! with [`ERROR_BUSY`]. Errors are named D-Bus errors whose message names
//! the helper: see [`ErrorKind`].
//!
//! ```no_run
//! # async fn example() -> Result<(), dbus_vmstate::control::Error> {
//! use dbus_vmstate::atomic::AtomicFile;
//! use dbus_vmstate::control::{Client, SaveOptions};
//!
//! let client = Client::connect("/run/vm0/vmstate/control.sock").await?;
//! // Nothing appears at the path unless the save succeeds.
//! let file = AtomicFile::create("/var/lib/vm0/helpers.vmstate").unwrap();
//! let report = client.save(file.as_file(), &SaveOptions::default()).await?;
//! file.commit().unwrap();
//! println!("{} helpers, {} bytes", report.helpers.len(), report.stream_bytes.unwrap_or(0));
//! # Ok(()) }
//! ```

mod client;
mod error;
mod fdio;
mod ops;
mod server;
mod wire;

use std::time::Duration;

use crate::coordinator::{HelperReport, Skipped};
use crate::stream::{Format, Key};

pub use client::Client;
pub use error::{Error, ErrorKind};
pub use server::Server;

/// The control interface's name. A new, incompatible version gets a new
/// name (`Control2`); this one only ever gains optional keys.
pub const INTERFACE: &str = "org.dbusvmstate.Control1";
/// The object path at which [`INTERFACE`] is served.
pub const OBJECT_PATH: &str = "/org/dbusvmstate/Control1";
/// File name of the control socket in a socket directory, by default.
pub const DEFAULT_SOCKET_NAME: &str = "control.sock";
/// The fd name that marks a socket-activated control socket
/// (`FileDescriptorName=control`).
pub const ACTIVATION_NAME: &str = "control";

/// A required helper's `Save` or `Load` failed, timed out, or its state was
/// over a limit.
pub const ERROR_HELPER_FAILED: &str = "org.dbusvmstate.Error.HelperFailed";
/// A required helper was not connected in time; no helper was called.
pub const ERROR_NOT_CONNECTED: &str = "org.dbusvmstate.Error.NotConnected";
/// The stream failed verification (format, checksum, truncation, a
/// missing or unknown helper); no `Load` was called.
pub const ERROR_STREAM_REJECTED: &str = "org.dbusvmstate.Error.StreamRejected";
/// Another `Save` or `Load` is running.
pub const ERROR_BUSY: &str = "org.dbusvmstate.Error.Busy";
/// Reading or writing the passed file descriptor failed.
pub const ERROR_IO: &str = "org.dbusvmstate.Error.IOError";
/// The coordinator stopped (it is shutting down) before the call finished.
pub const ERROR_CANCELLED: &str = "org.dbusvmstate.Error.Cancelled";

/// Options of a save.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SaveOptions {
    /// The stream format to write.
    pub format: Format,
    /// How long to wait for every required helper to connect before
    /// saving; `None` uses the coordinator's own connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Compress the stream (native format version 2).
    pub compress: bool,
    /// Encrypt and authenticate the stream with this key (native format
    /// version 2). It goes to the coordinator through a pipe passed with
    /// the call, never in a message.
    pub key: Option<Key>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            format: Format::Native,
            connect_timeout: None,
            compress: false,
            key: None,
        }
    }
}

impl SaveOptions {
    /// Sets [`SaveOptions::format`].
    #[must_use]
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sets [`SaveOptions::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets [`SaveOptions::compress`].
    #[must_use]
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Sets [`SaveOptions::key`].
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }
}

/// Options of a load.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The stream's format; `None` detects it from the first bytes.
    pub format: Option<Format>,
    /// How long to wait for every required helper to connect before
    /// loading; `None` uses the coordinator's own connect timeout.
    pub connect_timeout: Option<Duration>,
    /// The key of an encrypted stream; with it, an unencrypted stream is
    /// refused unless [`allow_unencrypted`](Self::allow_unencrypted).
    pub key: Option<Key>,
    /// With a key, accept an unencrypted stream too.
    pub allow_unencrypted: bool,
}

impl LoadOptions {
    /// Sets [`LoadOptions::format`].
    #[must_use]
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Sets [`LoadOptions::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets [`LoadOptions::key`].
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets [`LoadOptions::allow_unencrypted`].
    #[must_use]
    pub fn allow_unencrypted(mut self, allow: bool) -> Self {
        self.allow_unencrypted = allow;
        self
    }
}

/// What a `Save` or `Load` through the control interface did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The stream's format.
    pub format: Format,
    /// Bytes of the stream written (saves only).
    pub stream_bytes: Option<u64>,
    /// The helpers saved or loaded.
    pub helpers: Vec<HelperReport>,
    /// Optional helpers left out, and why.
    pub skipped: Vec<Skipped>,
    /// From the first helper call to the last reply (and, for a save, the
    /// last byte written).
    pub duration: Duration,
}
