//! One helper's streamed load: `LoadFd` with one end of a socket pair,
//! while a feeder thread writes the state into the other end as the
//! verifying pass hands it over.
//!
//! The feeder holds back the state's last byte until the verifying pass
//! has verified the whole stream ([`Feed::Finish`]), then sends it and
//! shuts down its end. If the pass fails first, the socket closes a byte
//! short, so the helper never sees a complete state it should not load
//! ([the rule](crate::coordinator#loading)).

use std::os::fd::AsFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use socket2::Socket;

use crate::coordinator::call::HelperCall;
use crate::coordinator::transfer::pair::{self, Pair};
use crate::coordinator::transfer::pool::Pool;
use crate::coordinator::{Inner, Peer, Transfer};
use crate::error::{Call, Error};
use crate::iface;
use crate::rt;

/// What the verifying pass hands a feeder.
#[derive(Debug)]
pub(crate) enum Feed {
    /// The next bytes of the state (a pool buffer).
    Data(Vec<u8>),
    /// The whole stream verified: send the last byte and end the state.
    Finish,
}

/// How a feeder ended.
#[derive(Debug)]
enum Fed {
    /// All bytes sent and the stream ended.
    Done,
    /// Writing failed after this many bytes (the helper closed its end).
    Failed(std::io::Error, u64),
    /// The verifying pass stopped before the whole stream verified.
    Aborted(u64),
    /// The verifying pass handed over more than the announced size.
    Overrun,
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
        let reply = iface::call_load_fd(&peer.conn, peer.destination(), theirs.as_fd(), size).await;
        drop(theirs);
        if reply.is_err() {
            pair::abort(&control);
        }
        reply
    };
    let result = match call.within(futures::future::join(load_fd, feeder)).await {
        Ok((reply, fed)) => judge(&call, size, reply, fed),
        Err(timed_out) => {
            // The feeder's writes now fail; it drains the rest.
            pair::abort(&control);
            Err(timed_out)
        }
    };
    result.map(|()| Transfer {
        bytes: size,
        duration: started.elapsed(),
    })
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

/// The outcome of the call and the feeding together.
fn judge(call: &HelperCall<'_>, size: u64, reply: zbus::Result<()>, fed: Fed) -> Result<(), Error> {
    match (reply, fed) {
        (Ok(()), Fed::Done) => Ok(()),
        // The helper's error is a consequence; the stream's is reported.
        (_, Fed::Aborted(sent)) => Err(call.transfer(
            format!("aborted after {sent} of {size} bytes: the stream failed verification"),
            None,
        )),
        (_, Fed::Overrun) => Err(call.transfer(
            format!("the stream held more than the {size} bytes announced"),
            None,
        )),
        (Err(source), _) => Err(call.failed(source)),
        (Ok(()), Fed::Failed(e, sent)) => Err(call.transfer(
            format!("the helper replied success but stopped reading after {sent} of {size} bytes"),
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
                return Fed::Done;
            }
        }
    }
    pair::abort(end);
    failure.unwrap_or(Fed::Aborted(sent))
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
