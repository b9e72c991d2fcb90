//! The state the coordinator handle shares with its tasks: one slot per
//! expected helper, holding its connection (if any) and its last
//! transfers.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::qemu::QemuSlot;
use super::{Config, HelperSpec, Peer, Transfer};
use crate::error::Error;

#[derive(Debug, Default)]
pub(crate) struct SlotState {
    pub peer: Option<Peer>,
    pub next_generation: u64,
    pub last_save: Option<Transfer>,
    pub last_load: Option<Transfer>,
    pub last_rejection: Option<String>,
    /// The extensions the helper of connection generation `.0` serves,
    /// once detected ([`transfer::extensions`](super::transfer::extensions)).
    pub stream_support: Option<(u64, crate::iface::Extensions)>,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub spec: HelperSpec,
    state: Mutex<SlotState>,
}

impl Slot {
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock cannot leave the state half
        // updated (every update is one assignment), so a poisoned lock is
        // still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn peer(&self) -> Option<Peer> {
        self.state().peer.clone()
    }
}

/// State shared by the coordinator handle and its tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub config: Config,
    pub slots: Vec<Slot>,
    /// The QEMU front door, when configured.
    pub qemu: Option<QemuSlot>,
    /// Notified whenever a helper connects or disconnects.
    pub changed: event_listener::Event,
    pub stopping: AtomicBool,
    /// Held by the one save or load running, whoever started it.
    operation: Arc<async_lock::Mutex<()>>,
    /// What holds [`Inner::operation`], for the `Busy` error.
    running: Mutex<Option<&'static str>>,
}

/// Another save or load kept running while one waited for its turn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Busy {
    /// What runs.
    pub running: &'static str,
    /// How long the other waited.
    pub waited: Duration,
}

impl From<Busy> for Error {
    fn from(busy: Busy) -> Error {
        Error::Busy {
            running: busy.running.to_string(),
            waited: busy.waited,
        }
    }
}

/// The right to run the one save or load; shared by everything that works
/// for it and released when the last holder drops it.
#[derive(Debug, Clone)]
pub(crate) struct Operation(#[allow(dead_code)] Arc<async_lock::MutexGuardArc<()>>);

impl Inner {
    /// A slot for each configured helper, none connected yet.
    pub fn new(config: Config) -> Self {
        let slots = config
            .helpers
            .iter()
            .map(|spec| Slot {
                spec: spec.clone(),
                state: Mutex::new(SlotState::default()),
            })
            .collect();
        let qemu = config.qemu_socket.clone().map(QemuSlot::new);
        Inner {
            config,
            slots,
            qemu,
            changed: event_listener::Event::new(),
            stopping: AtomicBool::new(false),
            operation: Arc::new(async_lock::Mutex::new(())),
            running: Mutex::new(None),
        }
    }

    /// Waits up to `wait` for the right to run a save or load (`what`
    /// says which, for whoever waits next).
    ///
    /// # Errors
    ///
    /// [`Busy`] naming the operation still running after `wait`.
    pub async fn exclusive(&self, what: &'static str, wait: Duration) -> Result<Operation, Busy> {
        let guard = match self.operation.try_lock_arc() {
            Some(guard) => guard,
            None => {
                let waiting = self.operation.lock_arc();
                match crate::rt::timeout(wait, waiting).await {
                    Ok(guard) => guard,
                    Err(crate::rt::Elapsed) => {
                        let running = self
                            .running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .unwrap_or("a save or load");
                        return Err(Busy {
                            running,
                            waited: wait,
                        });
                    }
                }
            }
        };
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
        Ok(Operation(Arc::new(guard)))
    }

    /// Wakes everyone waiting for a helper to connect or disconnect.
    pub fn notify(&self) {
        self.changed.notify(usize::MAX);
    }

    /// The slots of the required helpers.
    pub fn required(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].spec.required)
            .collect()
    }

    /// Waits up to `timeout` until every slot in `wanted` has a peer.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] (or [`Error::Several`]) naming each helper
    /// still missing then.
    pub async fn require(&self, wanted: &[usize], timeout: Duration) -> Result<(), Error> {
        let missing = self.wait_connected(wanted, timeout).await;
        let errors = missing
            .iter()
            .map(|&i| {
                let slot = &self.slots[i];
                Error::NotConnected {
                    id: slot.spec.id.clone(),
                    timeout,
                    last_rejection: slot.state().last_rejection.clone(),
                }
            })
            .collect();
        match Error::from_many(errors) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until every slot in `wanted` has a peer, or the deadline.
    /// Returns the slots still missing (empty on success).
    async fn wait_connected(&self, wanted: &[usize], timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let listener = self.changed.listen();
            let missing: Vec<usize> = wanted
                .iter()
                .copied()
                .filter(|&i| self.slots[i].peer().is_none())
                .collect();
            let now = Instant::now();
            if missing.is_empty() || now >= deadline {
                return missing;
            }
            let _ = crate::rt::timeout(deadline - now, listener).await;
        }
    }
}
