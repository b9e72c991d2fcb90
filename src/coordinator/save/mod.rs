//! Save: save every helper at once and write the native stream while the
//! states arrive.
//!
//! Plain helpers answer `Save` with their whole state in one message;
//! streaming helpers write it into a socket ([`streamed`]), and a reader
//! per helper forwards it chunk by chunk. Either way the data ends up at
//! the one writer thread ([`writer`]), which owns the output. The threads
//! and channels are listed in [the coordinator's
//! docs](crate::coordinator#concurrency).

mod streamed;
mod writer;

use crate::stream::native::WriteOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};

use super::call::HelperCall;
use super::round::{self, Outcomes, Participant};
use super::transfer::{pool::Pool, Mode};
use super::{Inner, Peer, SaveReport, Skipped, Transfer};
use crate::atomic::{written_in_place, OutputFile};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;
use crate::stream::native;
use writer::{Msg, WRITE_STREAM};

/// Chunk buffers in flight beyond one per streaming helper: how far the
/// helpers may run ahead of the output, in [`native::CHUNK_BYTES`] units.
const SPARE_CHUNKS: usize = 4;

pub(super) async fn save<W>(
    inner: &Inner,
    out: W,
    options: &WriteOptions,
) -> Result<(W, SaveReport), Error>
where
    W: Write + Send + 'static,
{
    inner
        .require(&inner.required(), inner.config.connect_timeout)
        .await?;
    let (participants, skipped) = round::participants(inner, 0..inner.slots.len()).await;
    let streaming = participants
        .iter()
        .filter(|p| p.mode == Mode::Stream)
        .count();

    let started = Instant::now();
    let pool = Arc::new(Pool::new(streaming + SPARE_CHUNKS, native::CHUNK_BYTES));
    // Raised by the writer thread when it fails: nothing more can be saved.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, writer) = writer::spawn(out, options.clone(), pool.clone(), stop.clone())?;
    let outcomes = save_all(inner, &participants, skipped, &tx, &pool, &stop).await;
    // Only now is the writer asked to finish, once every helper succeeded;
    // if this future is dropped instead, the writer leaves the stream
    // unfinished.
    if outcomes.all_passed() {
        let _ = tx.send(Msg::Finish);
    }
    drop(tx);
    let written = writer::join(writer).await;

    // An output failure stopped every helper: it is the cause to report.
    // Any other writer error (a state left open) follows from a helper's.
    if let Err(e @ Error::Io { .. }) = written {
        return Err(e);
    }
    let (helpers, skipped) = outcomes.finish(None)?;
    let (out, stream_bytes) = written?.ok_or_else(|| Error::Io {
        what: "the state stream was left unfinished",
        path: None,
        source: std::io::Error::other("the writer stopped before the end record"),
    })?;
    let report = SaveReport {
        helpers,
        skipped,
        stream_bytes,
        duration: started.elapsed(),
    };
    Ok((out, report))
}

/// Saves every participant at once, each on its path, and collects the
/// results in the order they finish.
async fn save_all(
    inner: &Inner,
    participants: &[Participant],
    skipped: Vec<Skipped>,
    tx: &mpsc::Sender<Msg>,
    pool: &Arc<Pool>,
    stop: &Arc<AtomicBool>,
) -> Outcomes {
    let mut calls: FuturesUnordered<_> = participants
        .iter()
        .map(|p| {
            let (tx, pool, stop) = (tx.clone(), pool.clone(), stop.clone());
            async move {
                let result = match p.mode {
                    Mode::Plain => save_plain(inner, p.slot, &p.peer, &tx).await,
                    Mode::Stream => streamed::save(inner, p.slot, &p.peer, tx, pool, stop).await,
                };
                (p, result)
            }
        })
        .collect();
    let mut outcomes = Outcomes::new(Call::Save, skipped);
    while let Some((p, result)) = calls.next().await {
        outcomes.record(inner, p.slot, p.mode, result);
    }
    outcomes
}

/// Whether a plain `Save` failed because the reply would not fit in one
/// message: zbus helpers reply `Failed("excess data")`, this crate's
/// helper library [`iface::ERROR_TOO_LARGE`].
fn over_message_limit(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => name.as_str() == iface::ERROR_TOO_LARGE,
        zbus::Error::FDO(e) => {
            matches!(e.as_ref(), zbus::fdo::Error::Failed(m) if m.contains("excess data"))
        }
        zbus::Error::ExcessData => true,
        _ => false,
    }
}

/// The room a plain `Save` of the helper in slot `index` takes before its
/// call: its last saved size, or the largest reply when none is known, at
/// most the whole budget.
fn room_before_save(inner: &Inner, index: usize) -> u64 {
    let last = inner.slots[index]
        .state()
        .last_save
        .as_ref()
        .map(|t| t.bytes);
    let expected = last.unwrap_or(iface::MAX_SAVE_BLOB_BYTES as u64);
    expected.min(inner.config.budget.limit())
}

/// Calls plain `Save` on one helper, with the call timeout and the size
/// cap, once its room in the memory budget is free, and hands the reply
/// (with its room) to the writer.
async fn save_plain(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    tx: &mpsc::Sender<Msg>,
) -> Result<Transfer, Error> {
    let call = HelperCall::new(inner, index, Call::Save);
    let budget = &inner.config.budget;
    let wanted = room_before_save(inner, index);
    let mut room = budget.take(wanted).await.ok_or(Error::TooLarge {
        id: call.id.to_string(),
        size: wanted,
        limit: budget.limit(),
        what: "the coordinator's memory limit for plain states",
    })?;
    let started = Instant::now();
    let reply = match call
        .within(iface::call_save_at(&peer.conn, peer.destination()))
        .await?
    {
        Ok(reply) => reply,
        Err(source) if over_message_limit(&source) => {
            return Err(Error::OverMessageLimit {
                id: call.id.to_string(),
                call: Call::Save,
                size: None,
                limit: iface::MAX_SAVE_BLOB_BYTES as u64,
            })
        }
        Err(source) => return Err(call.failed(source)),
    };
    let duration = started.elapsed();
    let size = reply.bytes().map_err(|e| call.failed(e))?.len() as u64;
    if size > inner.config.max_blob_bytes {
        return Err(Error::TooLarge {
            id: call.id.to_string(),
            size,
            limit: inner.config.max_blob_bytes,
            what: "the coordinator's per-helper limit",
        });
    }
    if size > budget.limit() {
        return Err(Error::TooLarge {
            id: call.id.to_string(),
            size,
            limit: budget.limit(),
            what: "the coordinator's memory limit for plain states",
        });
    }
    // The reply is in memory already: hold its real size from now on.
    room.resize(size);
    // A send fails only when the writer thread stopped on an error, which
    // joining it reports.
    let _ = tx.send(Msg::Whole {
        id: call.id.to_string(),
        reply,
        room,
    });
    Ok(Transfer {
        bytes: size,
        duration,
    })
}

pub(super) async fn save_to_path(
    inner: &Inner,
    path: &Path,
    options: &WriteOptions,
) -> Result<SaveReport, Error> {
    let output_error = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            what,
            path: Some(path),
            source,
        }
    };
    let opening = if written_in_place(path) {
        "cannot open"
    } else {
        "cannot create a temporary file beside"
    };
    let temp = OutputFile::create(path).map_err(output_error(opening))?;
    let file = temp.as_file().try_clone().map_err(output_error(opening))?;
    // `temp` drops on every early return and removes the temporary file.
    let (file, report) = match save(inner, file, options).await {
        Ok(done) => done,
        // Only the stream's own writes are about the output file; a spool
        // or thread failure keeps its own wording.
        Err(Error::Io {
            what: WRITE_STREAM,
            path: None,
            source,
        }) => return Err(output_error(WRITE_STREAM)(source)),
        Err(e) => return Err(e),
    };
    drop(file);
    rt::spawn_blocking(move || temp.commit())
        .await
        .map_err(output_error("cannot write the state stream to"))?;
    Ok(report)
}
