//! The second pass of a load: read the verified stream again and hand
//! each helper's state to where it goes, chunk by chunk.
//!
//! A streaming helper's chunks go to its feeder through a short bounded
//! queue ([`FEED_QUEUE_CHUNKS`]), so memory stays flat and a slow helper
//! holds up the others only once its queue is full. A plain helper's
//! chunks are collected (its state fits in one D-Bus message, which was
//! checked) and handed over whole at its `END`, when its `Load` starts.

use std::collections::HashMap;
use std::io::Read;
use std::sync::mpsc::SyncSender;

use futures::channel::oneshot;

use super::feed::Feed;
use super::verify::read_error;
use crate::coordinator::transfer::pool::Pool;
use crate::error::Error;
use crate::stream::{self, native, Limits, Record};

/// Chunks queued for one streaming helper beyond the one its feeder is
/// writing.
pub(crate) const FEED_QUEUE_CHUNKS: usize = 4;

/// Where one helper's state goes.
pub(crate) enum Route {
    /// To a streaming helper's feeder.
    Stream(SyncSender<Feed>),
    /// Collected, then handed to a plain helper's `Load`.
    Plain {
        tx: oneshot::Sender<Vec<u8>>,
        data: Vec<u8>,
    },
}

impl Route {
    /// Hands over the next bytes of the state.
    fn chunk(&mut self, data: &[u8], pool: &Pool) {
        match self {
            Route::Stream(tx) => {
                for piece in data.chunks(pool.capacity().max(1)) {
                    let mut buf = pool.get();
                    buf.extend_from_slice(piece);
                    // A feeder consumes its queue to the end; a send fails
                    // only if it panicked, and then its call fails too.
                    if let Err(unsent) = tx.send(Feed::Data(buf)) {
                        if let Feed::Data(buf) = unsent.0 {
                            pool.put(buf);
                        }
                    }
                }
            }
            Route::Plain {
                data: collected, ..
            } => collected.extend_from_slice(data),
        }
    }

    /// The state is complete and verified.
    fn finish(self) {
        match self {
            Route::Stream(tx) => {
                let _ = tx.send(Feed::Finish);
            }
            // The receiver is gone only if its load was given up.
            Route::Plain { tx, data } => drop(tx.send(data)),
        }
    }
}

/// Routes keyed by helper Id; a helper without a route is not loaded.
pub(crate) type Routes = HashMap<String, Route>;

/// What the second pass hands over: states already in memory, and the
/// verified stream to read again (with its first pass's summary) for the
/// routes of the others.
pub(crate) struct SecondPass {
    pub from_memory: Vec<(Record, Route)>,
    pub again: Option<(Box<dyn Read + Send>, native::Summary)>,
    pub routes: Routes,
}

impl SecondPass {
    /// Runs the second pass (a blocking read).
    ///
    /// # Errors
    ///
    /// As [`native()`].
    pub(crate) fn run(self, limits: Limits, pool: &Pool) -> Result<(), Error> {
        from_memory(self.from_memory, pool);
        match self.again {
            Some((input, summary)) => native(input, limits, &summary, self.routes, pool),
            None => Ok(()),
        }
    }
}

/// An error for a stream that differs from its first pass.
fn changed(offset: u64, id: Option<&str>, what: &str) -> Error {
    Error::Stream(stream::Error::Corrupt {
        offset,
        reason: format!("the input changed since it was verified: {what}"),
        id: id.map(str::to_string),
    })
}

/// Second pass over a native stream whose first pass gave `summary`.
///
/// # Errors
///
/// A read or verification error, or a difference from the first pass.
/// Routes not finished by then are dropped, which aborts their helpers.
pub(crate) fn native(
    input: Box<dyn Read + Send>,
    limits: Limits,
    summary: &native::Summary,
    mut routes: Routes,
    pool: &Pool,
) -> Result<(), Error> {
    let mut reader = native::Reader::new(input, limits).map_err(read_error)?;
    // Routes by helper index, as the stream numbers them.
    let mut open: Vec<Option<Route>> = Vec::with_capacity(summary.helpers.len());
    loop {
        let offset = reader.offset();
        let Some(event) = reader.next_event().map_err(read_error)? else {
            break;
        };
        match event {
            native::Event::Begin { helper, id } => {
                let first = summary.helpers.get(helper as usize);
                if first.map(|h| h.id.as_str()) != Some(id) {
                    return Err(changed(offset, Some(id), "a different helper begins here"));
                }
                let mut route = routes.remove(id);
                if let (Some(Route::Plain { data, .. }), Some(h)) = (&mut route, first) {
                    data.reserve_exact(usize::try_from(h.bytes).unwrap_or(0));
                }
                open.push(route);
            }
            native::Event::Chunk { helper, data } => {
                if let Some(Some(route)) = open.get_mut(helper as usize) {
                    route.chunk(data, pool);
                }
            }
            native::Event::End { helper, bytes } => {
                let index = helper as usize;
                if let Some(first) = summary.helpers.get(index) {
                    if first.bytes != bytes {
                        return Err(changed(
                            offset,
                            Some(&first.id),
                            "its state has another size",
                        ));
                    }
                }
                if let Some(route) = open.get_mut(index).and_then(Option::take) {
                    route.finish();
                }
            }
        }
    }
    if open.len() != summary.helpers.len() {
        return Err(changed(
            reader.offset(),
            None,
            "it holds another number of helpers",
        ));
    }
    Ok(())
}

/// Feeds states already in memory (a decoded QEMU payload) to their
/// streaming helpers.
fn from_memory(states: Vec<(Record, Route)>, pool: &Pool) {
    for (record, mut route) in states {
        route.chunk(&record.data, pool);
        route.finish();
    }
}
