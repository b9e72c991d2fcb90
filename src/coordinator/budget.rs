//! The coordinator-wide memory budget for plain states.
//!
//! A plain helper's state travels in one D-Bus message (up to 128 MiB),
//! so the coordinator holds it whole: a `Save` reply until the writer has
//! written it, a state being loaded from the moment it is collected until
//! its `Load` returned. The budget bounds the sum of those states held at
//! once, by every save and load of the coordinator together
//! ([`Builder::memory_limit`](super::Builder::memory_limit), default
//! [`DEFAULT_MEMORY_LIMIT_BYTES`]): a call waits for room instead of
//! piling up, and a state larger than the whole budget is an error
//! naming its helper. Streaming helpers need no budget: their states move
//! through a few fixed chunk buffers.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// The default budget: 256 MiB, which a small host can spare and which
/// holds two plain states of the largest size one message carries.
pub const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 256 << 20;

/// Bytes of plain state held at once, at most `limit`.
pub(crate) struct Budget {
    limit: u64,
    used: Mutex<u64>,
    /// Notified whenever room is given back.
    freed: event_listener::Event,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("used", &*self.lock())
            .finish()
    }
}

/// Room taken from a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: Mutex::new(0),
            freed: event_listener::Event::new(),
        })
    }

    /// The budget in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // Every update is one addition or subtraction.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes` now if they fit beside what is held.
    pub(crate) fn try_take(self: &Arc<Self>, bytes: u64) -> Option<Permit> {
        let mut used = self.lock();
        if used.saturating_add(bytes) > self.limit {
            return None;
        }
        *used += bytes;
        Some(Permit {
            budget: self.clone(),
            bytes,
        })
    }

    /// Takes `bytes`, waiting for room; `None` when they can never fit.
    pub(crate) async fn take(self: &Arc<Self>, bytes: u64) -> Option<Permit> {
        if bytes > self.limit {
            return None;
        }
        loop {
            let listener = self.freed.listen();
            if let Some(permit) = self.try_take(bytes) {
                return Some(permit);
            }
            listener.await;
        }
    }
}

impl Permit {
    /// The bytes it holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The budget it holds them from.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Grows to hold `bytes` if they fit beside what the others hold;
    /// whether it did.
    pub(crate) fn try_grow(&mut self, bytes: u64) -> bool {
        let mut used = self.budget.lock();
        let others = used.saturating_sub(self.bytes);
        if others.saturating_add(bytes) > self.budget.limit {
            return false;
        }
        *used = others + bytes;
        drop(used);
        if bytes < self.bytes {
            self.budget.freed.notify(usize::MAX);
        }
        self.bytes = bytes;
        true
    }

    /// Holds `bytes` from now on: gives back what is no longer needed, or
    /// takes more without waiting (the memory is held already).
    pub(crate) fn resize(&mut self, bytes: u64) {
        let mut used = self.budget.lock();
        *used = used.saturating_sub(self.bytes).saturating_add(bytes);
        drop(used);
        if bytes < self.bytes {
            self.budget.freed.notify(usize::MAX);
        }
        self.bytes = bytes;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.resize(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_taken_and_given_back() {
        let budget = Budget::new(10);
        let a = budget.try_take(6).unwrap();
        assert!(budget.try_take(5).is_none());
        let mut b = budget.try_take(4).unwrap();
        b.resize(1);
        let c = budget.try_take(3).unwrap();
        drop((a, b, c));
        assert!(budget.try_take(10).is_some());
    }

    #[test]
    fn a_permit_grows_only_into_free_room() {
        let budget = Budget::new(10);
        let other = budget.try_take(4).unwrap();
        let mut p = budget.try_take(2).unwrap();
        assert!(p.try_grow(6));
        assert!(!p.try_grow(7));
        assert_eq!(p.bytes(), 6);
        drop(other);
        assert!(p.try_grow(10));
        assert!(budget.try_take(1).is_none());
    }

    #[test]
    fn a_state_larger_than_the_budget_never_fits() {
        let budget = Budget::new(10);
        assert!(futures::executor::block_on(budget.take(11)).is_none());
    }

    #[test]
    fn take_waits_for_room() {
        let budget = Budget::new(10);
        let held = budget.try_take(8).unwrap();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                futures::executor::block_on(budget.take(5)).map(|p| p.bytes())
            })
        };
        // Only giving the room back lets the waiter through; without it
        // the join below would block for ever.
        drop(held);
        assert_eq!(waiter.join().unwrap(), Some(5));
    }
}
