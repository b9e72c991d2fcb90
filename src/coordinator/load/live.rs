//! A live load: a native stream read once (a pipe, a socket, a FIFO),
//! loaded while it arrives, so that loading overlaps the transfer and the
//! source's save.
//!
//! Its contents are learnt as they come, so the helpers to load are every
//! connected one (after waiting for the required ones), and a helper is
//! called only when its state begins. A streaming helper gets its state
//! through the sealed `LoadFd` of `org.dbusvmstate.SealedLoad1`, which
//! needs no size in advance and completes only with the trailer sent once
//! the whole stream has verified; a plain helper's state is collected
//! within the budget and loaded once the whole stream has verified ([the
//! rule](crate::coordinator#loading)). A stream with a streaming helper
//! that lacks the sealed load is spooled instead ([`super::verify`]).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::join_all;

use super::decoded::NativeInput;
use super::dispatch::{self, Route, Routes, FEED_QUEUE_CHUNKS};
use super::{feed, limits, load_collected, LoadReport};
use crate::coordinator::round::{self, Outcomes, Participant};
use crate::coordinator::transfer::{self, pool::Pool, Mode};
use crate::coordinator::{Inner, Skipped};
use crate::error::{Call, Error};
use crate::rt;
use crate::stream::{native, Format};

/// The helpers a live load calls.
pub(super) struct Plan {
    participants: Vec<Participant>,
    not_connected: Vec<Skipped>,
}

/// Plans a live load: waits for the required helpers, then takes every
/// connected one. `None` when a streaming helper lacks the sealed load.
///
/// # Errors
///
/// A required helper not connected within the connect timeout.
pub(super) async fn plan(inner: &Inner) -> Result<Option<Plan>, Error> {
    let required: Vec<usize> = (0..inner.slots.len())
        .filter(|&s| inner.slots[s].spec.required)
        .collect();
    inner
        .require(&required, inner.config.connect_timeout)
        .await?;
    let (participants, not_connected) = round::participants(inner, 0..inner.slots.len()).await;
    for p in participants.iter().filter(|p| p.mode == Mode::Stream) {
        if !transfer::extensions(inner, p.slot, &p.peer)
            .await
            .sealed_load
        {
            tracing::debug!(
                helper = %inner.slots[p.slot].spec.id,
                "no sealed load: the stream is spooled before loading"
            );
            return Ok(None);
        }
    }
    Ok(Some(Plan {
        participants,
        not_connected,
    }))
}

/// Where a participant's state arrives.
enum Incoming {
    Stream(mpsc::Receiver<feed::Feed>),
    Plain(oneshot::Receiver<super::plain::Collect>),
}

/// Runs a live load of the native stream `input` (its first bytes already
/// checked to be a native stream's).
pub(super) async fn run(
    inner: &Inner,
    input: NativeInput,
    plan: Plan,
) -> Result<LoadReport, Error> {
    let Plan {
        participants,
        not_connected,
    } = plan;
    let mut routes = Routes::new();
    let mut incoming = Vec::with_capacity(participants.len());
    for p in &participants {
        let id = inner.slots[p.slot].spec.id.clone();
        match p.mode {
            Mode::Plain => {
                let (tx, rx) = oneshot::channel();
                routes.insert(id, Route::Plain { tx, data: None });
                incoming.push(Incoming::Plain(rx));
            }
            Mode::Stream => {
                let (tx, rx) = mpsc::sync_channel(FEED_QUEUE_CHUNKS);
                routes.insert(id, Route::Stream(tx));
                incoming.push(Incoming::Stream(rx));
            }
        }
    }
    let streaming = participants
        .iter()
        .filter(|p| p.mode == Mode::Stream)
        .count();
    // The reader reads each record's payload into the buffer it passes
    // on: an encrypted chunk's comes with its tag, which must fit too, or
    // every buffer grows (a copy) and leaves the pool.
    let pool = Arc::new(Pool::new(
        dispatch::pool_buffers(streaming),
        native::CHUNK_BYTES + native::TAG_BYTES,
    ));

    let started = Instant::now();
    let abandoned = dispatch::Abandoned::default();
    let _abandon_on_drop = abandoned.guard();
    let passed = {
        let (pool, limits, budget) = (pool.clone(), limits(inner), inner.config.budget.clone());
        let helpers: Vec<_> = inner.slots.iter().map(|s| s.spec.clone()).collect();
        rt::spawn_blocking(move || {
            dispatch::live(input, limits, &helpers, routes, &pool, &budget, &abandoned)
        })
    };
    let calls = join_all(participants.iter().zip(incoming).map(|(p, incoming)| {
        let pool = pool.clone();
        async move {
            match incoming {
                Incoming::Stream(feed) => {
                    feed::load_sealed(inner, p.slot, &p.peer, feed, pool).await
                }
                Incoming::Plain(data) => match data.await {
                    Ok(collected) => Some(load_collected(inner, p.slot, &p.peer, collected).await),
                    Err(oneshot::Canceled) => None,
                },
            }
        }
    }));
    let (passed, results) = futures::join!(passed, calls);
    // A stream that failed aborted every load it held back: that failure
    // is the one to report, the helpers' follow from it.
    passed?;
    // Every state of a stream that verified reached its helper: one that
    // was not called had no state in the stream (and is optional, or the
    // stream would have failed).
    let mut skipped = not_connected;
    let mut loaded = Vec::with_capacity(results.len());
    for (p, result) in participants.iter().zip(results) {
        match result {
            Some(result) => loaded.push((p, result)),
            None => skipped.push(round::skipped_as(inner, p.slot, "no state in the stream")),
        }
    }
    let mut outcomes = Outcomes::new(Call::Load, skipped);
    for (p, result) in loaded {
        outcomes.record(inner, p.slot, p.mode, result);
    }
    let (helpers, skipped) = outcomes.finish(None)?;
    Ok(LoadReport {
        format: Format::Native,
        helpers,
        skipped,
        duration: started.elapsed(),
        verification: Duration::ZERO,
    })
}
