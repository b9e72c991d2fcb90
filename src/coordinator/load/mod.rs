//! Load: every helper at once while one pass verifies the stream,
//! completing no load before all of it has verified, as [the
//! coordinator's docs](crate::coordinator#loading) describe.
//!
//! A native stream read once (a pipe) is loaded as it arrives ([`live`]),
//! when every streaming helper serves the sealed load. Otherwise each
//! state's size is learnt first, from the index of a seekable input
//! ([`index`]) or from verifying a spooled one ([`verify`]), and only then
//! is any helper called.
//! The verifying pass ([`dispatch`]) reads the stream and hands each
//! helper's chunks to a feeder thread writing into its socket ([`feed`],
//! streaming helpers) or collects them for one `Load` message (plain
//! helpers, within the memory budget: [`plain`]), and lets them complete
//! at `STREAM_END`.

mod decoded;
mod dispatch;
mod feed;
mod index;
mod live;
mod plain;
mod verify;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::join_all;

use super::call::HelperCall;
use super::round::{self, Outcomes};
use super::transfer::{pool::Pool, Mode};
use super::{policy, Inner, LoadReport, Peer, Transfer};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;
use crate::stream::native::ReadOptions;
use crate::stream::{native, Format, Limits, Record};
use dispatch::{Pass, Route, Routes, FEED_QUEUE_CHUNKS};
use index::Known;
use plain::Collect;
use verify::Verified;

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
    options: &ReadOptions,
) -> Result<LoadReport, Error>
where
    R: Read + Send + 'static,
{
    let limits = limits(inner);
    let started = Instant::now();
    let options = options.clone();
    let opened = rt::spawn_blocking(move || match verify::open(input, format, limits)? {
        verify::Opened::Native(input) => decoded::native_input(input, limits, &options).map(Ok),
        verify::Opened::Qemu(verified) => {
            decoded::refuse_unencrypted(&options).map(|()| Err(verified))
        }
    });
    let input = match opened.await? {
        Err(verified) => return run(inner, verified, started.elapsed()).await,
        Ok(input) => input,
    };
    if let Some(plan) = live::plan(inner).await? {
        return live::run(inner, input, plan).await;
    }
    let known = known(inner);
    let verified =
        rt::spawn_blocking(move || verify::spool(input.into_v1()?, limits, &known)).await?;
    run(inner, verified, started.elapsed()).await
}

pub(super) async fn load_seekable<R>(
    inner: &Inner,
    mut input: R,
    format: Option<Format>,
    options: &ReadOptions,
) -> Result<LoadReport, Error>
where
    R: Read + Seek + Send + 'static,
{
    // A version 2 stream is decoded as it is read, and so read once; a
    // key asks for version 2 unless unencrypted streams are allowed.
    let strict = options.key.is_some() && !options.allow_unencrypted;
    let v2 = format != Some(Format::Qemu)
        && matches!(
            decoded::seekable_needs(&mut input),
            Ok(decoded::Needs::Decoding)
        );
    if strict || v2 {
        return Box::pin(load(inner, input, format, options)).await;
    }
    let (limits, known) = (limits(inner), known(inner));
    let started = Instant::now();
    match rt::spawn_blocking(move || index::seekable(input, format, limits, &known)).await? {
        index::Indexed::Verified(verified) => run(inner, verified, started.elapsed()).await,
        index::Indexed::NotSeekable(input) => {
            Box::pin(load(inner, input, format, &ReadOptions::default())).await
        }
    }
}

/// The Ids of every configured helper.
fn known(inner: &Inner) -> Known {
    inner.slots.iter().map(|s| s.spec.id.clone()).collect()
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
    /// Fed by the verifying pass to a streaming helper.
    Stream(mpsc::Receiver<feed::Feed>),
    /// Collected by the verifying pass for a plain helper, handed over
    /// once the whole stream verified.
    Plain(oneshot::Receiver<Collect>),
    /// In memory already and verified (a decoded QEMU payload).
    Ready(Vec<u8>),
}

/// Loads a stream whose contents are known: plans, then runs the
/// verifying pass and every `Load` at once.
async fn run(
    inner: &Inner,
    verified: Verified,
    verification: Duration,
) -> Result<LoadReport, Error> {
    let format = verified.format();
    let (targets, mut outcomes) = plan(inner, &verified.contents()).await?;
    let (pass, incoming) = route(inner, &targets, verified);
    let streaming = targets.iter().filter(|t| t.mode == Mode::Stream).count();
    let pool = Arc::new(Pool::new(
        dispatch::pool_buffers(streaming),
        native::CHUNK_BYTES,
    ));

    let started = Instant::now();
    let _abandon_on_drop = pass.abandoned.guard();
    let passed = {
        let (pool, limits) = (pool.clone(), limits(inner));
        rt::spawn_blocking(move || pass.run(limits, &pool))
    };
    let calls = load_all(inner, &targets, incoming, &pool);
    let (passed, results) = futures::join!(passed, calls);
    for (t, result) in targets.iter().zip(results) {
        outcomes.record(inner, t.slot, t.mode, result);
    }
    // A stream that failed its verifying pass aborted every load it held
    // back: that failure is the one to report, the helpers' follow from it.
    passed?;
    let (helpers, skipped) = outcomes.finish(None)?;
    Ok(LoadReport {
        format,
        helpers,
        skipped,
        duration: started.elapsed(),
        verification,
    })
}

/// Matches the stream's `contents` (Id and size of each state) to the
/// helpers and waits for those to load: everything that can fail before
/// any `Load`. Returns the helpers to load, in configuration order, and
/// the outcomes so far (the optional helpers skipped).
///
/// # Errors
///
/// What [`policy::plan_load`] finds, a required helper not connected, a
/// plain helper's state over one message.
async fn plan(inner: &Inner, contents: &[(String, u64)]) -> Result<(Vec<Target>, Outcomes), Error> {
    let specs: Vec<_> = inner.slots.iter().map(|s| s.spec.clone()).collect();
    let ids: Vec<Record> = contents
        .iter()
        .map(|(id, _)| Record::new(id.clone(), Vec::new()))
        .collect();
    let plan = policy::plan_load(&specs, &ids)?;
    let slots: Vec<usize> = plan.targets.iter().map(|&(slot, _)| slot).collect();
    let required: Vec<usize> = slots
        .iter()
        .copied()
        .filter(|&s| specs[s].required)
        .collect();
    inner
        .require(&required, inner.config.connect_timeout)
        .await?;

    let (participants, not_connected) = round::participants(inner, slots).await;
    let size_of = |slot| {
        plan.targets
            .iter()
            .find(|t| t.0 == slot)
            .map(|t| contents[t.1].1)
    };
    let targets: Vec<Target> = participants
        .into_iter()
        .map(|p| Target {
            size: size_of(p.slot).unwrap_or(0),
            slot: p.slot,
            peer: p.peer,
            mode: p.mode,
        })
        .collect();
    // Still before any Load: every plain state must fit in one message,
    // and in the memory budget.
    let budget = &inner.config.budget;
    let too_large: Vec<Error> = targets
        .iter()
        .filter(|t| t.mode == Mode::Plain)
        .filter_map(|t| {
            let id = &specs[t.slot].id;
            if t.size > iface::MAX_LOAD_BLOB_BYTES as u64 {
                Some(Error::OverMessageLimit {
                    id: id.clone(),
                    call: Call::Load,
                    size: Some(t.size),
                    limit: iface::MAX_LOAD_BLOB_BYTES as u64,
                })
            } else {
                (t.size > budget.limit()).then(|| plain::over_budget(id, t.size, budget))
            }
        })
        .collect();
    if let Some(e) = Error::from_many(too_large) {
        return Err(e);
    }
    let absent = plan
        .absent_optional
        .iter()
        .map(|&slot| round::skipped_as(inner, slot, "no state in the stream"));
    let skipped = absent.chain(not_connected).collect();
    Ok((targets, Outcomes::new(Call::Load, skipped)))
}

/// Decides where each target's state comes from: memory (a decoded QEMU
/// payload), or the verifying pass.
fn route(inner: &Inner, targets: &[Target], verified: Verified) -> (Pass, Vec<Incoming>) {
    // States in memory already, and the stream to read if needed.
    let (mut ready, stream): (HashMap<_, _>, _) = match verified {
        Verified::Records(records) => (records.into_iter().map(|r| (r.id, r.data)).collect(), None),
        Verified::Native { input, contents } => (HashMap::new(), Some((input, contents))),
    };
    let mut routes = Routes::new();
    let mut from_memory = Vec::new();
    let mut incoming = Vec::with_capacity(targets.len());
    for t in targets {
        let id = inner.slots[t.slot].spec.id.clone();
        let state = ready.remove(&id);
        match (t.mode, state) {
            (Mode::Plain, Some(data)) => incoming.push(Incoming::Ready(data)),
            (Mode::Plain, None) => {
                let (tx, rx) = oneshot::channel();
                routes.insert(id, Route::Plain { tx, data: None });
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
    // A native stream is read to its end even with no helper to load, so
    // that a load never accepts a stream that fails verification.
    let pass = Pass {
        from_memory,
        stream,
        routes,
        budget: inner.config.budget.clone(),
        abandoned: dispatch::Abandoned::default(),
    };
    (pass, incoming)
}

/// Loads every target at once, each as its state arrives; the results in
/// the targets' order.
async fn load_all(
    inner: &Inner,
    targets: &[Target],
    incoming: Vec<Incoming>,
    pool: &Arc<Pool>,
) -> Vec<Result<Transfer, Error>> {
    join_all(targets.iter().zip(incoming).map(|(t, incoming)| {
        let pool = pool.clone();
        async move {
            match incoming {
                Incoming::Stream(feed) => {
                    feed::load(inner, t.slot, &t.peer, t.size, feed, pool).await
                }
                Incoming::Plain(data) => match data.await {
                    Ok(collected) => load_collected(inner, t.slot, &t.peer, collected).await,
                    Err(oneshot::Canceled) => Err(HelperCall::new(inner, t.slot, Call::Load)
                        .transfer("not called: the stream failed verification", None)),
                },
                Incoming::Ready(data) => load_plain(inner, t.slot, &t.peer, data).await,
            }
        }
    }))
    .await
}

/// Calls plain `Load` with a collected state, once its room in the
/// budget is free.
async fn load_collected(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    collected: Collect,
) -> Result<Transfer, Error> {
    let id = &inner.slots[index].spec.id;
    let (data, room) = collected.into_memory(&inner.config.budget, id).await?;
    let loaded = load_plain(inner, index, peer, data).await;
    // The state's room is given back once its Load is over.
    drop(room);
    loaded
}

/// Calls plain `Load` with the whole state.
async fn load_plain(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    data: Vec<u8>,
) -> Result<Transfer, Error> {
    let call = HelperCall::new(inner, index, Call::Load);
    let started = Instant::now();
    call.run(iface::call_load_at(&peer.conn, peer.destination(), &data))
        .await?;
    Ok(Transfer {
        bytes: data.len() as u64,
        duration: started.elapsed(),
    })
}
