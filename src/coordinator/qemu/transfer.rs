//! One helper's `Save` or `Load` for QEMU: the state in memory (QEMU takes
//! at most 1 MiB per helper), carried over the helper's own connection on
//! the path the coordinator chose for it, plain or streaming.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use crate::coordinator::call::HelperCall;
use crate::coordinator::transfer::pair::{self, Pair};
use crate::coordinator::transfer::{self, Mode};
use crate::coordinator::{Inner, Peer, Transfer};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;
use crate::stream::qemu::MAX_QEMU_BLOB_BYTES;

/// What QEMU calls the limit.
const QEMU_LIMIT: &str = "QEMU's dbus-vmstate limit";

/// A helper's saved state.
#[derive(Debug)]
pub(super) struct Saved {
    pub data: Vec<u8>,
    pub transfer: Transfer,
}

/// The connection of the helper in `slot`, waiting up to the connect
/// timeout for one (it may be reconnecting).
async fn connected(inner: &Inner, slot: usize) -> Result<Peer, Error> {
    inner.require(&[slot], inner.config.connect_timeout).await?;
    inner.slots[slot].peer().ok_or_else(|| Error::NotConnected {
        id: inner.slots[slot].spec.id.clone(),
        timeout: inner.config.connect_timeout,
        last_rejection: inner.slots[slot].state().last_rejection.clone(),
    })
}

/// The largest state QEMU may get from the helper in `slot`.
fn limit(inner: &Inner) -> u64 {
    inner.config.max_blob_bytes.min(MAX_QEMU_BLOB_BYTES as u64)
}

fn too_large(inner: &Inner, slot: usize, size: u64) -> Error {
    let what = if size > inner.config.max_blob_bytes {
        "the coordinator's per-helper limit"
    } else {
        QEMU_LIMIT
    };
    Error::TooLarge {
        id: inner.slots[slot].spec.id.clone(),
        size,
        limit: limit(inner),
        what,
    }
}

/// Saves the helper in `slot` into memory, at most QEMU's limit.
pub(super) async fn save(inner: Arc<Inner>, slot: usize) -> Result<Saved, Error> {
    let peer = connected(&inner, slot).await?;
    let mode = transfer::mode(&inner, slot, &peer).await;
    let call = HelperCall::new(&inner, slot, Call::Save);
    let started = Instant::now();
    let data = match mode {
        Mode::Plain => {
            let reply = call
                .run(iface::call_save_at(&peer.conn, peer.destination()))
                .await?;
            let bytes = reply.bytes().map_err(|e| call.failed(e))?;
            if bytes.len() as u64 > limit(&inner) {
                return Err(too_large(&inner, slot, bytes.len() as u64));
            }
            bytes.to_vec()
        }
        Mode::Stream => save_streamed(&inner, slot, &peer, &call).await?,
    };
    let transfer = Transfer {
        bytes: data.len() as u64,
        duration: started.elapsed(),
    };
    tracing::debug!(helper = %call.id, bytes = transfer.bytes, %mode, "saved for QEMU");
    Ok(Saved { data, transfer })
}

/// `SaveFd` into memory: a thread reads the coordinator's end up to one
/// byte past the limit.
async fn save_streamed(
    inner: &Inner,
    slot: usize,
    peer: &Peer,
    call: &HelperCall<'_>,
) -> Result<Vec<u8>, Error> {
    let setup = |e| call.transfer("cannot create its socket pair", Some(e));
    let Pair { ours, theirs } = Pair::new().map_err(setup)?;
    let control = ours.try_clone().map_err(setup)?;
    let cap = limit(inner) as usize + 1;
    let reader = rt::spawn_blocking(move || {
        let mut data = Vec::with_capacity(cap);
        let eof = pair::fill(&ours, &mut data, cap);
        if !matches!(eof, Ok(true)) {
            pair::abort(&ours);
        }
        eof.map(|_| data)
    });
    let save_fd = async {
        let reply = iface::call_save_fd(&peer.conn, peer.destination(), theirs.as_fd()).await;
        drop(theirs);
        if reply.is_err() {
            pair::abort(&control);
        }
        reply
    };
    let outcome = call.within(futures::future::join(save_fd, reader)).await;
    let (reply, read) = match outcome {
        Ok(both) => both,
        Err(timed_out) => {
            pair::abort(&control);
            return Err(timed_out);
        }
    };
    match (reply, read) {
        (_, Ok(data)) if data.len() as u64 > limit(inner) => {
            Err(too_large(inner, slot, data.len() as u64))
        }
        (Err(e), _) => Err(call.failed(e)),
        (Ok(_), Err(e)) => Err(call.transfer("reading its state failed", Some(e))),
        (Ok(sent), Ok(data)) if sent != data.len() as u64 => Err(call.transfer(
            format!(
                "the helper reported {sent} bytes, but {} arrived",
                data.len()
            ),
            None,
        )),
        (Ok(_), Ok(data)) => Ok(data),
    }
}

/// Loads `data` into the helper in `slot`.
pub(super) async fn load(inner: Arc<Inner>, slot: usize, data: Vec<u8>) -> Result<Transfer, Error> {
    let id = &inner.slots[slot].spec.id;
    let size = data.len() as u64;
    if size > inner.config.max_blob_bytes {
        return Err(too_large(&inner, slot, size));
    }
    let peer = connected(&inner, slot).await?;
    let mode = transfer::mode(&inner, slot, &peer).await;
    let call = HelperCall::new(&inner, slot, Call::Load);
    let started = Instant::now();
    match mode {
        Mode::Plain => {
            call.run(iface::call_load_at(&peer.conn, peer.destination(), &data))
                .await?
        }
        Mode::Stream => load_streamed(&peer, &call, data).await?,
    }
    tracing::debug!(helper = %id, bytes = size, %mode, "loaded for QEMU");
    Ok(Transfer {
        bytes: size,
        duration: started.elapsed(),
    })
}

/// `LoadFd` from memory: a thread writes the state into the coordinator's
/// end and then ends it.
async fn load_streamed(peer: &Peer, call: &HelperCall<'_>, data: Vec<u8>) -> Result<(), Error> {
    let setup = |e| call.transfer("cannot create its socket pair", Some(e));
    let Pair { ours, theirs } = Pair::new().map_err(setup)?;
    let control = ours.try_clone().map_err(setup)?;
    let size = data.len() as u64;
    let writer = rt::spawn_blocking(move || {
        let sent = pair::send_all(&ours, &data);
        let _ = ours.shutdown(std::net::Shutdown::Write);
        sent
    });
    let load_fd = async {
        let reply = iface::call_load_fd(
            &peer.conn,
            peer.destination(),
            theirs.as_fd(),
            iface::FdLoad::Announced(size),
        )
        .await;
        drop(theirs);
        if reply.is_err() {
            pair::abort(&control);
        }
        reply
    };
    let (reply, written) = match call.within(futures::future::join(load_fd, writer)).await {
        Ok(both) => both,
        Err(timed_out) => {
            pair::abort(&control);
            return Err(timed_out);
        }
    };
    match (reply, written) {
        (Err(e), _) => Err(call.failed(e)),
        (Ok(()), Err(e)) => Err(call.transfer(
            format!("the helper replied success but did not read all {size} bytes"),
            Some(e),
        )),
        (Ok(()), Ok(())) => Ok(()),
    }
}
