//! The stream writer thread: the one place that writes the output stream.
//!
//! Helpers' data reaches it as messages in arrival order: whole plain
//! replies, and the chunks of streamed states, interleaved. A streamed
//! state is written as it arrives ([`Msg::Begin`], [`Msg::Chunk`],
//! [`Msg::End`]), unless it is *staged*: then its chunks go to an unlinked
//! temporary file and are copied into the stream only at its `End`, so an
//! [`Msg::Abort`] can still drop it (optional helpers).
//!
//! Chunk buffers go back to the [`Pool`] once written. After an error the
//! thread raises the shared stop flag (the reader threads then give up and
//! close their helpers' sockets), keeps draining messages and returning
//! buffers, so no producer waits forever for a buffer, and reports the
//! first error at the end.

use crate::stream::native::WriteOptions;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

/// What a failed write of the stream itself is called (and how
/// `save_to_path` tells it from other I/O errors).
pub(crate) const WRITE_STREAM: &str = "cannot write the state stream";

use crate::coordinator::budget::Permit;
use crate::coordinator::call;
use crate::coordinator::transfer::pool::Pool;
use crate::error::{Call, Error};
use crate::iface::SaveReply;
use crate::rt;
use crate::stream::{self, native};

/// Buffer between the stream encoder and the output.
const OUTPUT_BUFFER_BYTES: usize = 256 << 10;

/// What the writer thread is asked to do. `slot` is the helper's slot
/// index in the coordinator.
pub(super) enum Msg {
    /// A streamed state starts.
    Begin {
        slot: usize,
        id: String,
        staged: bool,
    },
    /// The next bytes of a streamed state.
    Chunk { slot: usize, buf: Vec<u8> },
    /// A streamed state is complete and its helper succeeded.
    End { slot: usize },
    /// A streamed state failed; drop it if it is staged.
    Abort { slot: usize },
    /// A whole plain `Save` reply.
    Whole {
        id: String,
        reply: SaveReply,
        /// The reply's room in the memory budget, given back once it is
        /// written (when the message is dropped).
        room: Permit,
    },
    /// Every helper succeeded: write the end record. Without it (the save
    /// failed or was dropped) the stream is left without its end record,
    /// which every reader rejects.
    Finish,
}

/// Where a streamed state's bytes go.
enum Open {
    /// Straight into the stream, under this helper index.
    Direct(u32),
    /// Into a temporary file until its end.
    Staged { id: String, spool: Option<File> },
}

struct Thread<W: Write> {
    writer: native::Writer<BufWriter<W>>,
    open: HashMap<usize, Open>,
    pool: Arc<Pool>,
    /// Copies staged states into the stream; allocated on first use.
    copy_buf: Vec<u8>,
}

/// The writer thread, which returns what [`run`] does.
pub(super) type Handle<W> = std::thread::JoinHandle<Result<Option<(W, u64)>, Error>>;

/// Starts the writer thread on `out`; returns the sender of its messages.
///
/// # Errors
///
/// [`Error::Io`] when the thread cannot be started.
pub(super) fn spawn<W: Write + Send + 'static>(
    out: W,
    options: WriteOptions,
    pool: Arc<Pool>,
    stop: Arc<AtomicBool>,
) -> Result<(Sender<Msg>, Handle<W>), Error> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let handle = std::thread::Builder::new()
        .name("vmstate-writer".into())
        .spawn(move || run(out, &options, rx, pool, &stop))
        .map_err(|e| Error::Io {
            what: "cannot start the stream writer thread",
            path: None,
            source: e,
        })?;
    Ok((tx, handle))
}

/// Waits (off the async threads) for the writer thread to end.
pub(super) async fn join<W: Send + 'static>(handle: Handle<W>) -> Result<Option<(W, u64)>, Error> {
    rt::spawn_blocking(move || handle.join())
        .await
        .unwrap_or_else(|_| {
            Err(Error::Io {
                what: "the stream writer thread panicked",
                path: None,
                source: std::io::Error::other("writer thread panicked"),
            })
        })
}

/// Runs the writer thread until [`Msg::Finish`] or until every sender is
/// gone. Returns the output and the stream's size once finished, `None`
/// when the senders went away without asking to finish.
pub(super) fn run<W: Write>(
    out: W,
    options: &WriteOptions,
    rx: Receiver<Msg>,
    pool: Arc<Pool>,
    stop: &AtomicBool,
) -> Result<Option<(W, u64)>, Error> {
    let output = BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, out);
    let mut thread = match native::Writer::with_options(output, options) {
        Ok(writer) => Thread {
            writer,
            open: HashMap::new(),
            pool: pool.clone(),
            copy_buf: Vec::new(),
        },
        Err(e) => {
            stop.store(true, Ordering::Release);
            drain(rx, &pool);
            return Err(write_error(e));
        }
    };
    let mut finished = false;
    while let Ok(msg) = rx.recv() {
        if let Msg::Finish = msg {
            finished = true;
            break;
        }
        if let Err(e) = thread.handle(msg) {
            stop.store(true, Ordering::Release);
            drain(rx, &pool);
            return Err(e);
        }
    }
    if !finished {
        // What was written stays as it is, without an end record.
        return Ok(None);
    }
    thread.writer.flush_pending().map_err(write_error)?;
    let bytes = thread.writer.finished_size();
    let buffered = thread.writer.finish().map_err(write_error)?;
    let out = buffered.into_inner().map_err(|e| Error::Io {
        what: WRITE_STREAM,
        path: None,
        source: e.into_error(),
    })?;
    Ok(Some((out, bytes)))
}

/// Returns the buffers of every message still to come.
fn drain(rx: Receiver<Msg>, pool: &Pool) {
    for msg in rx {
        if let Msg::Chunk { buf, .. } = msg {
            pool.put(buf);
        }
    }
}

impl<W: Write> Thread<W> {
    fn handle(&mut self, msg: Msg) -> Result<(), Error> {
        match msg {
            Msg::Begin { slot, id, staged } => {
                let open = if staged {
                    Open::Staged { id, spool: None }
                } else {
                    Open::Direct(self.writer.begin(&id).map_err(write_error)?)
                };
                self.open.insert(slot, open);
            }
            Msg::Chunk { slot, buf } => {
                let written = self.chunk(slot, &buf);
                self.pool.put(buf);
                written?;
            }
            Msg::End { slot } => match self.open.remove(&slot) {
                Some(Open::Direct(index)) => self.writer.end(index).map_err(write_error)?,
                Some(Open::Staged { id, spool }) => self.unstage(&id, spool)?,
                None => {}
            },
            Msg::Abort { slot } => {
                // A direct state stays open, so the stream cannot be
                // finished; the save fails anyway (its helper is required).
                if let Some(Open::Staged { .. }) = self.open.get(&slot) {
                    self.open.remove(&slot);
                }
            }
            // Handled by `run`.
            Msg::Finish => {}
            Msg::Whole {
                id,
                reply,
                room: _room,
            } => {
                // Checked when the reply arrived; this borrows it again.
                let data = reply
                    .bytes()
                    .map_err(|e| call::failed(&id, Call::Save, e))?;
                self.writer.write_blob(&id, data).map_err(write_error)?;
            }
        }
        Ok(())
    }

    /// Writes one chunk where its state goes. Chunks of a state that is
    /// not open (aborted, or never begun) are dropped.
    fn chunk(&mut self, slot: usize, data: &[u8]) -> Result<(), Error> {
        match self.open.get_mut(&slot) {
            Some(Open::Direct(index)) => self.writer.write_chunk(*index, data).map_err(write_error),
            Some(Open::Staged { spool, .. }) => {
                let file = match spool {
                    Some(file) => file,
                    None => spool.insert(tempfile::tempfile().map_err(spool_error)?),
                };
                file.write_all(data).map_err(spool_error)
            }
            None => Ok(()),
        }
    }

    /// Copies a staged state into the stream.
    fn unstage(&mut self, id: &str, spool: Option<File>) -> Result<(), Error> {
        let index = self.writer.begin(id).map_err(write_error)?;
        if let Some(mut file) = spool {
            file.seek(SeekFrom::Start(0)).map_err(spool_error)?;
            // Not from the pool: the producers may hold every pool buffer
            // while they wait for this thread.
            if self.copy_buf.is_empty() {
                self.copy_buf = vec![0; native::CHUNK_BYTES];
            }
            let buf = &mut self.copy_buf;
            loop {
                match file.read(buf) {
                    Ok(0) => break,
                    Ok(n) => self
                        .writer
                        .write_chunk(index, &buf[..n])
                        .map_err(write_error)?,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(spool_error(e)),
                }
            }
        }
        self.writer.end(index).map_err(write_error)
    }
}

fn spool_error(source: std::io::Error) -> Error {
    Error::Io {
        what: "cannot stage an optional helper's state in a temporary file",
        path: None,
        source,
    }
}

pub(super) fn write_error(e: stream::Error) -> Error {
    match e {
        stream::Error::Io(source) => Error::Io {
            what: WRITE_STREAM,
            path: None,
            source,
        },
        other => Error::Stream(other),
    }
}
