//! Load: verify the whole stream, then load every helper at once, each
//! state streamed from a second pass over the input.
//!
//! The first pass ([`verify`]) checks everything and keeps a summary;
//! only then is any helper called. The second pass ([`dispatch`]) reads
//! the stream again and hands each helper's chunks to a feeder thread
//! writing into its socket ([`feed`], streaming helpers) or collects them
//! for one `Load` message (plain helpers).

mod dispatch;
mod feed;
mod verify;

use std::io::{Read, Seek};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::join_all;

use super::transfer::{self, pool::Pool, Mode};
use super::{policy, HelperReport, Inner, LoadReport, Peer, Skipped, Transfer};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;
use crate::stream::{native, Format, Limits, Record};
use dispatch::{Route, Routes, FEED_QUEUE_CHUNKS};
use verify::{Keep, Verified};

fn limits(inner: &Inner) -> Limits {
    Limits {
        max_blob_bytes: inner.config.max_blob_bytes,
        max_helpers: Limits::default().max_helpers,
    }
}

pub(super) async fn load<R>(
    inner: &Inner,
    input: R,
    format: Option<Format>,
) -> Result<LoadReport, Error>
where
    R: Read + Send + 'static,
{
    let (limits, keep) = (limits(inner), plain_now(inner).await);
    let started = Instant::now();
    let verified =
        rt::spawn_blocking(move || verify::spooled(input, format, limits, &keep)).await?;
    run(inner, verified, started.elapsed()).await
}

pub(super) async fn load_seekable<R>(
    inner: &Inner,
    input: R,
    format: Option<Format>,
) -> Result<LoadReport, Error>
where
    R: Read + Seek + Send + 'static,
{
    let (limits, keep) = (limits(inner), plain_now(inner).await);
    let started = Instant::now();
    let verified =
        rt::spawn_blocking(move || verify::seekable(input, format, limits, &keep)).await?;
    run(inner, verified, started.elapsed()).await
}

/// The Ids of the helpers connected now that take the plain path, whose
/// states the first pass can keep. Calls nothing but (at most once per
/// connection) `Introspect`.
async fn plain_now(inner: &Inner) -> Keep {
    let peers: Vec<(usize, Peer)> = (0..inner.slots.len())
        .filter_map(|i| inner.slots[i].peer().map(|p| (i, p)))
        .collect();
    let modes = join_all(peers.iter().map(|(i, p)| transfer::mode(inner, *i, p))).await;
    peers
        .iter()
        .zip(modes)
        .filter(|(_, mode)| *mode == Mode::Plain)
        .map(|((i, _), _)| inner.slots[*i].spec.id.clone())
        .collect()
}

/// One helper to load.
struct Target {
    slot: usize,
    peer: Peer,
    size: u64,
    mode: Mode,
}

/// A target's state, on its way.
enum Incoming {
    /// Fed by the second pass to a streaming helper.
    Stream(mpsc::Receiver<feed::Feed>),
    /// Collected by the second pass for a plain helper.
    Plain(oneshot::Receiver<Vec<u8>>),
    /// In memory already (kept by the first pass, or decoded).
    Ready(Vec<u8>),
}

async fn run(
    inner: &Inner,
    verified: Verified,
    verification: Duration,
) -> Result<LoadReport, Error> {
    let config = &inner.config;
    let format = verified.format();
    let contents = verified.contents();
    let specs: Vec<_> = inner.slots.iter().map(|s| s.spec.clone()).collect();
    let ids: Vec<Record> = contents
        .iter()
        .map(|(id, _)| Record::new(id.clone(), Vec::new()))
        .collect();
    let plan = policy::plan_load(&specs, &ids)?;

    let required: Vec<usize> = plan
        .targets
        .iter()
        .map(|&(hi, _)| hi)
        .filter(|&hi| specs[hi].required)
        .collect();
    let missing = inner
        .wait_connected(&required, config.connect_timeout)
        .await;
    if let Some(e) = Error::from_many(inner.not_connected(&missing, config.connect_timeout)) {
        return Err(e);
    }

    let mut skipped: Vec<Skipped> = plan
        .absent_optional
        .iter()
        .map(|&hi| Skipped {
            id: specs[hi].id.clone(),
            reason: "no state in the stream".to_string(),
        })
        .collect();
    let mut connected = Vec::new();
    for &(hi, ri) in &plan.targets {
        match inner.slots[hi].peer() {
            Some(peer) => connected.push((hi, peer, contents[ri].1)),
            None => skipped.push(Skipped {
                id: specs[hi].id.clone(),
                reason: "not connected".to_string(),
            }),
        }
    }
    for s in &skipped {
        tracing::warn!(helper = %s.id, "optional helper skipped: {}", s.reason);
    }
    let modes = join_all(
        connected
            .iter()
            .map(|(hi, peer, _)| transfer::mode(inner, *hi, peer)),
    )
    .await;
    let targets: Vec<Target> = connected
        .into_iter()
        .zip(modes)
        .map(|((slot, peer, size), mode)| Target {
            slot,
            peer,
            size,
            mode,
        })
        .collect();

    // Still before any Load: every plain state must fit in one message.
    let too_large: Vec<Error> = targets
        .iter()
        .filter(|t| t.mode == Mode::Plain && t.size > iface::MAX_LOAD_BLOB_BYTES as u64)
        .map(|t| Error::OverMessageLimit {
            id: specs[t.slot].id.clone(),
            call: Call::Load,
            size: Some(t.size),
            limit: iface::MAX_LOAD_BLOB_BYTES as u64,
        })
        .collect();
    if let Some(e) = Error::from_many(too_large) {
        return Err(e);
    }

    // States in memory already, and the stream to read again if needed.
    let (mut ready, again) = match verified {
        Verified::Records(records) => (records.into_iter().map(|r| (r.id, r.data)).collect(), None),
        Verified::Native {
            input,
            summary,
            kept,
        } => (kept, Some((input, summary))),
    };
    let streaming = targets.iter().filter(|t| t.mode == Mode::Stream).count();
    let pool = Arc::new(Pool::new(
        streaming * (FEED_QUEUE_CHUNKS + 1) + 1,
        native::CHUNK_BYTES,
    ));
    let mut routes = Routes::new();
    let mut from_memory = Vec::new();
    let mut incoming = Vec::with_capacity(targets.len());
    for t in &targets {
        let id = specs[t.slot].id.clone();
        let state = ready.remove(&id);
        match (t.mode, state) {
            (Mode::Plain, Some(data)) => incoming.push(Incoming::Ready(data)),
            (Mode::Plain, None) => {
                let (tx, rx) = oneshot::channel();
                let data = Vec::new();
                routes.insert(id, Route::Plain { tx, data });
                incoming.push(Incoming::Plain(rx));
            }
            (Mode::Stream, state) => {
                let (tx, rx) = mpsc::sync_channel(FEED_QUEUE_CHUNKS);
                match state {
                    Some(data) => from_memory.push((Record::new(id, data), Route::Stream(tx))),
                    None => drop(routes.insert(id, Route::Stream(tx))),
                }
                incoming.push(Incoming::Stream(rx));
            }
        }
    }
    drop(ready);
    // Read the stream again only for states not in memory.
    let again = again.filter(|_| !routes.is_empty());

    let started = Instant::now();
    let second_pass = {
        let (pool, limits) = (pool.clone(), limits(inner));
        rt::spawn_blocking(move || {
            dispatch::from_memory(from_memory, &pool);
            match again {
                Some((input, summary)) => dispatch::native(input, limits, &summary, routes, &pool),
                None => Ok(()),
            }
        })
    };
    let specs = &specs;
    let calls = join_all(targets.iter().zip(incoming).map(|(t, incoming)| {
        let pool = pool.clone();
        async move {
            let result = match incoming {
                Incoming::Stream(feed) => {
                    feed::load(inner, t.slot, &t.peer, t.size, feed, pool).await
                }
                Incoming::Plain(data) => match data.await {
                    Ok(data) => load_plain(inner, t.slot, &t.peer, data).await,
                    Err(oneshot::Canceled) => Err(Error::Transfer {
                        id: specs[t.slot].id.clone(),
                        call: Call::Load,
                        reason: "not called: the stream failed its second pass".to_string(),
                        source: None,
                    }),
                },
                Incoming::Ready(data) => load_plain(inner, t.slot, &t.peer, data).await,
            };
            (t, result)
        }
    }));
    let (passed, results) = futures::join!(second_pass, calls);

    let mut helpers = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = passed {
        errors.push(e);
    }
    for (t, result) in results {
        let slot = &inner.slots[t.slot];
        match result {
            Ok(transfer) => {
                slot.state().last_load = Some(transfer.clone());
                helpers.push(HelperReport {
                    id: slot.spec.id.clone(),
                    transfer,
                    mode: t.mode,
                });
            }
            Err(e) if slot.spec.required => errors.push(e),
            Err(e) => {
                tracing::warn!(helper = %slot.spec.id, "optional helper failed to load: {}", crate::error::chain(&e));
                skipped.push(Skipped {
                    id: slot.spec.id.clone(),
                    reason: crate::error::chain(&e),
                });
            }
        }
    }
    if let Some(e) = Error::from_many(errors) {
        return Err(e);
    }
    Ok(LoadReport {
        format,
        helpers,
        skipped,
        duration: started.elapsed(),
        verification,
    })
}

/// Calls plain `Load` with the whole state.
async fn load_plain(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    data: Vec<u8>,
) -> Result<Transfer, Error> {
    let id = &inner.slots[index].spec.id;
    let timeout = inner.config.call_timeout;
    let started = Instant::now();
    match rt::timeout(
        timeout,
        iface::call_load_at(&peer.conn, peer.destination(), &data),
    )
    .await
    {
        Ok(Ok(())) => Ok(Transfer {
            bytes: data.len() as u64,
            duration: started.elapsed(),
        }),
        Ok(Err(source)) => Err(Error::Call {
            id: id.clone(),
            call: Call::Load,
            source: Box::new(source),
        }),
        Err(rt::Elapsed) => Err(Error::Timeout {
            id: id.clone(),
            call: Call::Load,
            timeout,
        }),
    }
}
