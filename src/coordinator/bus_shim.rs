//! The `org.freedesktop.DBus` answers a bus-style helper expects.
//!
//! Helpers written for QEMU's `dbus-vmstate` connect to a bus address, call
//! `Hello`, then `RequestName("org.qemu.VMState1")`, may add match rules or
//! look up name owners, and only then serve their object. Pointed at their
//! per-helper socket instead, they find no bus daemon there, so the
//! coordinator answers these calls itself on each helper's connection, as
//! the only other peer on it: the helper gets a unique name and owns every
//! name it asks for, and nothing is routed anywhere. `protocol/README.md`
//! lists the calls answered.
//!
//! The shim also tells the accept code when a peer turns out to be
//! bus-style, so that the coordinator does not call a helper before its
//! `Hello` has been answered (sd-bus drops a connection whose first message
//! is not the reply to its `Hello`) and addresses its calls to the unique
//! name it handed out (sd-bus ignores calls without a destination on a bus
//! connection).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::Either;
use futures::StreamExt;

use zbus::fdo;
use zbus::message::Message;
use zbus::names::{OwnedUniqueName, WellKnownName};
use zbus::object_server::ResponseDispatchNotifier;
use zbus::Connection;

/// The bus name, object path and interface a bus-style peer calls.
pub(crate) const BUS_NAME: &str = "org.freedesktop.DBus";
/// Object path of the bus driver.
pub(crate) const BUS_PATH: &str = "/org/freedesktop/DBus";

/// `RequestName` reply: the caller now owns the name.
const REQUEST_NAME_PRIMARY_OWNER: u32 = 1;
/// `RequestName` reply: the caller already owned the name.
const REQUEST_NAME_ALREADY_OWNER: u32 = 4;
/// `ReleaseName` reply: the name was released.
const RELEASE_NAME_RELEASED: u32 = 1;
/// `ReleaseName` reply: nobody owned the name.
const RELEASE_NAME_NON_EXISTENT: u32 = 2;

/// Most well-known names one helper may own at once.
const MAX_NAMES_PER_PEER: usize = 256;

/// Source of unique names, shared by all connections of the process so
/// that no two peers get the same one.
static NEXT_UNIQUE: AtomicU64 = AtomicU64::new(1);

/// What the shim has seen of one peer.
#[derive(Debug, Default)]
struct PeerState {
    /// Whether the peer has called `Hello`.
    hello_called: bool,
    /// Whether the reply to `Hello` has been sent.
    hello_answered: bool,
    /// Calls answered since `Hello` was called.
    calls_after_hello: u64,
    /// Well-known names the peer owns.
    names: BTreeSet<String>,
}

/// The shim's view of one connection, shared between the served object
/// and the accept code.
#[derive(Debug)]
pub(crate) struct Shared {
    unique_name: OwnedUniqueName,
    bus_id: String,
    state: Mutex<PeerState>,
    /// Notified after every call the shim answers.
    changed: event_listener::Event,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, PeerState> {
        // Every update is a single assignment or insertion: a poisoned
        // lock still holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the peer said `Hello` and its reply has been sent.
    pub fn is_bus_style(&self) -> bool {
        self.state().hello_answered
    }

    /// Whether the peer has called `Hello` (answered or not yet).
    pub fn hello_called(&self) -> bool {
        self.state().hello_called
    }

    /// A listener notified after the shim's next answer; take it before
    /// checking the state to miss nothing.
    pub fn listen(&self) -> event_listener::EventListener {
        self.changed.listen()
    }

    /// Records an answered call (other than `Hello`) and wakes the accept
    /// code.
    fn touched(&self) {
        {
            let mut state = self.state();
            if state.hello_called {
                state.calls_after_hello += 1;
            }
        }
        self.changed.notify(usize::MAX);
    }

    /// Whether the peer has called the bus again since `Hello`. Clients
    /// make their next bus call only once they have taken in the reply to
    /// `Hello` (they block on it, or their connection is not set up
    /// before it).
    fn called_after_hello(&self) -> bool {
        self.state().calls_after_hello > 0
    }
}

/// The object served at [`BUS_PATH`] on every helper connection.
#[derive(Debug)]
pub(crate) struct BusShim {
    shared: Arc<Shared>,
}

impl BusShim {
    /// A shim for one new connection; `bus_id` is what `GetId` returns (the
    /// connection's GUID, 32 hex digits).
    pub fn new(bus_id: String) -> (Self, Arc<Shared>) {
        let n = NEXT_UNIQUE.fetch_add(1, Ordering::Relaxed);
        let unique_name = OwnedUniqueName::try_from(format!(":1.{n}"))
            .unwrap_or_else(|_| unreachable!("\":1.<decimal>\" is a valid unique name"));
        let shared = Arc::new(Shared {
            unique_name,
            bus_id,
            state: Mutex::new(PeerState::default()),
            changed: event_listener::Event::new(),
        });
        (
            BusShim {
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// Whether `name` is one the peer can be asked about: the bus itself,
    /// the peer's unique name, or a name it owns. Returns the owner.
    fn owner_of(&self, name: &str) -> Option<String> {
        if name == BUS_NAME {
            return Some(BUS_NAME.to_string());
        }
        let unique = self.shared.unique_name.as_str();
        let owned = self.shared.state().names.contains(name);
        (name == unique || owned).then(|| unique.to_string())
    }

    /// Sends `member(name)` from the bus to the peer, as a bus daemon does
    /// for `NameAcquired` and `NameLost`.
    async fn signal_name(&self, conn: &Connection, member: &str, name: &str) -> fdo::Result<()> {
        let msg = Message::signal(BUS_PATH, BUS_NAME, member)
            .sender(BUS_NAME)
            .destination(self.shared.unique_name.as_str())
            .build(&(name,))?;
        conn.send(&msg).await?;
        Ok(())
    }
}

/// Checks that `name` is a well-known name a peer may own.
fn ownable(name: &str) -> fdo::Result<()> {
    if name.starts_with(':') {
        return Err(fdo::Error::InvalidArgs(format!(
            "cannot acquire a unique-style name {name:?}"
        )));
    }
    WellKnownName::try_from(name)
        .map_err(|_| fdo::Error::InvalidArgs(format!("{name:?} is not a valid bus name")))?;
    if name == BUS_NAME {
        return Err(fdo::Error::InvalidArgs(format!(
            "{BUS_NAME} is reserved for the bus"
        )));
    }
    Ok(())
}

#[zbus::interface(name = "org.freedesktop.DBus")]
impl BusShim {
    /// Hands out the peer's unique name; a second call fails, as on a bus.
    async fn hello(&self) -> fdo::Result<ResponseDispatchNotifier<String>> {
        {
            let mut state = self.shared.state();
            if state.hello_called {
                return Err(fdo::Error::Failed(
                    "already handled an Hello message".to_string(),
                ));
            }
            state.hello_called = true;
        }
        self.shared.changed.notify(usize::MAX);
        let (reply, sent) = ResponseDispatchNotifier::new(self.shared.unique_name.to_string());
        let shared = self.shared.clone();
        drop(crate::rt::spawn(async move {
            sent.await;
            shared.state().hello_answered = true;
            shared.changed.notify(usize::MAX);
        }));
        Ok(reply)
    }

    /// Gives the peer `name`: it is the only peer, so it always becomes the
    /// primary owner. Sends `NameAcquired` first, as a bus daemon does.
    async fn request_name(
        &self,
        name: String,
        _flags: u32,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u32> {
        ownable(&name)?;
        let fresh = {
            let mut state = self.shared.state();
            if !state.names.contains(&name) && state.names.len() >= MAX_NAMES_PER_PEER {
                return Err(fdo::Error::LimitsExceeded(format!(
                    "a helper may own at most {MAX_NAMES_PER_PEER} names"
                )));
            }
            state.names.insert(name.clone())
        };
        let reply = if fresh {
            self.signal_name(conn, "NameAcquired", &name).await?;
            REQUEST_NAME_PRIMARY_OWNER
        } else {
            REQUEST_NAME_ALREADY_OWNER
        };
        self.shared.touched();
        Ok(reply)
    }

    /// Takes `name` back from the peer, with `NameLost`.
    async fn release_name(
        &self,
        name: String,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u32> {
        ownable(&name)?;
        let owned = self.shared.state().names.remove(&name);
        let reply = if owned {
            self.signal_name(conn, "NameLost", &name).await?;
            RELEASE_NAME_RELEASED
        } else {
            RELEASE_NAME_NON_EXISTENT
        };
        self.shared.touched();
        Ok(reply)
    }

    /// Accepted and ignored: no other peer emits signals here.
    async fn add_match(&self, _rule: String) {
        self.shared.touched();
    }

    /// Accepted and ignored (see `AddMatch`).
    async fn remove_match(&self, _rule: String) {
        self.shared.touched();
    }

    /// The owner of `name`: the bus for itself, the peer for its unique
    /// name and its names.
    async fn get_name_owner(&self, name: String) -> fdo::Result<String> {
        self.shared.touched();
        self.owner_of(&name).ok_or_else(|| {
            fdo::Error::NameHasNoOwner(format!("could not get owner of name {name:?}"))
        })
    }

    /// Whether `name` has an owner (see `GetNameOwner`).
    async fn name_has_owner(&self, name: String) -> bool {
        self.shared.touched();
        self.owner_of(&name).is_some()
    }

    /// The bus, the peer's unique name and the names it owns.
    async fn list_names(&self) -> Vec<String> {
        self.shared.touched();
        let mut names = vec![BUS_NAME.to_string(), self.shared.unique_name.to_string()];
        names.extend(self.shared.state().names.iter().cloned());
        names
    }

    /// Only the bus: nothing is activatable.
    async fn list_activatable_names(&self) -> Vec<String> {
        self.shared.touched();
        vec![BUS_NAME.to_string()]
    }

    /// The "bus" id: this connection's GUID.
    async fn get_id(&self) -> String {
        self.shared.touched();
        self.shared.bus_id.clone()
    }
}

/// How long a new peer has to send its first message before it is taken
/// for a peer-to-peer helper. Bus-style libraries send `Hello` right after
/// the handshake, but only once they have read the handshake's last reply:
/// this leaves room for a busy machine to schedule them. Peer-to-peer
/// helpers usually send nothing (this crate's helpers announce themselves
/// with a `Ping`, see [`crate::iface::announce_peer_to_peer`]).
pub(crate) const FIRST_MESSAGE_GRACE: Duration = Duration::from_millis(200);

/// How long a bus-style peer has, after its `Hello` was answered, to make
/// its next bus call (typically `AddMatch` or `RequestName`) before the
/// coordinator calls it anyway. GDBus drops replies it is asked to send
/// before it has taken in the `Hello` reply.
pub(crate) const BUS_SETUP_GRACE: Duration = Duration::from_millis(250);

/// Waits until the coordinator may call the peer, and tells whether the
/// peer is bus-style (`Some(unique name)`: the destination of every call
/// to it) or peer-to-peer (`None`).
///
/// The wait ends at once after the peer's first message if that is not
/// `Hello`, and after [`FIRST_MESSAGE_GRACE`] of silence (peer-to-peer).
/// For a peer that says `Hello`, it ends after the reply has been sent and
/// the peer has made another bus call, or [`BUS_SETUP_GRACE`] has passed.
/// The caller bounds the whole wait.
///
/// `messages` must have been taken from the connection as soon as it was
/// built, so that it sees the peer's first message.
pub(crate) async fn settle(mut messages: zbus::MessageStream, bus: &Shared) -> Option<String> {
    let start = Instant::now();
    let mut saw_hello = false;
    let mut answered_at = None;
    loop {
        let woken = bus.listen();
        if answered_at.is_none() && bus.is_bus_style() {
            answered_at = Some(Instant::now());
        }
        let wait = match answered_at {
            Some(_) if bus.called_after_hello() => Duration::ZERO,
            Some(at) => (at + BUS_SETUP_GRACE).saturating_duration_since(Instant::now()),
            None if saw_hello || bus.hello_called() => {
                // The reply is on its way; the caller's deadline bounds this.
                saw_hello = true;
                Duration::MAX
            }
            None => (start + FIRST_MESSAGE_GRACE).saturating_duration_since(Instant::now()),
        };
        if wait.is_zero() {
            break;
        }
        let next = futures::future::select(messages.next(), woken);
        match crate::rt::timeout(wait, next).await {
            Err(crate::rt::Elapsed) => break,
            Ok(Either::Left((Some(Ok(msg)), _))) => {
                if is_bus_call(&msg, "Hello") {
                    saw_hello = true;
                } else if !saw_hello && !is_bus_call(&msg, "") {
                    // A peer that speaks first, and not to the bus, is p2p.
                    break;
                }
            }
            // Closed: reading the Id will report it.
            Ok(Either::Left((_, _))) => break,
            Ok(Either::Right(_)) => {}
        }
    }
    bus.is_bus_style().then(|| bus.unique_name.to_string())
}

/// Whether `msg` is a method call to the bus driver, of `member` (any
/// member when empty).
fn is_bus_call(msg: &Message, member: &str) -> bool {
    let header = msg.header();
    msg.message_type() == zbus::message::Type::MethodCall
        && header.interface().map(|i| i.as_str()) == Some(BUS_NAME)
        && (member.is_empty() || header.member().map(|m| m.as_str()) == Some(member))
}
