//! What the coordinator answers on QEMU's connection: the bus calls
//! QEMU's `dbus-vmstate` makes, and its calls on the helpers, which reach
//! a helper only as that helper's `Save` or `Load` (or its verified `Id`,
//! answered from what the coordinator already knows). Every other call
//! gets a D-Bus error; nothing else reaches any helper, and nothing but
//! replies to its own calls is ever sent to QEMU.
//!
//! Each helper appears to QEMU under a unique name of its own, `:1.<n>`
//! for the helper in slot `n - 1`, which stays the same while the
//! coordinator runs: the socket is the helper's identity, so a `Save`
//! after the helper reconnected reaches its new connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::StreamExt;
use zbus::message::{Flags, Message, Type as MessageType};
use zbus::{Connection, MessageStream, Variant};

use super::round::Round;
use super::rules;
use super::transfer;
use crate::control::{ERROR_BUSY, ERROR_HELPER_FAILED, ERROR_NOT_CONNECTED};
use crate::coordinator::bus_shim::{BUS_NAME, BUS_PATH};
use crate::coordinator::{Inner, Transfer};
use crate::error::{self, Call, Error};
use crate::iface;
use crate::rt;

/// How long a round's loads keep the coordinator's one operation after
/// QEMU's last call with nothing else in flight, should QEMU never remove
/// its match rules (which ends a round at once).
const ROUND_IDLE: Duration = Duration::from_secs(1);

const ERROR_FAILED: &str = "org.freedesktop.DBus.Error.Failed";
const ERROR_ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const ERROR_SERVICE_UNKNOWN: &str = "org.freedesktop.DBus.Error.ServiceUnknown";
const ERROR_NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
const ERROR_UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
const ERROR_UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";
const ERROR_UNKNOWN_INTERFACE: &str = "org.freedesktop.DBus.Error.UnknownInterface";
const ERROR_UNKNOWN_PROPERTY: &str = "org.freedesktop.DBus.Error.UnknownProperty";
const ERROR_PROPERTY_READ_ONLY: &str = "org.freedesktop.DBus.Error.PropertyReadOnly";
const ERROR_INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
const ERROR_LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
const ERROR_MATCH_RULE_NOT_FOUND: &str = "org.freedesktop.DBus.Error.MatchRuleNotFound";

const PEER_INTERFACE: &str = "org.freedesktop.DBus.Peer";

/// What a helper's object looks like to QEMU.
const HELPER_INTROSPECTION: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.qemu.VMState1">
    <property name="Id" type="s" access="read"/>
    <method name="Load">
      <arg type="ay" name="data" direction="in"/>
    </method>
    <method name="Save">
      <arg type="ay" name="data" direction="out"/>
    </method>
  </interface>
</node>
"#;

/// The name QEMU's `index`-th connection gets from `Hello`.
fn qemu_name(generation: u64) -> String {
    format!(":0.{generation}")
}

/// The name under which QEMU sees the helper in `slot`.
fn helper_name(slot: usize) -> String {
    format!(":1.{}", slot + 1)
}

/// Microseconds on the monotonic clock since the front door first read
/// it: the `t_us` of the trace events that time QEMU's calls and their
/// replies (`DBUS_VMSTATE_LOG=dbus_vmstate::coordinator::qemu=trace`).
fn clock_us() -> u128 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros()
}

/// A call QEMU made, with what routing needs of its header.
#[derive(Clone)]
struct Incoming {
    msg: Message,
    /// When the call came out of the connection's message stream.
    arrived: Instant,
    destination: Option<String>,
    path: String,
    interface: Option<String>,
    member: String,
    wants_reply: bool,
}

impl Incoming {
    fn new(msg: Message) -> Option<Self> {
        if msg.message_type() != MessageType::MethodCall {
            return None;
        }
        let header = msg.header();
        tracing::trace!(
            t_us = clock_us(),
            serial = header.primary().serial_num().get(),
            member = header.member().map(|m| m.as_str()),
            destination = header.destination().map(|d| d.as_str()),
            "QEMU's call arrived"
        );
        let incoming = Incoming {
            arrived: Instant::now(),
            destination: header.destination().map(|d| d.to_string()),
            path: header.path().map(|p| p.to_string()).unwrap_or_default(),
            interface: header.interface().map(|i| i.to_string()),
            member: header.member().map(|m| m.to_string()).unwrap_or_default(),
            wants_reply: !header.primary().flags().contains(Flags::NO_REPLY_EXPECTED),
            msg: msg.clone(),
        };
        Some(incoming)
    }

    /// Whether the call is `member` of `interface` (or of no interface).
    fn is(&self, interface: &str, member: &str) -> bool {
        self.member == member && self.interface.as_deref().is_none_or(|i| i == interface)
    }

    /// The call's one string argument.
    fn string_arg(&self) -> Result<String, Reply> {
        let body = self.msg.body();
        body.deserialize::<String>()
            .or_else(|_| body.deserialize::<(String, u32)>().map(|(s, _)| s))
            .map_err(|e| Reply::error(ERROR_INVALID_ARGS, format!("bad arguments: {e}")))
    }
}

/// An answer to one call.
enum Reply {
    Empty,
    String(String),
    Strings(Vec<String>),
    Bool(bool),
    Properties(HashMap<String, Variant<'static>>),
    Variant(Variant<'static>),
    Bytes(Vec<u8>),
    Error(&'static str, String),
}

impl Reply {
    fn error(name: &'static str, text: impl Into<String>) -> Self {
        Reply::Error(name, text.into())
    }

    /// The error QEMU gets for a helper's failure, naming the helper.
    fn failed(e: &Error) -> Self {
        let name = match e {
            Error::NotConnected { .. } => ERROR_NOT_CONNECTED,
            Error::Busy { .. } => ERROR_BUSY,
            _ => ERROR_HELPER_FAILED,
        };
        Reply::Error(name, error::chain(e))
    }
}

/// Sends `reply` to `call` from `sender` to QEMU's `qemu` name.
async fn send(conn: &Connection, call: &Incoming, sender: &str, qemu: &str, reply: Reply) {
    if !call.wants_reply {
        return;
    }
    let header = call.msg.header();
    let built = match reply {
        Reply::Error(name, text) => Message::error(&header, name)
            .sender(sender)
            .destination(qemu)
            .build(&(text.as_str(),)),
        other => {
            let builder = Message::method_return(&header)
                .sender(sender)
                .destination(qemu);
            match other {
                Reply::Empty => builder.build(&()),
                Reply::String(s) => builder.build(&(s.as_str(),)),
                Reply::Strings(v) => builder.build(&(v,)),
                Reply::Bool(b) => builder.build(&(b,)),
                Reply::Properties(p) => builder.build(&(p,)),
                Reply::Variant(v) => builder.build(&(v,)),
                Reply::Bytes(data) => builder.build(&(serde_bytes::Bytes::new(&data),)),
                Reply::Error(..) => unreachable!("handled above"),
            }
        }
    };
    let sent = match built {
        Ok(msg) => conn.send(&msg).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(member = %call.member, "cannot answer QEMU: {e}");
    }
    tracing::trace!(
        t_us = clock_us(),
        reply_serial = header.primary().serial_num().get(),
        member = %call.member,
        in_us = call.arrived.elapsed().as_micros(),
        "answered QEMU"
    );
}

/// The front door on one QEMU connection.
struct Door {
    inner: Arc<Inner>,
    conn: Connection,
    /// QEMU's name, handed out by `Hello`.
    name: String,
    generation: u64,
    said_hello: bool,
    guid: String,
    rules: Vec<String>,
    round: Round,
    /// QEMU's `Save` and `Load` calls not answered yet.
    in_flight: Arc<AtomicUsize>,
}

/// Answers QEMU on `conn` until the connection closes.
pub(super) async fn serve(
    inner: Arc<Inner>,
    conn: Connection,
    mut messages: MessageStream,
    generation: u64,
) {
    let mut door = Door {
        inner,
        name: qemu_name(generation),
        generation,
        said_hello: false,
        guid: zbus::Guid::generate().to_string(),
        rules: Vec::new(),
        round: Round::new(0),
        in_flight: Arc::new(AtomicUsize::new(0)),
        conn,
    };
    loop {
        // A timer only while a round's loads hold the one operation: one
        // per message would cost every call of QEMU's a wake-up of the
        // timer thread.
        let next = if door.round.holds_lane() {
            rt::timeout(ROUND_IDLE, messages.next()).await
        } else {
            Ok(messages.next().await)
        };
        match next {
            Ok(Some(Ok(msg))) => {
                if let Some(call) = Incoming::new(msg) {
                    door.handle(call).await;
                }
            }
            Ok(Some(Err(zbus::Error::InputOutput(e)))) => {
                // QEMU exiting resets its end; the stream ends next.
                tracing::debug!("reading from QEMU failed: {e}");
            }
            Ok(Some(Err(e))) => {
                tracing::warn!("QEMU sent a message that does not parse: {e}");
            }
            Ok(None) => break,
            Err(rt::Elapsed) => door.idle(),
        }
    }
    door.round.release();
}

impl Door {
    async fn handle(&mut self, call: Incoming) {
        let destination = call.destination.clone();
        let hello = call.is(BUS_NAME, "Hello") && is_bus(destination.as_deref());
        if !self.said_hello && !hello {
            let text = "Client tried to send a message other than Hello without being registered";
            self.answer(&call, BUS_NAME, Reply::error(ERROR_ACCESS_DENIED, text))
                .await;
            return;
        }
        let name = match destination.as_deref() {
            Some(name) if !is_bus(Some(name)) => name,
            _ => {
                if let Some(reply) = self.bus_call(&call) {
                    self.answer(&call, BUS_NAME, reply).await;
                }
                return;
            }
        };
        match self.slot_of(name) {
            Some(slot) => self.helper_call(call, slot).await,
            None => {
                let text = format!("The name {name} was not provided by any .service files");
                self.answer(&call, BUS_NAME, Reply::error(ERROR_SERVICE_UNKNOWN, text))
                    .await;
            }
        }
    }

    async fn answer(&self, call: &Incoming, sender: &str, reply: Reply) {
        send(&self.conn, call, sender, &self.name, reply).await;
    }

    /// The slot of the helper QEMU knows as `name`.
    fn slot_of(&self, name: &str) -> Option<usize> {
        let n: usize = name.strip_prefix(":1.")?.parse().ok()?;
        (1..=self.inner.slots.len()).contains(&n).then(|| n - 1)
    }

    fn connected_names(&self) -> Vec<String> {
        (0..self.inner.slots.len())
            .filter(|&slot| self.inner.slots[slot].peer().is_some())
            .map(helper_name)
            .collect()
    }

    /// QEMU has nothing in flight and said nothing for a while: a round
    /// still holding the coordinator's one operation lets it go.
    fn idle(&mut self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.round.release();
        }
    }

    /// A call to the bus driver; `None` when the answer comes later.
    fn bus_call(&mut self, call: &Incoming) -> Option<Reply> {
        let properties = iface::PROPERTIES_INTERFACE;
        if call.path != BUS_PATH && call.path != "/" {
            let text = format!("No such object path '{}'", call.path);
            return Some(Reply::error(ERROR_UNKNOWN_OBJECT, text));
        }
        let reply = match call.member.as_str() {
            "Hello" if call.is(BUS_NAME, "Hello") => {
                if self.said_hello {
                    Reply::error(ERROR_FAILED, "Already handled an Hello message")
                } else {
                    self.said_hello = true;
                    tracing::debug!(name = %self.name, "QEMU said Hello");
                    Reply::String(self.name.clone())
                }
            }
            "AddMatch" if call.is(BUS_NAME, "AddMatch") => match call.string_arg() {
                Ok(_) if self.rules.len() >= rules::MAX_RULES => Reply::error(
                    ERROR_LIMITS_EXCEEDED,
                    format!("at most {} match rules", rules::MAX_RULES),
                ),
                Ok(rule) => {
                    self.rules.push(rule);
                    Reply::Empty
                }
                Err(e) => e,
            },
            "RemoveMatch" if call.is(BUS_NAME, "RemoveMatch") => match call.string_arg() {
                Ok(rule) => self.remove_match(&rule),
                Err(e) => e,
            },
            "StartServiceByName" if call.is(BUS_NAME, "StartServiceByName") => {
                match call.string_arg() {
                    Ok(name) => Reply::error(
                        ERROR_SERVICE_UNKNOWN,
                        format!("The name {name} was not provided by any .service files"),
                    ),
                    Err(e) => e,
                }
            }
            "GetNameOwner" if call.is(BUS_NAME, "GetNameOwner") => match call.string_arg() {
                Ok(name) => match self.owner_of(&name) {
                    Some(owner) => Reply::String(owner),
                    None => Reply::error(
                        ERROR_NAME_HAS_NO_OWNER,
                        format!("Could not get owner of name '{name}': no such name"),
                    ),
                },
                Err(e) => e,
            },
            "NameHasOwner" if call.is(BUS_NAME, "NameHasOwner") => match call.string_arg() {
                Ok(name) => Reply::Bool(self.owner_of(&name).is_some()),
                Err(e) => e,
            },
            "ListNames" if call.is(BUS_NAME, "ListNames") => {
                let mut names = vec![BUS_NAME.to_string(), self.name.clone()];
                names.extend(self.connected_names());
                Reply::Strings(names)
            }
            "GetId" if call.is(BUS_NAME, "GetId") => Reply::String(self.guid.clone()),
            "ListQueuedOwners" if call.is(BUS_NAME, "ListQueuedOwners") => {
                return match call.string_arg() {
                    Ok(name) if name == iface::BUS_NAME => {
                        self.list_helpers(call);
                        None
                    }
                    Ok(name) => Some(match self.owner_of(&name) {
                        Some(owner) => Reply::Strings(vec![owner]),
                        None => Reply::error(
                            ERROR_NAME_HAS_NO_OWNER,
                            format!("Could not get owners of name '{name}': no such name"),
                        ),
                    }),
                    Err(e) => Some(e),
                };
            }
            "GetAll" if call.is(properties, "GetAll") => match call.string_arg() {
                Ok(interface) if interface == BUS_NAME => Reply::Properties(HashMap::new()),
                Ok(interface) => Reply::error(
                    ERROR_UNKNOWN_INTERFACE,
                    format!("the bus has no interface {interface}"),
                ),
                Err(e) => e,
            },
            "Ping" if call.is(PEER_INTERFACE, "Ping") => Reply::Empty,
            member => Reply::error(
                ERROR_UNKNOWN_METHOD,
                format!("{BUS_NAME} does not understand message {member}"),
            ),
        };
        Some(reply)
    }

    /// The owner of `name`: the bus, QEMU itself, or a connected helper.
    fn owner_of(&self, name: &str) -> Option<String> {
        if name == BUS_NAME || name == self.name {
            return Some(name.to_string());
        }
        let slot = self.slot_of(name)?;
        self.inner.slots[slot].peer().map(|_| name.to_string())
    }

    fn remove_match(&mut self, rule: &str) -> Reply {
        let Some(at) = self.rules.iter().position(|r| r == rule) else {
            return Reply::error(
                ERROR_MATCH_RULE_NOT_FOUND,
                "The given match rule wasn't found and can't be removed",
            );
        };
        self.rules.remove(at);
        for name in rules::names(rule) {
            if let Some(slot) = self.slot_of(&name) {
                self.round.rule_removed(slot);
            }
        }
        let names_a_helper = |r: &String| {
            rules::names(r)
                .iter()
                .any(|name| self.slot_of(name).is_some())
        };
        if !self.rules.iter().any(names_a_helper) {
            // QEMU let go of every helper's proxy: the round is over.
            self.round.release();
        }
        Reply::Empty
    }

    /// `ListQueuedOwners("org.qemu.VMState1")`: a new round. Answered
    /// once every required helper is connected, or the connect timeout
    /// has passed (then without the missing ones: QEMU reports its own
    /// error for a helper of its `id-list` that is absent).
    fn list_helpers(&mut self, call: &Incoming) {
        self.round.release();
        self.round = Round::new(self.round.number + 1);
        let inner = self.inner.clone();
        let conn = self.conn.clone();
        let qemu = self.name.clone();
        let call = call.clone();
        drop(rt::spawn(async move {
            let timeout = inner.config.connect_timeout;
            if let Err(e) = inner.require(&inner.required(), timeout).await {
                tracing::warn!(
                    "QEMU lists the helpers, and {}: it gets the list without",
                    error::chain(&e)
                );
            }
            let names = (0..inner.slots.len())
                .filter(|&slot| inner.slots[slot].peer().is_some())
                .map(helper_name)
                .collect();
            send(&conn, &call, BUS_NAME, &qemu, Reply::Strings(names)).await;
        }));
    }

    /// A call on the helper in `slot`.
    async fn helper_call(&mut self, call: Incoming, slot: usize) {
        let sender = helper_name(slot);
        let id = self.inner.slots[slot].spec.id.clone();
        if call.path != iface::OBJECT_PATH {
            let text = format!("No such object path '{}'", call.path);
            self.answer(&call, &sender, Reply::error(ERROR_UNKNOWN_OBJECT, text))
                .await;
            return;
        }
        let properties = iface::PROPERTIES_INTERFACE;
        let reply = if call.is(iface::INTERFACE, iface::METHOD_SAVE) {
            return self.save(call, slot).await;
        } else if call.is(iface::INTERFACE, iface::METHOD_LOAD) {
            return self.load(call, slot);
        } else if call.is(properties, "GetAll") {
            match call.string_arg() {
                Ok(interface) if interface == iface::INTERFACE => {
                    if self.inner.slots[slot].peer().is_some() {
                        self.round.discovered(slot);
                        let mut props = HashMap::new();
                        props.insert(iface::PROPERTY_ID.to_string(), Variant::from(id));
                        Reply::Properties(props)
                    } else {
                        not_connected(&id)
                    }
                }
                Ok(interface) => unknown_interface(&interface),
                Err(e) => e,
            }
        } else if call.is(properties, "Get") {
            match call.msg.body().deserialize::<(String, String)>() {
                Ok((interface, property))
                    if interface == iface::INTERFACE && property == iface::PROPERTY_ID =>
                {
                    if self.inner.slots[slot].peer().is_some() {
                        Reply::Variant(Variant::from(id))
                    } else {
                        not_connected(&id)
                    }
                }
                Ok((interface, _)) if interface != iface::INTERFACE => {
                    unknown_interface(&interface)
                }
                Ok((_, property)) => Reply::error(
                    ERROR_UNKNOWN_PROPERTY,
                    format!("{} has no property {property}", iface::INTERFACE),
                ),
                Err(e) => Reply::error(ERROR_INVALID_ARGS, format!("bad arguments: {e}")),
            }
        } else if call.is(properties, "Set") {
            Reply::error(
                ERROR_PROPERTY_READ_ONLY,
                format!("{} is read-only", iface::PROPERTY_ID),
            )
        } else if call.is(iface::INTROSPECTABLE_INTERFACE, "Introspect") {
            Reply::String(HELPER_INTROSPECTION.to_string())
        } else if call.is(PEER_INTERFACE, "Ping") {
            Reply::Empty
        } else {
            Reply::error(
                ERROR_UNKNOWN_METHOD,
                format!(
                    "{}.{} is not forwarded: a helper takes only {} Save and Load, and its Id",
                    call.interface.as_deref().unwrap_or("(no interface)"),
                    call.member,
                    iface::INTERFACE
                ),
            )
        };
        self.answer(&call, &sender, reply).await;
    }

    /// QEMU's `Save` on the helper in `slot`: answered from the round's
    /// batch (started by this call if it is the round's first). QEMU's
    /// later `Save`s come once the batch is done (it answers none before),
    /// so their results are in already: those are answered here, without
    /// a task of their own.
    async fn save(&mut self, call: Incoming, slot: usize) {
        let mut result = self.round.claim_save(&self.inner, slot);
        let started = self.round.start();
        let number = self.round.number;
        let abandoned = move |inner: &Inner| Error::Transfer {
            id: inner.slots[slot].spec.id.clone(),
            call: Call::Save,
            reason: "the save was abandoned".to_string(),
            source: None,
        };
        let ready = match result.try_recv() {
            Ok(Some(result)) => Some(result),
            Ok(None) => None,
            Err(oneshot::Canceled) => Some(Err(abandoned(&self.inner))),
        };
        if let Some(result) = ready {
            let outcome = result.map(|saved| (saved.transfer, Reply::Bytes(saved.data)));
            let done = (Call::Save, number, started, outcome);
            let (conn, qemu) = (&self.conn, self.name.as_str());
            finish(&self.inner, conn, qemu, self.generation, &call, slot, done).await;
            return;
        }
        self.spawn_call(call, slot, move |inner| async move {
            let result = result.await.unwrap_or_else(|_| Err(abandoned(&inner)));
            let outcome = result.map(|saved| (saved.transfer, Reply::Bytes(saved.data)));
            (Call::Save, number, started, outcome)
        });
    }

    /// QEMU's `Load` on the helper in `slot`, under the round's lock.
    fn load(&mut self, call: Incoming, slot: usize) {
        let data = match call.msg.body().deserialize::<&[u8]>() {
            Ok(data) => data.to_vec(),
            Err(e) => {
                let sender = helper_name(slot);
                let reply = Reply::error(ERROR_INVALID_ARGS, format!("Load takes one ay: {e}"));
                let (conn, qemu) = (self.conn.clone(), self.name.clone());
                drop(rt::spawn(async move {
                    send(&conn, &call, &sender, &qemu, reply).await;
                }));
                return;
            }
        };
        let started = self.round.start();
        let number = self.round.number;
        let lane = self.round.lane();
        self.spawn_call(call, slot, move |inner| async move {
            let outcome = async {
                let operation = {
                    let mut held = lane.lock().await;
                    if held.is_none() {
                        let wait = inner.config.connect_timeout;
                        *held = Some(inner.exclusive("a load for QEMU", wait).await?);
                    }
                    held.clone()
                };
                let loaded = transfer::load(inner.clone(), slot, data).await;
                drop(operation);
                loaded.map(|t| (t, Reply::Empty))
            }
            .await;
            (Call::Load, number, started, outcome)
        });
    }

    /// Runs one of QEMU's `Save` or `Load` calls as a task, then records
    /// and answers it.
    fn spawn_call<F, Fut>(&self, call: Incoming, slot: usize, work: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Done> + Send + 'static,
    {
        let inner = self.inner.clone();
        let conn = self.conn.clone();
        let qemu = self.name.clone();
        let in_flight = self.in_flight.clone();
        let generation = self.generation;
        in_flight.fetch_add(1, Ordering::AcqRel);
        drop(rt::spawn(async move {
            let done = work(inner.clone()).await;
            finish(&inner, &conn, &qemu, generation, &call, slot, done).await;
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }));
    }
}

/// How one of QEMU's `Save` or `Load` calls ended: the call, its round,
/// when the round's first call came, and the outcome.
type Done = (
    Call,
    u64,
    std::time::Instant,
    Result<(Transfer, Reply), Error>,
);

/// Records how QEMU's `call` on the helper in `slot` ended and answers it.
async fn finish(
    inner: &Inner,
    conn: &Connection,
    qemu: &str,
    generation: u64,
    call: &Incoming,
    slot: usize,
    (kind, number, started, outcome): Done,
) {
    let id = inner.slots[slot].spec.id.as_str();
    let reply = match outcome {
        Ok((transfer, reply)) => {
            let bytes = transfer.bytes;
            {
                // The helper's own status shows it too.
                let mut state = inner.slots[slot].state();
                match kind {
                    Call::Save => state.last_save = Some(transfer),
                    _ => state.last_load = Some(transfer),
                }
            }
            record(inner, kind, generation, number, started, Ok((id, bytes)));
            reply
        }
        Err(e) => {
            let text = error::chain(&e);
            tracing::warn!(helper = %id, "QEMU's {kind} failed: {text}");
            record(inner, kind, generation, number, started, Err(text));
            Reply::failed(&e)
        }
    };
    send(conn, call, &helper_name(slot), qemu, reply).await;
}

/// Adds one call's outcome to the front door's record.
fn record(
    inner: &Inner,
    call: Call,
    generation: u64,
    round: u64,
    started: std::time::Instant,
    outcome: Result<(&str, u64), String>,
) {
    if let Some(slot) = &inner.qemu {
        // Rounds count per connection: tell two connections' apart.
        slot.record(call, (generation << 32) | round, started, outcome);
    }
}

/// Whether a call with `destination` is for the bus driver (a call
/// without one is, as on a bus).
fn is_bus(destination: Option<&str>) -> bool {
    destination.is_none_or(|d| d == BUS_NAME)
}

fn not_connected(id: &str) -> Reply {
    Reply::error(
        ERROR_NAME_HAS_NO_OWNER,
        format!("helper {id:?} is not connected"),
    )
}

fn unknown_interface(interface: &str) -> Reply {
    Reply::error(
        ERROR_UNKNOWN_INTERFACE,
        format!(
            "a helper shows QEMU only {}, not {interface}",
            iface::INTERFACE
        ),
    )
}
