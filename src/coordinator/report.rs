//! What a save, a load and a status call report: plain data.

use std::path::PathBuf;
use std::time::Duration;

use super::Mode;
use crate::stream::Format;

/// The result of one `Save` or `Load` on one helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// State bytes moved.
    pub bytes: u64,
    /// Time from the call to its reply.
    pub duration: Duration,
}

/// A helper that took part in a save or load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperReport {
    /// The helper's Id.
    pub id: String,
    /// What moved, and how long it took.
    pub transfer: Transfer,
    /// Which path the state took.
    pub mode: Mode,
}

/// An optional helper left out of a save or load, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The helper's Id.
    pub id: String,
    /// Why it was left out.
    pub reason: String,
}

/// What [`Coordinator::status`](super::Coordinator::status) reports about
/// one helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperStatus {
    /// The helper's Id.
    pub id: String,
    /// Its socket.
    pub socket: PathBuf,
    /// Whether it is required.
    pub required: bool,
    /// Whether a helper is connected on that socket now.
    pub connected: bool,
    /// The connected peer's process Id (`SO_PEERCRED`).
    pub pid: Option<u32>,
    /// The connected peer's user Id (`SO_PEERCRED`).
    pub uid: Option<u32>,
    /// The last successful save.
    pub last_save: Option<Transfer>,
    /// The last successful load.
    pub last_load: Option<Transfer>,
    /// Why the last connection on this socket was turned away, if one was.
    pub last_rejection: Option<String>,
}

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveReport {
    /// The helpers saved, in the order they finished.
    pub helpers: Vec<HelperReport>,
    /// Optional helpers left out.
    pub skipped: Vec<Skipped>,
    /// Bytes of the whole stream.
    pub stream_bytes: u64,
    /// From the first `Save` call to the last byte written.
    pub duration: Duration,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// The stream's format.
    pub format: Format,
    /// The helpers loaded, in configuration order.
    pub helpers: Vec<HelperReport>,
    /// Optional helpers left out.
    pub skipped: Vec<Skipped>,
    /// From the first `Load` call to the last reply.
    pub duration: Duration,
    /// What came before any `Load`: indexing a seekable input, or reading
    /// and verifying any other into its spool; zero for a live load, which
    /// verifies while it loads (see [the coordinator's
    /// docs](crate::coordinator#loading)).
    pub verification: Duration,
}

/// What [`Coordinator::qemu_status`](super::Coordinator::qemu_status)
/// reports about QEMU's front door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuStatus {
    /// The front door's socket.
    pub socket: PathBuf,
    /// Whether a QEMU is connected now.
    pub connected: bool,
    /// The connected QEMU's process Id (`SO_PEERCRED`).
    pub pid: Option<u32>,
    /// The connected QEMU's user Id (`SO_PEERCRED`).
    pub uid: Option<u32>,
    /// The last save QEMU ran through the front door.
    pub last_save: Option<QemuRound>,
    /// The last load QEMU ran through the front door.
    pub last_load: Option<QemuRound>,
    /// Why the last connection on the socket was turned away, if one was.
    pub last_rejection: Option<String>,
}

/// One save or load QEMU ran through the front door: the `Save` (or
/// `Load`) calls between two of QEMU's `ListQueuedOwners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuRound {
    /// The helpers QEMU saved (or loaded) successfully, in the order of its
    /// calls.
    pub helpers: Vec<String>,
    /// State bytes moved for those.
    pub bytes: u64,
    /// From QEMU's first call to the last reply.
    pub duration: Duration,
    /// Every call that failed, as the error QEMU got (naming the helper).
    pub failures: Vec<String>,
}
