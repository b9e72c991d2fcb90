//! One round of QEMU's: from its `ListQueuedOwners("org.qemu.VMState1")`
//! to the next, the discovery of the helpers and then their `Save` (on
//! the source) or `Load` (on the destination) calls.
//!
//! QEMU calls `Save` on one helper after another, each waiting for the
//! last reply, all while the VM is stopped. A round therefore saves every
//! helper QEMU is about to save at once, as soon as QEMU's first `Save`
//! arrives, and answers QEMU's calls from the results once all are in
//! (all or nothing, see [`start_batch`]): the downtime is the slowest
//! helper's, not the sum.
//!
//! Which helpers QEMU is about to save: those it read the `Id` of in this
//! round (`Properties.GetAll`), less those it dropped before its first
//! `Save`. QEMU drops a helper whose `Id` is not in its `id-list` by
//! freeing its proxy right after reading the `Id`, and the proxy removes
//! its match rules, each naming the helper, as it goes; the `RemoveMatch`
//! calls arrive before QEMU's next call since one connection keeps its
//! order. Nothing is saved before the first `Save`, so the destination,
//! which runs the same discovery and then only calls `Load`, never makes
//! a helper save; and a helper QEMU did not read the `Id` of, or dropped,
//! is never saved. A `Save` for a helper outside the batch (QEMU never
//! does this) saves that helper alone.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;

use super::transfer::{self, Saved};
use crate::coordinator::shared::Operation;
use crate::coordinator::Inner;
use crate::error::Error;
use crate::rt;

/// The error of a helper whose state is withheld from QEMU because
/// `failed` (other helpers of the same batch) failed.
fn withheld(inner: &Inner, slot: usize, failed: &str) -> Error {
    Error::Transfer {
        id: inner.slots[slot].spec.id.clone(),
        call: crate::error::Call::Save,
        reason: format!(
            "saved, but withheld from QEMU because {failed} failed in the same save: \
             QEMU would write a migration stream without its state"
        ),
        source: None,
    }
}

/// What QEMU's `Save` call on one helper waits for.
pub(super) type SaveResult = oneshot::Receiver<Result<Saved, Error>>;

/// The lock a round's loads hold, from the first `Load` until the round
/// ends, so that no other save or load runs between two of QEMU's.
pub(super) type Lane = Arc<async_lock::Mutex<Option<Operation>>>;

/// One round.
#[derive(Debug)]
pub(super) struct Round {
    /// Counts rounds on this connection, so records of a new round start
    /// afresh.
    pub number: u64,
    /// When QEMU's first `Save` or `Load` of the round came.
    pub started: Option<Instant>,
    /// Slots QEMU read the `Id` of, in order.
    discovered: Vec<usize>,
    /// Slots QEMU dropped before its first `Save`.
    dropped: BTreeSet<usize>,
    /// The results of the batch, once QEMU's first `Save` came.
    saves: Option<HashMap<usize, SaveResult>>,
    /// See [`Lane`].
    lane: Lane,
    /// Whether a `Load` took the lane (so that there is something to let
    /// go of).
    loading: bool,
}

impl Round {
    /// Round `number`, nothing discovered yet.
    pub fn new(number: u64) -> Self {
        Round {
            number,
            started: None,
            discovered: Vec::new(),
            dropped: BTreeSet::new(),
            saves: None,
            lane: Arc::new(async_lock::Mutex::new(None)),
            loading: false,
        }
    }

    /// The lane a `Load` of this round holds its lock in.
    pub fn lane(&mut self) -> Lane {
        self.loading = true;
        self.lane.clone()
    }

    /// QEMU read the `Id` of the helper in `slot`.
    pub fn discovered(&mut self, slot: usize) {
        if !self.discovered.contains(&slot) {
            self.discovered.push(slot);
        }
        self.dropped.remove(&slot);
    }

    /// QEMU removed a match rule naming the helper in `slot`.
    pub fn rule_removed(&mut self, slot: usize) {
        if self.saves.is_none() && self.discovered.contains(&slot) {
            self.dropped.insert(slot);
        }
    }

    /// When the round's first call came (now, for the first).
    pub fn start(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// What QEMU's `Save` on `slot` waits for: the result from the batch,
    /// which this first `Save` of the round starts.
    pub fn claim_save(&mut self, inner: &Arc<Inner>, slot: usize) -> SaveResult {
        if self.saves.is_none() {
            let mut batch: Vec<usize> = self
                .discovered
                .iter()
                .copied()
                .filter(|s| !self.dropped.contains(s))
                .collect();
            if !batch.contains(&slot) {
                batch.push(slot);
            }
            let ids: Vec<&str> = batch
                .iter()
                .map(|&s| inner.slots[s].spec.id.as_str())
                .collect();
            tracing::info!("QEMU saves; saving {} at once", ids.join(", "));
            self.saves = Some(start_batch(inner, batch));
        }
        let saves = self.saves.get_or_insert_with(HashMap::new);
        match saves.remove(&slot) {
            Some(result) => result,
            // Saved already in this round (QEMU does not do this), or not
            // part of the batch: on its own.
            None => start_batch(inner, vec![slot])
                .remove(&slot)
                .unwrap_or_else(|| unreachable!("a batch has a result for each of its slots")),
        }
    }

    /// Whether a `Load` of this round took the lane (and may hold the
    /// coordinator's one operation in it).
    pub fn holds_lane(&self) -> bool {
        self.loading
    }

    /// Lets go of the round's lock (the round is over).
    pub fn release(&mut self) {
        if std::mem::take(&mut self.loading) {
            let lane = self.lane.clone();
            drop(rt::spawn(async move { lane.lock().await.take() }));
        }
    }
}

/// Saves every helper of `slots` at once, under the coordinator's one
/// operation, and hands each result to its slot's receiver once all are
/// in: all or nothing, since QEMU (7.2) writes its migration stream even
/// when a `Save` failed, counting the failed helper without its state, and
/// a destination then loads every helper before the gap. With every
/// `Save` of the round failed, the stream has no entry at all and a
/// destination loads none. Answering at the end costs no downtime: QEMU's
/// calls end with the slowest helper's either way.
fn start_batch(inner: &Arc<Inner>, slots: Vec<usize>) -> HashMap<usize, SaveResult> {
    let mut results = HashMap::new();
    let mut senders = Vec::new();
    for slot in slots {
        let (tx, rx) = oneshot::channel();
        results.insert(slot, rx);
        senders.push((slot, tx));
    }
    let inner = inner.clone();
    drop(rt::spawn(async move {
        let wait = inner.config.connect_timeout;
        let operation = match inner.exclusive("a save for QEMU", wait).await {
            Ok(operation) => operation,
            Err(busy) => {
                for (_, tx) in senders {
                    let _ = tx.send(Err(busy.into()));
                }
                return;
            }
        };
        let saves = senders.into_iter().map(|(slot, tx)| {
            let inner = inner.clone();
            async move { (slot, tx, transfer::save(inner, slot).await) }
        });
        let results = futures::future::join_all(saves).await;
        let failed: Vec<String> = results
            .iter()
            .filter(|(_, _, result)| result.is_err())
            .map(|(slot, _, _)| format!("{:?}", inner.slots[*slot].spec.id))
            .collect();
        let failed = match failed.len() {
            0 => String::new(),
            1 => format!("helper {}", failed[0]),
            _ => format!("helpers {}", failed.join(", ")),
        };
        for (slot, tx, result) in results {
            let result = match result {
                Ok(_) if !failed.is_empty() => Err(withheld(&inner, slot, &failed)),
                other => other,
            };
            // QEMU may have gone away meanwhile.
            let _ = tx.send(result);
        }
        drop(operation);
    }));
    results
}
