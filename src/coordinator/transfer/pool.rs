//! A bounded pool of chunk buffers shared by the threads that move
//! streamed state, so coordinator memory stays flat however large the
//! state: at most `max` buffers exist at once, and a buffer's pages are
//! touched once and then reused.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Chunk buffers, at most `max` handed out at a time.
#[derive(Debug)]
pub(crate) struct Pool {
    state: Mutex<State>,
    returned: Condvar,
    max: usize,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    free: Vec<Vec<u8>>,
    out: usize,
}

impl Pool {
    /// A pool of at most `max` (at least 1) buffers of `capacity` bytes.
    /// Buffers are allocated on first use; their pages are touched only as
    /// data fills them.
    pub(crate) fn new(max: usize, capacity: usize) -> Self {
        Pool {
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
            max: max.max(1),
            capacity,
        }
    }

    /// The capacity of every buffer.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a push, a pop or a counter step, so
        // a panic elsewhere cannot leave it half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer; waits while `max` buffers are out.
    pub(crate) fn get(&self) -> Vec<u8> {
        let mut buf = self.get_as_is();
        buf.clear();
        buf
    }

    /// A buffer holding whatever it held when it was returned (a reused
    /// one keeps its length, so a reader that fills it from the start
    /// need not zero it first); waits while `max` buffers are out.
    pub(crate) fn get_as_is(&self) -> Vec<u8> {
        let mut state = self.lock();
        while state.out >= self.max {
            state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.out += 1;
        match state.free.pop() {
            Some(buf) => buf,
            None => Vec::with_capacity(self.capacity),
        }
    }

    /// Returns a buffer taken with [`Pool::get`].
    pub(crate) fn put(&self, buf: Vec<u8>) {
        let mut state = self.lock();
        state.out = state.out.saturating_sub(1);
        if buf.capacity() == self.capacity {
            state.free.push(buf);
        }
        drop(state);
        self.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn buffers_are_reused() {
        let pool = Pool::new(2, 64);
        let mut a = pool.get();
        a.extend_from_slice(b"xyz");
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.capacity(), 64);
    }

    #[test]
    fn get_waits_while_max_buffers_are_out() {
        let pool = Arc::new(Pool::new(1, 8));
        let first = pool.get();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.get().capacity())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a second buffer was handed out");
        pool.put(first);
        assert_eq!(waiter.join().unwrap(), 8);
    }
}
