//! One helper's streamed load: `LoadFd` with one end of a socket pair,
//! while a feeder thread writes the state into the other end as the
//! verifying pass hands it over.
//!
//! Nothing the helper receives completes its load before the verifying
//! pass has verified the whole stream ([`Feed::Finish`],
//! [the rule](crate::coordinator#loading)):
//!
//! - an announced load ([`load`], `org.dbusvmstate.Stream1`) holds back
//!   the state's last byte, then sends it and shuts down its end; if the
//!   pass fails first, the socket closes a byte short;
//! - a sealed load ([`load_sealed`], `org.dbusvmstate.SealedLoad1`, for a
//!   state whose size is not known in advance) sends every byte as it
//!   comes, then the trailer of the call's seal; if the pass fails first,
//!   the socket closes without it.

use std::os::fd::AsFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use futures::future::Either;

use socket2::Socket;

use crate::coordinator::call::HelperCall;
use crate::coordinator::transfer::pair::{self, Pair};
use crate::coordinator::transfer::pool::Pool;
use crate::coordinator::{Inner, Peer, Transfer};
use crate::error::{Call, Error};
use crate::iface::{self, FdLoad};
use crate::rt;

/// What the verifying pass hands a feeder.
#[derive(Debug)]
pub(crate) enum Feed {
    /// The next bytes of the state (a pool buffer).
    Data(Vec<u8>),
    /// The whole stream verified: commit the state (its last byte, or the
    /// trailer of a sealed load) and end it.
    Finish,
}

/// How a feeder ended.
#[derive(Debug)]
enum Fed {
    /// All bytes sent (this many) and the stream ended.
    Done(u64),
    /// Writing failed after this many bytes (the helper closed its end).
    Failed(std::io::Error, u64),
    /// The verifying pass stopped before the whole stream verified.
    Aborted(u64),
    /// The verifying pass handed over more than the announced size.
    Overrun,
    /// A write waited longer than the call timeout: the helper stopped
    /// reading (sealed loads).
    Stalled,
}

/// Loads the helper in slot `index` through `LoadFd`, with the `size`
/// bytes that arrive on `feed`. Consumes `feed` to its end whatever
/// happens, so the verifying pass never waits on a failed helper.
pub(crate) async fn load(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    size: u64,
    feed: Receiver<Feed>,
    pool: Arc<Pool>,
) -> Result<Transfer, Error> {
    let call = HelperCall::new(inner, index, Call::Load);
    // An empty state has no last byte to hold back: its call waits for the
    // whole stream instead.
    let feed = match size {
        0 => match committed(feed).await {
            Some(feed) => feed,
            None => return Err(call.transfer("not called: the stream failed verification", None)),
        },
        _ => feed,
    };
    let pair = Pair::new().and_then(|p| Ok((p.ours.try_clone()?, p)));
    let (control, Pair { ours, theirs }) = match pair {
        Ok(pair) => pair,
        Err(source) => {
            drop(rt::spawn(rt::spawn_blocking(move || drain(&feed, &pool))));
            return Err(call.transfer("cannot create its socket pair", Some(source)));
        }
    };
    let started = Instant::now();
    let feeder = rt::spawn_blocking(move || feed_socket(&ours, size, &feed, &pool));
    let load_fd = async {
        let reply = iface::call_load_fd(
            &peer.conn,
            peer.destination(),
            theirs.as_fd(),
            FdLoad::Announced(size),
        )
        .await;
        drop(theirs);
        if reply.is_err() {
            pair::abort(&control);
        }
        reply
    };
    let result = match call.within(futures::future::join(load_fd, feeder)).await {
        Ok((reply, fed)) => judge(&call, Some(size), reply, fed),
        Err(timed_out) => {
            // The feeder's writes now fail; it drains the rest.
            pair::abort(&control);
            Err(timed_out)
        }
    };
    result.map(|bytes| Transfer {
        bytes,
        duration: started.elapsed(),
    })
}

/// Loads the helper in slot `index` through the sealed `LoadFd`, with what
/// arrives on `feed`, starting when the first of it does. `None` when
/// `feed` ends before anything arrived: the stream held no state for the
/// helper, or failed before it; the helper was not called. Consumes `feed`
/// to its end whatever happens.
///
/// The state arrives at the pace of the stream (the source's save, the
/// link), so the call timeout cannot cover the call from its start as it
/// does for an announced load: it covers the helper's reply once the
/// trailer is sent, and while the state goes out, each write into the
/// helper's socket that waits longer than the call timeout fails the load
/// as timed out (a helper that stopped reading).
pub(crate) async fn load_sealed(
    inner: &Inner,
    index: usize,
    peer: &Peer,
    feed: Receiver<Feed>,
    pool: Arc<Pool>,
) -> Option<Result<Transfer, Error>> {
    let call = HelperCall::new(inner, index, Call::Load);
    let (first, feed) = rt::spawn_blocking(move || (feed.recv().ok(), feed)).await;
    let first = first?;
    let pair = Pair::new()
        .and_then(|p| p.ours.set_write_timeout(Some(call.timeout)).map(|()| p))
        .and_then(|p| Ok((p.ours.try_clone()?, p)));
    let (control, Pair { ours, theirs }) = match pair {
        Ok(pair) => pair,
        Err(source) => {
            drop(rt::spawn(rt::spawn_blocking(move || {
                if let Feed::Data(buf) = first {
                    pool.put(buf);
                }
                drain(&feed, &pool);
            })));
            return Some(Err(
                call.transfer("cannot create its socket pair", Some(source))
            ));
        }
    };
    let seal = new_seal();
    let started = Instant::now();
    let feeder = std::pin::pin!(rt::spawn_blocking(move || feed_sealed(
        &ours, seal, first, &feed, &pool
    )));
    let load_fd = std::pin::pin!(async {
        let reply = iface::call_load_fd(
            &peer.conn,
            peer.destination(),
            theirs.as_fd(),
            FdLoad::Sealed(seal),
        )
        .await;
        drop(theirs);
        if reply.is_err() {
            pair::abort(&control);
        }
        reply
    });
    let (reply, fed) = match futures::future::select(load_fd, feeder).await {
        // The helper replied before its state ended: an error, which the
        // feeder's writes then see.
        Either::Left((reply, feeder)) => (reply, feeder.await),
        Either::Right((fed, load_fd)) => match call.within(load_fd).await {
            Ok(reply) => (reply, fed),
            Err(timed_out) => {
                pair::abort(&control);
                return Some(Err(timed_out));
            }
        },
    };
    Some(judge(&call, None, reply, fed).map(|bytes| Transfer {
        bytes,
        duration: started.elapsed(),
    }))
}

/// A fresh seal for one sealed load. It is no secret and needs none: it
/// only makes sure that a socket closed early cannot end with bytes that
/// look like the trailer by chance, or because the stream was written to,
/// since whoever writes the stream cannot know it. (Whoever can write a
/// version 1 stream can give a helper any state anyway: its checksums
/// catch corruption, not forgery.) `RandomState` is keyed from the
/// operating system's random source.
fn new_seal() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.finish()
}

/// Waits until the verifying pass finishes an empty state (the whole
/// stream verified); then a feed that finishes at once, or `None` when
/// the pass failed.
async fn committed(feed: Receiver<Feed>) -> Option<Receiver<Feed>> {
    let finished = rt::spawn_blocking(move || matches!(feed.recv(), Ok(Feed::Finish))).await;
    finished.then(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let _ = tx.send(Feed::Finish);
        rx
    })
}

/// The outcome of the call and the feeding together: the bytes loaded.
/// `announced` is the size an announced load gave the helper.
fn judge(
    call: &HelperCall<'_>,
    announced: Option<u64>,
    reply: zbus::Result<()>,
    fed: Fed,
) -> Result<u64, Error> {
    let bytes = |sent: u64| match announced {
        Some(size) => format!("{sent} of {size} bytes"),
        None => format!("{sent} bytes"),
    };
    match (reply, fed) {
        (Ok(()), Fed::Done(sent)) => Ok(sent),
        // The helper's error is a consequence; the stream's is reported.
        (_, Fed::Aborted(sent)) => Err(call.transfer(
            format!(
                "aborted after {}: the stream failed verification",
                bytes(sent)
            ),
            None,
        )),
        // The helper stopped reading: what it replied after follows.
        (_, Fed::Stalled) => Err(call.timed_out()),
        (_, Fed::Overrun) => Err(call.transfer(
            format!(
                "the stream held more than the {} bytes announced",
                announced.unwrap_or_default()
            ),
            None,
        )),
        (Err(source), _) => Err(call.failed(source)),
        (Ok(()), Fed::Failed(e, sent)) => Err(call.transfer(
            format!(
                "the helper replied success but stopped reading after {}",
                bytes(sent)
            ),
            Some(e),
        )),
    }
}

/// Returns the buffers of everything still to come.
fn drain(feed: &Receiver<Feed>, pool: &Pool) {
    for msg in feed {
        if let Feed::Data(buf) = msg {
            pool.put(buf);
        }
    }
}

/// The feeder thread.
fn feed_socket(end: &Socket, size: u64, feed: &Receiver<Feed>, pool: &Pool) -> Fed {
    let mut sent = 0u64;
    let mut held: Option<u8> = None;
    let mut failure: Option<Fed> = None;
    for msg in feed {
        match msg {
            Feed::Data(buf) => {
                if failure.is_none() {
                    if let Err(f) = send_part(end, &buf, size, &mut sent, &mut held) {
                        pair::abort(end);
                        failure = Some(f);
                    }
                }
                pool.put(buf);
            }
            Feed::Finish => {
                if let Some(f) = failure {
                    drain(feed, pool);
                    return f;
                }
                if let Some(last) = held.take() {
                    if let Err(e) = pair::send_all(end, &[last]) {
                        pair::abort(end);
                        return Fed::Failed(e, sent);
                    }
                    sent += 1;
                }
                if sent != size {
                    pair::abort(end);
                    return Fed::Aborted(sent);
                }
                // Ends the helper's input; ENOTCONN if it left already,
                // which its reply tells.
                let _ = end.shutdown(std::net::Shutdown::Write);
                drain(feed, pool);
                return Fed::Done(sent);
            }
        }
    }
    pair::abort(end);
    failure.unwrap_or(Fed::Aborted(sent))
}

/// The feeder thread of a sealed load, starting with `first`.
fn feed_sealed(end: &Socket, seal: u64, first: Feed, feed: &Receiver<Feed>, pool: &Pool) -> Fed {
    let mut sent = 0u64;
    let mut failure: Option<Fed> = None;
    for msg in std::iter::once(first).chain(feed.iter()) {
        match msg {
            Feed::Data(buf) => {
                if failure.is_none() {
                    match pair::send_all(end, &buf) {
                        Ok(()) => sent += buf.len() as u64,
                        Err(e) => {
                            pair::abort(end);
                            failure = Some(stalled_or_failed(e, sent));
                        }
                    }
                }
                pool.put(buf);
            }
            Feed::Finish => {
                if let Some(f) = failure {
                    drain(feed, pool);
                    return f;
                }
                if let Err(e) = pair::send_all(end, &iface::seal_trailer(seal, sent)) {
                    pair::abort(end);
                    drain(feed, pool);
                    return stalled_or_failed(e, sent);
                }
                let _ = end.shutdown(std::net::Shutdown::Write);
                drain(feed, pool);
                return Fed::Done(sent);
            }
        }
    }
    pair::abort(end);
    failure.unwrap_or(Fed::Aborted(sent))
}

/// A write that failed after `sent` bytes: [`Fed::Stalled`] when it timed
/// out (`SO_SNDTIMEO` makes a blocked `send` fail with `EAGAIN`).
fn stalled_or_failed(e: std::io::Error, sent: u64) -> Fed {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Fed::Stalled
    } else {
        Fed::Failed(e, sent)
    }
}

/// Sends `buf`, keeping back the state's very last byte.
fn send_part(
    end: &Socket,
    buf: &[u8],
    size: u64,
    sent: &mut u64,
    held: &mut Option<u8>,
) -> Result<(), Fed> {
    let after = *sent + u64::from(held.is_some()) + buf.len() as u64;
    if after > size {
        return Err(Fed::Overrun);
    }
    let data = match buf.split_last() {
        Some((&last, rest)) if after == size => {
            *held = Some(last);
            rest
        }
        _ => buf,
    };
    pair::send_all(end, data).map_err(|e| Fed::Failed(e, *sent))?;
    *sent += data.len() as u64;
    Ok(())
}
