//! The verifying pass of a load: read the stream once, check every record
//! and hand each helper's state to where it goes as it comes, holding back
//! what would complete a load until the whole stream has verified.
//!
//! A streaming helper's chunks go to its feeder at once, in the very
//! buffer the stream reader read them into (taken from the chunk pool, the
//! reader given another), through a short bounded queue
//! ([`FEED_QUEUE_CHUNKS`]), so memory stays flat, a slow
//! helper holds up the reading (and the others) only once its queue is
//! full, and loading overlaps the reading. A plain helper's chunks are
//! collected (its state fits in one D-Bus message, which was checked), in
//! memory within the coordinator's budget, else in a temporary file
//! ([`plain`](super::plain)).
//! Only once `STREAM_END` has verified, with every helper announced in
//! the stream's contents present at its announced size, are the routes
//! finished ([`Route::finish`]): each feeder commits its state (its last
//! byte, or a sealed load's trailer), each plain helper gets its `Load`.
//! On any error the routes are dropped unfinished, every feeder closes its
//! helper's socket short, and no plain `Load` is made ([the
//! rule](crate::coordinator#loading)).

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use futures::channel::oneshot;

use super::decoded::NativeInput;
use super::feed::Feed;
use super::plain::Collect;
use super::verify::{read_error, Contents};
use crate::coordinator::budget::Budget;
use crate::coordinator::transfer::pool::Pool;
use crate::coordinator::{policy, HelperSpec};
use crate::error::{Call, Error};
use crate::iface;
use crate::stream::{self, native, Limits, Record};

/// Chunks queued for one streaming helper beyond the one its feeder is
/// writing.
pub(crate) const FEED_QUEUE_CHUNKS: usize = 4;

/// The chunk buffers a verifying pass feeding `streaming` helpers needs:
/// each helper's queue and the one its feeder writes, the one the reader
/// reads into and the one being handed over.
pub(crate) fn pool_buffers(streaming: usize) -> usize {
    streaming * (FEED_QUEUE_CHUNKS + 1) + 2
}

/// Set when the load that runs a verifying pass is dropped before it
/// ended: the pass, on a thread of its own, then finishes no route, so that
/// an abandoned load never commits a helper's state behind the back of
/// whatever runs next.
#[derive(Debug, Clone, Default)]
pub(crate) struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    /// A guard that marks the load abandoned when it is dropped; drop it
    /// only once the pass has ended, or to abandon the load.
    pub(crate) fn guard(&self) -> AbandonOnDrop {
        AbandonOnDrop(self.clone())
    }

    fn check(&self) -> Result<(), Error> {
        if self.0.load(Ordering::Acquire) {
            return Err(Error::Io {
                what: "the load was abandoned before the stream verified",
                path: None,
                source: std::io::Error::other("abandoned"),
            });
        }
        Ok(())
    }
}

/// See [`Abandoned::guard`].
#[derive(Debug)]
pub(crate) struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0 .0.store(true, Ordering::Release);
    }
}

/// Where one helper's state goes.
pub(crate) enum Route {
    /// To a streaming helper's feeder.
    Stream(SyncSender<Feed>),
    /// Collected (from the state's `BEGIN` on), then handed to a plain
    /// helper's `Load`.
    Plain {
        tx: oneshot::Sender<Collect>,
        data: Option<Collect>,
    },
}

impl Route {
    /// Hands over the next bytes of the state.
    ///
    /// # Errors
    ///
    /// A plain state's temporary file failing.
    fn chunk(&mut self, data: &[u8], pool: &Pool) -> Result<(), Error> {
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
                data: Some(collected),
                ..
            } => collected.push(data)?,
            Route::Plain { data: None, .. } => {}
        }
        Ok(())
    }

    /// Whether the route takes whole chunk buffers ([`Route::pass_on`]).
    fn takes_buffers(&self) -> bool {
        matches!(self, Route::Stream(_))
    }

    /// Hands over a buffer holding the next bytes of a streaming state, as
    /// it is: the chunk the reader has just read into it.
    fn pass_on(&mut self, buf: Vec<u8>, pool: &Pool) {
        match self {
            Route::Stream(tx) => {
                if let Err(unsent) = tx.send(Feed::Data(buf)) {
                    if let Feed::Data(buf) = unsent.0 {
                        pool.put(buf);
                    }
                }
            }
            Route::Plain { .. } => pool.put(buf),
        }
    }

    /// The whole stream verified: the state may complete its load.
    fn finish(self) {
        match self {
            Route::Stream(tx) => {
                let _ = tx.send(Feed::Finish);
            }
            // The receiver is gone only if its load was given up.
            Route::Plain { tx, data } => {
                if let Some(data) = data {
                    drop(tx.send(data));
                }
            }
        }
    }
}

/// Routes keyed by helper Id; a helper without a route is not loaded.
pub(crate) type Routes = HashMap<String, Route>;

/// What the verifying pass hands over: states already in memory, and the
/// stream to read (with each helper's Id and size, as announced before
/// any call) for the routes of the others.
pub(crate) struct Pass {
    pub from_memory: Vec<(Record, Route)>,
    pub stream: Option<(Box<dyn Read + Send>, Contents)>,
    pub routes: Routes,
    /// The budget the plain states are collected within.
    pub budget: Arc<Budget>,
    /// Set if the load is dropped while the pass runs.
    pub abandoned: Abandoned,
}

impl Pass {
    /// Runs the pass (a blocking read).
    ///
    /// # Errors
    ///
    /// As [`native()`].
    pub(crate) fn run(self, limits: Limits, pool: &Pool) -> Result<(), Error> {
        match self.stream {
            Some((input, contents)) => native(
                input,
                limits,
                &contents,
                self.routes,
                pool,
                &self.budget,
                &self.abandoned,
            )?,
            None => self.abandoned.check()?,
        }
        from_memory(self.from_memory, pool)
    }
}

/// An error for a stream that differs from the contents announced.
fn changed(offset: u64, id: Option<&str>, what: &str) -> Error {
    Error::Stream(stream::Error::Corrupt {
        offset,
        reason: format!("the input changed since it was indexed: {what}"),
        id: id.map(str::to_string),
    })
}

/// The verifying pass over a native stream announced as `contents` (each
/// helper's Id and size, in stream order).
///
/// # Errors
///
/// A read or verification error, or a difference from `contents`. The
/// routes are then dropped unfinished, which aborts their helpers.
pub(crate) fn native(
    input: Box<dyn Read + Send>,
    limits: Limits,
    contents: &[(String, u64)],
    mut routes: Routes,
    pool: &Pool,
    budget: &Arc<Budget>,
    abandoned: &Abandoned,
) -> Result<(), Error> {
    let mut reader = native::Reader::new(input, limits).map_err(read_error)?;
    // By helper index, as the stream numbers them: the route and the
    // bytes handed over so far.
    let mut open: Vec<(Option<Route>, u64)> = Vec::with_capacity(contents.len());
    // States complete and verified, waiting for the whole stream.
    let mut complete: Vec<Route> = Vec::with_capacity(contents.len());
    loop {
        let offset = reader.offset();
        let Some(event) = reader.next_event().map_err(read_error)? else {
            break;
        };
        match event {
            native::Event::Begin { helper, id } => {
                let announced = contents.get(helper as usize);
                if announced.map(|(a, _)| a.as_str()) != Some(id) {
                    return Err(changed(offset, Some(id), "a different helper begins here"));
                }
                let mut route = routes.remove(id);
                if let (Some(Route::Plain { data, .. }), Some((_, size))) = (&mut route, announced)
                {
                    *data = Some(Collect::start(budget, *size)?);
                }
                open.push((route, 0));
            }
            native::Event::Chunk { helper, data } => {
                let index = helper as usize;
                if let (Some((route, sent)), Some((id, size))) =
                    (open.get_mut(index), contents.get(index))
                {
                    *sent += data.len() as u64;
                    if *sent > *size {
                        return Err(changed(offset, Some(id), "its state is larger"));
                    }
                    match route {
                        Some(route) if route.takes_buffers() => {
                            let buf = reader.take_payload(pool.get_as_is());
                            route.pass_on(buf, pool);
                        }
                        Some(route) => route.chunk(data, pool)?,
                        None => {}
                    }
                }
            }
            native::Event::End { helper, bytes } => {
                let index = helper as usize;
                if let Some((id, size)) = contents.get(index) {
                    if *size != bytes {
                        return Err(changed(offset, Some(id), "its state has another size"));
                    }
                }
                if let Some(route) = open.get_mut(index).and_then(|(r, _)| r.take()) {
                    complete.push(route);
                }
            }
        }
    }
    if open.len() != contents.len() {
        return Err(changed(
            reader.offset(),
            None,
            "it holds another number of helpers",
        ));
    }
    // The whole stream verified: every held-back load may complete.
    abandoned.check()?;
    for route in complete {
        route.finish();
    }
    Ok(())
}

/// The verifying pass of a live load ([`super::live`]): a native stream
/// read once, whose contents are learnt as it comes. Each state's route
/// starts at its `BEGIN` (a plain state is collected as it grows, within
/// the budget); the routes finish, as in [`native()`], only once
/// `STREAM_END` has verified and the stream holds what `helpers` require.
/// Returns each helper's Id and state size, in stream order.
///
/// # Errors
///
/// A read or verification error; an Id not in `helpers`, at its `BEGIN`;
/// a required helper missing, at the end; a plain state over one
/// message or over the budget, as soon as it is. The routes are then
/// dropped unfinished, which aborts their helpers.
pub(crate) fn live(
    input: NativeInput,
    limits: Limits,
    helpers: &[HelperSpec],
    mut routes: Routes,
    pool: &Pool,
    budget: &Arc<Budget>,
    abandoned: &Abandoned,
) -> Result<Contents, Error> {
    let mut reader = input.into_reader(limits)?;
    // By helper index, as the stream numbers them: the route and the Id.
    let mut open: Vec<(Option<Route>, String)> = Vec::new();
    let mut complete: Vec<Route> = Vec::new();
    while let Some(event) = reader.next_event().map_err(read_error)? {
        match event {
            native::Event::Begin { id, .. } => {
                if !helpers.iter().any(|h| h.id == id) {
                    return Err(Error::UnknownInStream { id: id.to_string() });
                }
                let mut route = routes.remove(id);
                if let Some(Route::Plain { data, .. }) = &mut route {
                    *data = Some(Collect::growing(budget));
                }
                open.push((route, id.to_string()));
            }
            native::Event::Chunk { helper, data } => {
                if let Some((Some(route), id)) = open.get_mut(helper as usize) {
                    if route.takes_buffers() {
                        let buf = reader.take_payload(pool.get_as_is());
                        route.pass_on(buf, pool);
                        continue;
                    }
                    if let Route::Plain {
                        data: Some(collected),
                        ..
                    } = route
                    {
                        plain_fits(id, collected.len() + data.len() as u64, budget)?;
                    }
                    route.chunk(data, pool)?;
                }
            }
            native::Event::End { helper, .. } => {
                if let Some(route) = open.get_mut(helper as usize).and_then(|(r, _)| r.take()) {
                    complete.push(route);
                }
            }
        }
    }
    let contents: Contents = reader
        .summary()
        .helpers
        .into_iter()
        .map(|h| (h.id, h.bytes))
        .collect();
    let ids: Vec<Record> = contents
        .iter()
        .map(|(id, _)| Record::new(id.clone(), Vec::new()))
        .collect();
    policy::plan_load(helpers, &ids)?;
    // The whole stream verified: every held-back load may complete.
    abandoned.check()?;
    for route in complete {
        route.finish();
    }
    Ok(contents)
}

/// Checks that a plain state grown to `size` bytes still fits in one
/// `Load` message and in the budget.
fn plain_fits(id: &str, size: u64, budget: &Budget) -> Result<(), Error> {
    let limit = iface::MAX_LOAD_BLOB_BYTES as u64;
    if size > limit {
        return Err(Error::OverMessageLimit {
            id: id.to_string(),
            call: Call::Load,
            size: None,
            limit,
        });
    }
    if size > budget.limit() {
        return Err(super::plain::over_budget(id, size, budget));
    }
    Ok(())
}

/// Feeds states already in memory and verified (a decoded QEMU payload)
/// to their streaming helpers.
fn from_memory(states: Vec<(Record, Route)>, pool: &Pool) -> Result<(), Error> {
    for (record, mut route) in states {
        route.chunk(&record.data, pool)?;
        route.finish();
    }
    Ok(())
}
