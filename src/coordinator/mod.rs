//! The coordinator: listens on one socket per helper, accepts each helper as
//! the server side of a peer-to-peer D-Bus connection, and calls `Save` and
//! `Load` on all of them concurrently.
//!
//! ```no_run
//! # async fn example() -> dbus_vmstate::Result<()> {
//! use dbus_vmstate::coordinator;
//!
//! let coordinator = coordinator::Builder::new()
//!     .socket_dir("/run/vm0/vmstate", ["slirp", "tpm"])
//!     .optional("tpm")
//!     .bind()?;
//! // ... helpers connect to /run/vm0/vmstate/slirp.sock and tpm.sock ...
//! let report = coordinator.save_to_path("/var/lib/vm0/helpers.vmstate").await?;
//! println!("saved {} helpers", report.helpers.len());
//! coordinator.shutdown().await;
//! # Ok(()) }
//! ```

mod accept;
mod builder;
mod bus_shim;
mod call;
mod handle;
mod load;
mod peer;
pub(crate) mod policy;
mod report;
mod round;
mod save;
mod shared;
pub mod socket;
mod transfer;

pub use builder::{Builder, HelperSpec};
pub use handle::Coordinator;
pub use report::{HelperReport, HelperStatus, LoadReport, SaveReport, Skipped, Transfer};
pub use transfer::Mode;

pub(crate) use builder::Config;
pub(crate) use peer::{Peer, PeerConn};
pub(crate) use shared::Inner;

/// The effective uid of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
