//! Save: save every helper at once and write the native stream while the
//! states arrive.
//!
//! Plain helpers answer `Save` with their whole state in one message;
//! streaming helpers write it into a socket ([`streamed`]), and a reader
//! thread per helper forwards it chunk by chunk. Either way the data ends
//! up at the one writer thread ([`writer`]), which owns the output.

mod streamed;
mod writer;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};

use super::transfer::{self, pool::Pool, Mode};
use super::{HelperReport, Inner, Peer, SaveReport, Skipped, Transfer};
use crate::atomic::AtomicFile;
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;
use crate::stream::native;
use writer::{Msg, WRITE_STREAM};

/// Chunk buffers in flight beyond one per streaming helper: how far the
/// helpers may run ahead of the output, in [`native::CHUNK_BYTES`] units.
const SPARE_CHUNKS: usize = 4;

pub(super) async fn save<W>(inner: &Inner, out: W) -> Result<(W, SaveReport), Error>
where
    W: Write + Send + 'static,
{
    let config = &inner.config;
    let required: Vec<usize> = (0..inner.slots.len())
        .filter(|&i| inner.slots[i].spec.required)
        .collect();
    let missing = inner
        .wait_connected(&required, config.connect_timeout)
        .await;
    if let Some(e) = Error::from_many(inner.not_connected(&missing, config.connect_timeout)) {
        return Err(e);
    }

    let mut skipped = Vec::new();
    let mut peers: Vec<(usize, Peer)> = Vec::new();
    for (i, slot) in inner.slots.iter().enumerate() {
        match slot.peer() {
            Some(peer) => peers.push((i, peer)),
            None => {
                tracing::warn!(helper = %slot.spec.id, "optional helper not connected, skipped");
                skipped.push(Skipped {
                    id: slot.spec.id.clone(),
                    reason: "not connected".to_string(),
                });
            }
        }
    }
    let modes = join_all(
        peers
            .iter()
            .map(|(i, peer)| transfer::mode(inner, *i, peer)),
    )
    .await;
    let streaming = modes.iter().filter(|&&m| m == Mode::Stream).count();

    let started = Instant::now();
    let pool = Arc::new(Pool::new(streaming + SPARE_CHUNKS, native::CHUNK_BYTES));
    // Raised by the writer thread when it fails: nothing more can be saved.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Msg>();
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::Builder::new()
            .name("vmstate-writer".into())
            .spawn(move || writer::run(out, rx, pool, &stop))
            .map_err(|e| Error::Io {
                what: "cannot start the stream writer thread",
                path: None,
                source: e,
            })?
    };

    let mut calls: FuturesUnordered<_> = peers
        .iter()
        .zip(&modes)
        .map(|((i, peer), &mode)| {
            let (tx, pool, stop) = (tx.clone(), pool.clone(), stop.clone());
            async move {
                let result = match mode {
                    Mode::Plain => save_plain(inner, *i, peer, &tx).await,
                    Mode::Stream => streamed::save(inner, *i, peer, tx, pool, stop).await,
                };
                (*i, mode, result)
            }
        })
        .collect();
    // Kept to ask the writer to finish once every helper succeeded; if this
    // future is dropped instead, the writer leaves the stream unfinished.
    let finish = tx;
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    while let Some((i, mode, result)) = calls.next().await {
        let slot = &inner.slots[i];
        match result {
            Ok(transfer) => {
                tracing::debug!(helper = %slot.spec.id, bytes = transfer.bytes, %mode, "saved");
                slot.state().last_save = Some(transfer.clone());
                reports.push(HelperReport {
                    id: slot.spec.id.clone(),
                    transfer,
                    mode,
                });
            }
            Err(e) if slot.spec.required => errors.push((i, e)),
            Err(e) => {
                tracing::warn!(helper = %slot.spec.id, "optional helper skipped: {}", crate::error::chain(&e));
                skipped.push(Skipped {
                    id: slot.spec.id.clone(),
                    reason: crate::error::chain(&e),
                });
            }
        }
    }
    drop(calls);
    if errors.is_empty() {
        let _ = finish.send(Msg::Finish);
    }
    drop(finish);
    let written = rt::spawn_blocking(move || writer.join()).await;

    let written = written.unwrap_or_else(|_| {
        Err(Error::Io {
            what: "the stream writer thread panicked",
            path: None,
            source: std::io::Error::other("writer thread panicked"),
        })
    });
    // An output failure stopped every helper: it is the cause to report.
    // Any other writer error (a state left open) follows from a helper's.
    if let Err(e @ Error::Io { .. }) = written {
        return Err(e);
    }
    errors.sort_by_key(|(i, _)| *i);
    if let Some(e) = Error::from_many(errors.into_iter().map(|(_, e)| e).collect()) {
        return Err(e);
    }
    let (out, stream_bytes) = written?.ok_or_else(|| Error::Io {
        what: "the state stream was left unfinished",
        path: None,
        source: std::io::Error::other("the writer stopped before the end record"),
    })?;
    Ok((
        out,
        SaveReport {
            helpers: reports,
            skipped,
            stream_bytes,
            duration: started.elapsed(),
        },
    ))
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

/// Calls plain `Save` on one helper, with the call timeout and the size
/// cap, and hands the reply to the writer.
async fn save_plain(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    tx: &mpsc::Sender<Msg>,
) -> Result<Transfer, Error> {
    let id = &inner.slots[index].spec.id;
    let timeout = inner.config.call_timeout;
    let started = Instant::now();
    let reply =
        match rt::timeout(timeout, iface::call_save_at(&peer.conn, peer.destination())).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(source)) if over_message_limit(&source) => {
                return Err(Error::OverMessageLimit {
                    id: id.clone(),
                    call: Call::Save,
                    size: None,
                    limit: iface::MAX_SAVE_BLOB_BYTES as u64,
                })
            }
            Ok(Err(source)) => {
                return Err(Error::Call {
                    id: id.clone(),
                    call: Call::Save,
                    source: Box::new(source),
                })
            }
            Err(rt::Elapsed) => {
                return Err(Error::Timeout {
                    id: id.clone(),
                    call: Call::Save,
                    timeout,
                })
            }
        };
    let duration = started.elapsed();
    let size = reply
        .bytes()
        .map_err(|source| Error::Call {
            id: id.clone(),
            call: Call::Save,
            source: Box::new(source),
        })?
        .len() as u64;
    if size > inner.config.max_blob_bytes {
        return Err(Error::TooLarge {
            id: id.clone(),
            size,
            limit: inner.config.max_blob_bytes,
            what: "the coordinator's per-helper limit",
        });
    }
    // A send fails only when the writer thread stopped on an error, which
    // joining it reports.
    let _ = tx.send(Msg::Whole {
        id: id.clone(),
        reply,
    });
    Ok(Transfer {
        bytes: size,
        duration,
    })
}

pub(super) async fn save_to_path(inner: &Inner, path: &Path) -> Result<SaveReport, Error> {
    let output_error = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            what,
            path: Some(path),
            source,
        }
    };
    let temp =
        AtomicFile::create(path).map_err(output_error("cannot create a temporary file beside"))?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(output_error("cannot create a temporary file beside"))?;
    // `temp` drops on every early return and removes the temporary file.
    let (file, report) = match save(inner, file).await {
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
