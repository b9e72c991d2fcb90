//! The objects a helper exports at `/org/qemu/VMState1`:
//! `org.qemu.VMState1` (QEMU's interface), `org.dbusvmstate.Stream1`
//! (the streaming extension) and `org.dbusvmstate.SealedLoad1` (a
//! streaming load of a size not known in advance).
//!
//! Every call on a [`State`] runs on the blocking thread pool, never on the
//! zbus I/O thread, so a slow save neither stalls the connection nor other
//! connections of the process.

use std::sync::Arc;

use serde::Serialize;
use serde_bytes::ByteBuf;
use zbus::{Signature, Type};

use super::fd::{StreamIn, StreamOut};
use super::{BoxError, SharedBytes, State};
use crate::iface;
use crate::rt;

/// Errors the helper's methods reply with.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.dbusvmstate.Error")]
pub(super) enum CallError {
    #[zbus(error)]
    ZBus(zbus::Error),
    SaveFailed(String),
    LoadFailed(String),
    TooLarge(String),
}

/// Saved state sent as `ay` straight from the helper's shared bytes: no
/// copy on the helper's side before zbus serializes it.
struct SharedBlob(SharedBytes);

impl Serialize for SharedBlob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes((*self.0).as_ref())
    }
}

impl Type for SharedBlob {
    const SIGNATURE: &'static Signature = &Signature::static_array(&Signature::U8);
}

/// Logs a failed call and turns it into its D-Bus error.
fn failed(id: &str, call: &str, e: &BoxError, to: fn(String) -> CallError) -> CallError {
    let msg = crate::error::chain(e.as_ref());
    tracing::warn!(helper = %id, "{call} failed: {msg}");
    to(msg)
}

/// The `org.qemu.VMState1` object.
pub(super) struct VmState {
    pub state: Arc<dyn State>,
    pub id: String,
}

#[zbus::interface(name = "org.qemu.VMState1")]
impl VmState {
    /// The helper's Id.
    #[zbus(property)]
    async fn id(&self) -> String {
        self.id.clone()
    }

    /// Returns the helper's state.
    #[zbus(out_args("data"))]
    async fn save(&self) -> Result<SharedBlob, CallError> {
        let state = self.state.clone();
        match rt::spawn_blocking(move || state.save_shared()).await {
            Ok(data) => {
                let size = (*data).as_ref().len();
                if size > iface::MAX_SAVE_BLOB_BYTES {
                    let msg = format!(
                        "state of {size} bytes does not fit in one D-Bus message \
                         (at most {} bytes)",
                        iface::MAX_SAVE_BLOB_BYTES
                    );
                    tracing::warn!(helper = %self.id, "Save failed: {msg}");
                    return Err(CallError::TooLarge(msg));
                }
                Ok(SharedBlob(data))
            }
            Err(e) => Err(failed(&self.id, "Save", &e, CallError::SaveFailed)),
        }
    }

    /// Replaces the helper's state.
    async fn load(&self, data: ByteBuf) -> Result<(), CallError> {
        let state = self.state.clone();
        let loaded = rt::spawn_blocking(move || state.load(data.into_vec())).await;
        loaded.map_err(|e| failed(&self.id, "Load", &e, CallError::LoadFailed))
    }
}

/// The `org.dbusvmstate.Stream1` object.
pub(super) struct Stream {
    pub state: Arc<dyn State>,
    pub id: String,
}

#[zbus::interface(name = "org.dbusvmstate.Stream1")]
impl Stream {
    /// Writes the helper's state into `fd`; replies with its size.
    #[zbus(out_args("size"))]
    async fn save_fd(&self, fd: zbus::OwnedFd) -> Result<u64, CallError> {
        let state = self.state.clone();
        let saved = rt::spawn_blocking(move || -> Result<u64, BoxError> {
            let mut out = StreamOut::new(fd.into())?;
            state.save_to_stream(&mut out)?;
            Ok(out.finish()?)
        })
        .await;
        saved.map_err(|e| failed(&self.id, "SaveFd", &e, CallError::SaveFailed))
    }

    /// Replaces the helper's state with the `size` bytes read from `fd`.
    async fn load_fd(&self, fd: zbus::OwnedFd, size: u64) -> Result<(), CallError> {
        let input = StreamIn::new(fd.into(), size);
        load_stream(&self.state, &self.id, input).await
    }
}

/// The `org.dbusvmstate.SealedLoad1` object.
pub(super) struct SealedLoad {
    pub state: Arc<dyn State>,
    pub id: String,
}

#[zbus::interface(name = "org.dbusvmstate.SealedLoad1")]
impl SealedLoad {
    /// Replaces the helper's state with what `fd` carries before the
    /// trailer of `seal`.
    async fn load_fd(&self, fd: zbus::OwnedFd, seal: u64) -> Result<(), CallError> {
        let input = StreamIn::sealed(fd.into(), seal);
        load_stream(&self.state, &self.id, input).await
    }
}

/// Loads `state` from a streaming load's end, on the blocking pool.
async fn load_stream(
    state: &Arc<dyn State>,
    id: &str,
    input: std::io::Result<StreamIn>,
) -> Result<(), CallError> {
    let state = state.clone();
    let loaded = rt::spawn_blocking(move || -> Result<(), BoxError> {
        let mut input = input?;
        state.load_from_stream(&mut input)?;
        Ok(input.finish()?)
    })
    .await;
    loaded.map_err(|e| failed(id, "LoadFd", &e, CallError::LoadFailed))
}
