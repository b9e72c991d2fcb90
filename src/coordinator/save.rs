//! Save: call every helper's `Save` at once and write the native stream as
//! the replies arrive.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use super::{HelperReport, Inner, Peer, Skipped, Transfer};
use crate::error::{Call, Error};
use crate::iface::{self, SaveReply};
use crate::rt;
use crate::stream::{self, native};

/// Buffer between the stream encoder and the output.
const OUTPUT_BUFFER_BYTES: usize = 256 << 10;

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

/// A finished `Save` reply, on its way to the writer thread.
struct Saved {
    id: String,
    reply: SaveReply,
}

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

    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Saved>();
    let writer = std::thread::Builder::new()
        .name("vmstate-writer".into())
        .spawn(move || write_stream(out, rx))
        .map_err(|e| Error::Io {
            what: "cannot start the stream writer thread",
            path: None,
            source: e,
        })?;

    let mut calls: FuturesUnordered<_> = peers
        .iter()
        .map(|(i, peer)| async move { (*i, save_one(inner, *i, peer).await) })
        .collect();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    while let Some((i, result)) = calls.next().await {
        let slot = &inner.slots[i];
        match result {
            Ok((reply, transfer)) => {
                tracing::debug!(helper = %slot.spec.id, bytes = transfer.bytes, "saved");
                slot.state().last_save = Some(transfer.clone());
                reports.push(HelperReport {
                    id: slot.spec.id.clone(),
                    transfer,
                });
                // A send fails only when the writer thread stopped on an
                // error, which joining it reports below.
                let _ = tx.send(Saved {
                    id: slot.spec.id.clone(),
                    reply,
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
    drop(tx);
    let written = rt::spawn_blocking(move || writer.join()).await;

    errors.sort_by_key(|(i, _)| *i);
    if let Some(e) = Error::from_many(errors.into_iter().map(|(_, e)| e).collect()) {
        return Err(e);
    }
    let (out, stream_bytes) = match written {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::Io {
                what: "the stream writer thread panicked",
                path: None,
                source: std::io::Error::other("writer thread panicked"),
            })
        }
    };
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

/// Calls `Save` on one helper, with the call timeout and the size cap.
async fn save_one(
    inner: &Inner,
    index: usize,
    peer: &Peer,
) -> Result<(SaveReply, Transfer), Error> {
    let id = &inner.slots[index].spec.id;
    let timeout = inner.config.call_timeout;
    let started = Instant::now();
    let reply =
        match rt::timeout(timeout, iface::call_save_at(&peer.conn, peer.destination())).await {
            Ok(Ok(reply)) => reply,
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
    Ok((
        reply,
        Transfer {
            bytes: size,
            duration,
        },
    ))
}

/// The writer thread: encodes replies into the native stream as they come.
/// Returns the output and the stream's size.
fn write_stream<W: Write>(out: W, rx: mpsc::Receiver<Saved>) -> Result<(W, u64), Error> {
    let mut writer = native::Writer::new(BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, out))
        .map_err(write_error)?;
    for saved in rx {
        // Checked when the reply arrived; this borrows it again.
        let data = saved.reply.bytes().map_err(|source| Error::Call {
            id: saved.id.clone(),
            call: Call::Save,
            source: Box::new(source),
        })?;
        writer.write_blob(&saved.id, data).map_err(write_error)?;
    }
    let bytes = writer.bytes_written();
    let buffered = writer.finish().map_err(write_error)?;
    let out = buffered.into_inner().map_err(|e| Error::Io {
        what: "cannot write the state stream",
        path: None,
        source: e.into_error(),
    })?;
    Ok((out, bytes))
}

fn write_error(e: stream::Error) -> Error {
    match e {
        stream::Error::Io(source) => Error::Io {
            what: "cannot write the state stream",
            path: None,
            source,
        },
        other => Error::Stream(other),
    }
}

pub(super) async fn save_to_path(inner: &Inner, path: &Path) -> Result<SaveReport, Error> {
    let io_error = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            what,
            path: Some(path),
            source,
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".vmstate-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io_error("cannot create a temporary file beside"))?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(io_error("cannot create a temporary file beside"))?;
    let (file, report) = match save(inner, file).await {
        Ok(done) => done,
        Err(Error::Io { what, source, .. }) => {
            // `temp` drops here and removes the temporary file.
            return Err(Error::Io {
                what,
                path: Some(path.to_path_buf()),
                source,
            });
        }
        Err(e) => return Err(e),
    };
    let path_buf = path.to_path_buf();
    let persisted = rt::spawn_blocking(move || -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        temp.persist(&path_buf).map_err(|e| e.error)?;
        // Make the rename itself durable.
        std::fs::File::open(&dir)?.sync_all()
    })
    .await;
    persisted.map_err(io_error("cannot write the state stream to"))?;
    Ok(report)
}
