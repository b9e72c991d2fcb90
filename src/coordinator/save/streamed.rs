//! One helper's streamed save: `SaveFd` with one end of a socket pair,
//! while a thread reads the other end and forwards the state to the writer
//! thread chunk by chunk. No state byte passes through D-Bus, so neither
//! the zbus thread nor the other helpers wait for this one.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use socket2::Socket;

use super::writer::Msg;
use crate::coordinator::call::HelperCall;
use crate::coordinator::transfer::pair::{self, Pair};
use crate::coordinator::transfer::pool::Pool;
use crate::coordinator::{Inner, Peer, Transfer};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;

/// How the reader thread ended.
#[derive(Debug)]
enum Received {
    /// End-of-file after this many bytes.
    Done(u64),
    /// More than the limit arrived (at least this many bytes).
    TooLarge(u64),
    /// Reading failed after this many bytes.
    Failed(std::io::Error, u64),
    /// The save gave up on this helper first.
    Cancelled,
}

/// Saves the helper in slot `index` through `SaveFd`. Returns what moved;
/// on success the writer has been sent the state's `End`, on failure its
/// `Abort`.
pub(super) async fn save(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    tx: Sender<Msg>,
    pool: Arc<Pool>,
    stop: Arc<AtomicBool>,
) -> Result<Transfer, Error> {
    let spec = &inner.slots[index].spec;
    let call = HelperCall::new(inner, index, Call::Save);
    let limit = inner.config.max_blob_bytes;
    let setup_error = |source| call.transfer("cannot create its socket pair", Some(source));
    let Pair { ours, theirs } = Pair::new().map_err(setup_error)?;
    // If this future is dropped (the whole save abandoned), the reader
    // thread must not wait on the helper forever.
    let mut guard = AbortOnDrop {
        control: ours.try_clone().map_err(setup_error)?,
        cancelled: Arc::new(AtomicBool::new(false)),
        armed: true,
    };

    let _ = tx.send(Msg::Begin {
        slot: index,
        id: spec.id.clone(),
        // An optional helper's state can be dropped until it is complete.
        staged: !spec.required,
    });
    let started = Instant::now();
    let (tx_reader, cancelled) = (tx.clone(), guard.cancelled.clone());
    let reader = rt::spawn_blocking(move || {
        let give_up = || cancelled.load(Ordering::Acquire) || stop.load(Ordering::Acquire);
        receive(&ours, index, &tx_reader, &pool, limit, give_up)
    });
    let save_fd = async {
        let reply = iface::call_save_fd(&peer.conn, peer.destination(), theirs.as_fd()).await;
        // The helper's copies are its own; with ours gone too, a helper
        // that only closes its end (no shutdown) still ends the data.
        drop(theirs);
        if reply.is_err() {
            pair::abort(&guard.control);
        }
        reply
    };
    let result = call
        .within(futures::future::join(save_fd, reader))
        .await
        .and_then(|(reply, received)| judge(&call, limit, reply, received));
    match &result {
        Ok(_) => {
            guard.armed = false;
            let _ = tx.send(Msg::End { slot: index });
        }
        Err(_) => {
            guard.abort();
            let _ = tx.send(Msg::Abort { slot: index });
        }
    }
    result.map(|bytes| Transfer {
        bytes,
        duration: started.elapsed(),
    })
}

/// Cancels a helper's reader thread and shuts its socket pair down when
/// dropped while armed.
struct AbortOnDrop {
    control: Socket,
    cancelled: Arc<AtomicBool>,
    armed: bool,
}

impl AbortOnDrop {
    /// Tells the reader to give up and shuts the socket pair down, so that
    /// neither the reader nor the helper waits on the other.
    fn abort(&self) {
        self.cancelled.store(true, Ordering::Release);
        pair::abort(&self.control);
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.abort();
        }
    }
}

/// The outcome of the call and the reading together.
fn judge(
    call: &HelperCall<'_>,
    limit: u64,
    reply: zbus::Result<u64>,
    received: Received,
) -> Result<u64, Error> {
    match (reply, received) {
        // The helper then fails to write; the limit is the cause.
        (_, Received::TooLarge(size)) => Err(Error::TooLarge {
            id: call.id.to_string(),
            size,
            limit,
            what: "the coordinator's per-helper limit",
        }),
        (Err(source), _) => Err(call.failed(source)),
        (Ok(_), Received::Failed(e, got)) => Err(call.transfer(
            format!("reading its state failed after {got} bytes"),
            Some(e),
        )),
        (Ok(_), Received::Cancelled) => Err(call.transfer("the save was cancelled", None)),
        (Ok(sent), Received::Done(got)) if sent != got => Err(call.transfer(
            format!("the helper reported {sent} bytes, but {got} arrived"),
            None,
        )),
        (Ok(_), Received::Done(got)) => Ok(got),
    }
}

/// The reader thread: fills pool buffers from the coordinator's end and
/// sends them to the writer until end-of-file, an error, the limit, or
/// `give_up` (this helper's save was abandoned, or the output failed).
fn receive(
    end: &Socket,
    slot: usize,
    tx: &Sender<Msg>,
    pool: &Pool,
    limit: u64,
    give_up: impl Fn() -> bool,
) -> Received {
    let mut total = 0u64;
    loop {
        let mut buf = pool.get();
        // One byte past the limit tells "at the limit" from "over it".
        let room = limit.saturating_sub(total).saturating_add(1);
        let want = usize::try_from(room).unwrap_or(usize::MAX);
        let eof = match pair::fill(end, &mut buf, want) {
            Ok(eof) => eof,
            Err(e) => {
                pool.put(buf);
                return Received::Failed(e, total);
            }
        };
        total += buf.len() as u64;
        if total > limit {
            pool.put(buf);
            pair::abort(end);
            return Received::TooLarge(total);
        }
        if give_up() {
            pool.put(buf);
            // The helper's writes now fail, and it replies.
            pair::abort(end);
            return Received::Cancelled;
        }
        if buf.is_empty() {
            pool.put(buf);
        } else if let Err(unsent) = tx.send(Msg::Chunk { slot, buf }) {
            // The writer thread is gone (its error is reported).
            if let Msg::Chunk { buf, .. } = unsent.0 {
                pool.put(buf);
            }
            return Received::Cancelled;
        }
        if eof {
            return Received::Done(total);
        }
    }
}
