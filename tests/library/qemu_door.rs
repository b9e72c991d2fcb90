//! QEMU's front door (`Builder::qemu_socket`), driven by a stand-in for
//! QEMU: a zbus bus client (which says `Hello` as QEMU's GDBus does) that
//! makes QEMU's calls. The recorded sequence of real QEMU 7.2 is replayed
//! call by call; the other tests make the same calls with one thing
//! changed. Real QEMU drives the front door in `tests/qemu/`.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;
use dbus_vmstate::coordinator::Coordinator;
use dbus_vmstate::Error;
use zbus::{Connection, Message};

const BUS: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";
const VMSTATE: &str = "org.qemu.VMState1";
const VMSTATE_PATH: &str = "/org/qemu/VMState1";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

fn trace_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-dbus-vmstate-bus-trace.txt")
}

/// The blob QEMU 7.2's helpers saved in the trace.
fn blob(id: &str) -> Vec<u8> {
    format!("I'am\0{id}!\0").into_bytes()
}

/// One argument or return value as `dbus-monitor` prints it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    U32(u32),
    Bytes(Vec<u8>),
    Strings(Vec<String>),
    /// A dictionary: its string keys and, for string values, the value.
    Dict(Vec<(String, Option<String>)>),
}

/// One message of the trace.
#[derive(Debug, Clone)]
struct Entry {
    kind: String,
    fields: HashMap<String, String>,
    values: Vec<Value>,
}

/// The entries of the section headed `## <section>`.
fn section(section: &str) -> Vec<Entry> {
    let text = std::fs::read_to_string(trace_path()).expect("read the trace");
    let start = text
        .find(&format!("## {section}"))
        .unwrap_or_else(|| panic!("no section {section}"));
    let body = &text[start..];
    let body = body[3..].find("\n## ").map_or(body, |end| &body[..end + 3]);
    let mut entries = Vec::new();
    let mut lines = body.lines().skip(1).peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let kind = ["method call", "method return", "error", "signal"]
            .into_iter()
            .find(|k| line.starts_with(k))
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let mut fields = HashMap::new();
        for word in line[kind.len()..].split([' ', ';']) {
            if let Some((k, v)) = word.split_once('=') {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        let mut block = Vec::new();
        while lines.peek().is_some_and(|l| l.starts_with(' ')) {
            block.push(lines.next().unwrap().trim().to_string());
        }
        entries.push(Entry {
            kind: kind.to_string(),
            fields,
            values: values(&block),
        });
    }
    entries
}

fn quoted(line: &str) -> String {
    let start = line.find('"').expect("a quoted string") + 1;
    let end = line.rfind('"').expect("a quoted string");
    line[start..end].to_string()
}

/// The values of one entry's indented lines.
fn values(block: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let line = &block[i];
        if line.starts_with("string ") {
            out.push(Value::Str(quoted(line)));
        } else if let Some(n) = line.strip_prefix("uint32 ") {
            out.push(Value::U32(n.parse().expect("a u32")));
        } else if line.starts_with("array of bytes [") {
            let mut bytes = Vec::new();
            i += 1;
            while block[i] != "]" {
                bytes.extend(
                    block[i]
                        .split_whitespace()
                        .map(|h| u8::from_str_radix(h, 16).expect("hex")),
                );
                i += 1;
            }
            out.push(Value::Bytes(bytes));
        } else if line == "array [" {
            let end = i + closing(&block[i..]);
            let inner = &block[i + 1..end];
            if inner.first().is_some_and(|l| l.starts_with("dict entry(")) {
                let mut dict = Vec::new();
                let mut j = 0;
                while j < inner.len() {
                    if inner[j].starts_with("dict entry(") {
                        let key = quoted(&inner[j + 1]);
                        let value = inner[j + 2]
                            .strip_prefix("variant")
                            .map(str::trim)
                            .filter(|v| v.starts_with("string "))
                            .map(quoted);
                        dict.push((key, value));
                    }
                    j += 1;
                }
                out.push(Value::Dict(dict));
            } else {
                out.push(Value::Strings(inner.iter().map(|l| quoted(l)).collect()));
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// The offset of the `]` closing the `[` on the first line.
fn closing(block: &[String]) -> usize {
    let mut depth = 0i32;
    for (i, line) in block.iter().enumerate() {
        depth += line.matches('[').count() as i32 - line.matches(']').count() as i32;
        if depth == 0 {
            return i;
        }
    }
    panic!("unclosed array");
}

/// A stand-in for QEMU on the front door at `socket`: a bus client,
/// which says `Hello` before anything else.
async fn qemu(socket: &Path) -> Connection {
    let stream = UnixStream::connect(socket).expect("connect to the front door");
    within(
        "the front door's handshake and Hello",
        zbus::connection::Builder::unix_stream(stream).build(),
    )
    .await
    .expect("the front door answers as a bus")
}

/// Calls `member` as QEMU does.
async fn call<B>(
    qemu: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    body: &B,
) -> zbus::Result<Message>
where
    B: serde::Serialize + zbus::DynamicType,
{
    within(
        member,
        qemu.call_method(Some(destination), path, Some(interface), member, body),
    )
    .await
}

/// The D-Bus error name of a failed call.
fn error_name(result: &zbus::Result<Message>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(zbus::Error::MethodError(name, _, _)) => Some(name.to_string()),
        Err(zbus::Error::FDO(e)) => Some(zbus::DBusError::name(e.as_ref()).to_string()),
        Err(other) => panic!("not an error reply: {other}"),
    }
}

fn error_text(result: &zbus::Result<Message>) -> String {
    match result {
        Err(zbus::Error::MethodError(_, text, _)) => text.clone().unwrap_or_default(),
        Err(e) => e.to_string(),
        Ok(_) => panic!("the call succeeded"),
    }
}

/// A coordinator for `ids` in `dir` with a front door at `dir/qemu.sock`.
fn front_door(dir: &Path, ids: &[&str]) -> (Coordinator, PathBuf) {
    let socket = dir.join("qemu.sock");
    let c = builder(dir, ids).qemu_socket(&socket).bind().expect("bind");
    (c, socket)
}

/// The front door's names for the connected helpers, in slot order.
async fn list(qemu: &Connection) -> Vec<String> {
    let reply = call(qemu, BUS, BUS_PATH, BUS, "ListQueuedOwners", &(VMSTATE,))
        .await
        .expect("ListQueuedOwners");
    reply.body().deserialize::<Vec<String>>().expect("as")
}

/// QEMU's discovery of `name`: its three match rules, then its `Id`.
async fn discover(qemu: &Connection, name: &str) -> String {
    for rule in rules(name) {
        call(qemu, BUS, BUS_PATH, BUS, "AddMatch", &(rule.as_str(),))
            .await
            .expect("AddMatch");
    }
    let reply = call(qemu, name, VMSTATE_PATH, PROPERTIES, "GetAll", &(VMSTATE,))
        .await
        .expect("GetAll");
    let props: HashMap<String, zbus::OwnedVariant> = reply.body().deserialize().expect("a{sv}");
    String::try_from(props["Id"].clone()).expect("Id is a string")
}

/// What QEMU does with a helper not in its `id-list`: removes its rules.
async fn drop_helper(qemu: &Connection, name: &str) {
    for rule in rules(name) {
        call(qemu, BUS, BUS_PATH, BUS, "RemoveMatch", &(rule.as_str(),))
            .await
            .expect("RemoveMatch");
    }
}

/// The three rules QEMU 7.2's proxy for `name` adds.
fn rules(name: &str) -> [String; 3] {
    [
        format!("type='signal',sender='{name}',interface='{PROPERTIES}',member='PropertiesChanged',path='{VMSTATE_PATH}',arg0='{VMSTATE}'"),
        format!("type='signal',sender='{name}',interface='{VMSTATE}',path='{VMSTATE_PATH}'"),
        format!("type='signal',sender='{BUS}',interface='{BUS}',member='NameOwnerChanged',path='{BUS_PATH}',arg0='{name}'"),
    ]
}

async fn save(qemu: &Connection, name: &str) -> zbus::Result<Message> {
    call(qemu, name, VMSTATE_PATH, VMSTATE, "Save", &()).await
}

async fn load(qemu: &Connection, name: &str, data: &[u8]) -> zbus::Result<Message> {
    let data = serde_bytes::Bytes::new(data);
    call(qemu, name, VMSTATE_PATH, VMSTATE, "Load", &(data,)).await
}

fn saved_bytes(reply: zbus::Result<Message>) -> Vec<u8> {
    let reply = reply.expect("Save");
    let bytes: serde_bytes::ByteBuf = reply.body().deserialize().expect("ay");
    bytes.into_vec()
}

/// Replays every call of one section of the trace and checks every
/// answer against the recorded one.
async fn replay(qemu: &Connection, entries: &[Entry]) {
    let qemu_name = &entries[0].fields["sender"];
    let replies: HashMap<&str, &Entry> = entries
        .iter()
        .filter(|e| e.kind == "method return" || e.kind == "error")
        .map(|e| (e.fields["reply_serial"].as_str(), e))
        .collect();
    // The trace's helper names, and the front door's for the same helpers.
    let mut names: Vec<(String, String)> = Vec::new();
    let rename = |s: &str, names: &[(String, String)]| {
        let mut s = s.to_string();
        for (theirs, ours) in names {
            s = s.replace(&format!("'{theirs}'"), &format!("'{ours}'"));
            if s == *theirs {
                s = ours.clone();
            }
        }
        s
    };
    let mut calls = 0;
    for entry in entries.iter().filter(|e| e.kind == "method call") {
        assert_eq!(&entry.fields["sender"], qemu_name);
        let member = entry.fields["member"].as_str();
        if member == "Hello" {
            // zbus said it when connecting.
            assert!(qemu.unique_name().is_some(), "no name from Hello");
            continue;
        }
        let destination = rename(&entry.fields["destination"], &names);
        let (path, interface) = (&entry.fields["path"], &entry.fields["interface"]);
        let args: Vec<Value> = entry
            .values
            .iter()
            .map(|v| match v {
                Value::Str(s) => Value::Str(rename(s, &names)),
                other => other.clone(),
            })
            .collect();
        let result = match args.as_slice() {
            [] => call(qemu, &destination, path, interface, member, &()).await,
            [Value::Str(s)] => call(qemu, &destination, path, interface, member, &(s,)).await,
            [Value::Str(s), Value::U32(n)] => {
                call(qemu, &destination, path, interface, member, &(s, n)).await
            }
            [Value::Bytes(b)] => {
                let b = serde_bytes::Bytes::new(b);
                call(qemu, &destination, path, interface, member, &(b,)).await
            }
            other => panic!("unexpected arguments {other:?}"),
        };
        calls += 1;
        let recorded = replies[entry.fields["serial"].as_str()];
        let context = format!("{member} to {destination}");
        match recorded.kind.as_str() {
            "error" => assert_eq!(
                error_name(&result).as_deref(),
                Some(recorded.fields["error_name"].as_str()),
                "{context}"
            ),
            _ => {
                let reply = result.unwrap_or_else(|e| panic!("{context}: {e}"));
                check_reply(&reply, &recorded.values, member, &mut names, &context);
            }
        }
    }
    assert!(calls > 20, "only {calls} calls replayed");
}

/// Checks one return against the recorded values.
fn check_reply(
    reply: &Message,
    recorded: &[Value],
    member: &str,
    names: &mut Vec<(String, String)>,
    context: &str,
) {
    let body = reply.body();
    match recorded {
        [] => assert_eq!(body.signature().to_string(), "", "{context}"),
        [Value::Str(s)] => {
            let got: String = body.deserialize().expect("s");
            let expected = names
                .iter()
                .find(|(theirs, _)| theirs == s)
                .map_or(s.clone(), |(_, ours)| ours.clone());
            assert_eq!(got, expected, "{context}");
        }
        [Value::Strings(theirs)] => {
            let ours: Vec<String> = body.deserialize().expect("as");
            assert_eq!(ours.len(), theirs.len(), "{context}: {ours:?}");
            if member == "ListQueuedOwners" {
                names.clear();
                names.extend(theirs.iter().cloned().zip(ours));
            }
        }
        [Value::Dict(entries)] => {
            let props: HashMap<String, zbus::OwnedVariant> = body.deserialize().expect("a{sv}");
            let is_bus = entries.iter().any(|(k, _)| k == "Features");
            if is_bus {
                // The bus's own properties: QEMU does not read them.
                assert!(props.is_empty(), "{context}: {props:?}");
            } else {
                for (key, value) in entries {
                    let got = String::try_from(props[key].clone()).expect("a string");
                    assert_eq!(Some(got), value.clone(), "{context}");
                }
                assert_eq!(props.len(), entries.len(), "{context}");
            }
        }
        [Value::Bytes(bytes)] => {
            let got: serde_bytes::ByteBuf = body.deserialize().expect("ay");
            assert_eq!(&got.into_vec(), bytes, "{context}");
        }
        other => panic!("{context}: unexpected recorded reply {other:?}"),
    }
}

#[test]
fn qemu_7_2s_recorded_save_and_load_replay_call_for_call() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["idA", "idB"]);
        let a = Fake::new("idA", blob("idA"));
        let b = Fake::new("idB", blob("idB")).plain();
        let _tasks = [a.spawn_in(dir.path()), b.spawn_in(dir.path())];
        connected(&c).await;

        let source = qemu(&socket).await;
        replay(&source, &section("save")).await;
        assert_eq!((a.saves(), b.saves()), (1, 1), "each helper saved once");
        assert_eq!((a.loads(), b.loads()), (0, 0));
        drop(source);

        a.set_data(b"old".to_vec());
        b.set_data(b"old".to_vec());
        let destination = qemu(&socket).await;
        replay(&destination, &section("load")).await;
        assert_eq!(a.data(), blob("idA"));
        assert_eq!(b.data(), blob("idB"));
        assert_eq!((a.saves(), b.saves()), (1, 1), "the load saved nothing");
        assert_eq!((a.loads(), b.loads()), (1, 1));

        let status = c.qemu_status().expect("a front door");
        assert!(status.connected);
        assert_eq!(status.pid, Some(std::process::id()));
        let last_load = status.last_load.expect("the load is recorded");
        assert_eq!(last_load.helpers, ["idA", "idB"]);
        assert_eq!(last_load.bytes, 20);
        assert!(last_load.failures.is_empty());
        let last_save = status.last_save.expect("the save is recorded");
        assert_eq!(last_save.helpers, ["idA", "idB"]);
        c.shutdown().await;
    });
}

#[test]
fn qemus_first_save_saves_every_helper_it_is_about_to_save_at_once() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["a", "b"]);
        let a = Fake::new("a", b"A".to_vec()).save_does(Step::Held);
        let b = Fake::new("b", b"B".to_vec()).plain();
        let _tasks = [a.spawn_in(dir.path()), b.spawn_in(dir.path())];
        connected(&c).await;
        let qemu = qemu(&socket).await;
        let names = list(&qemu).await;
        for name in &names {
            discover(&qemu, name).await;
        }
        assert_eq!((a.saves(), b.saves()), (0, 0), "discovery saves nothing");
        // QEMU's Save on a waits for a, which is held: b is saved
        // meanwhile, before QEMU asks for it.
        let first = {
            let qemu = qemu.clone();
            let name = names[0].clone();
            rt::spawn(async move { save(&qemu, &name).await })
        };
        until("b is saved while a's Save is still held", || b.saves() == 1).await;
        assert_eq!(a.saves(), 1, "a's Save started");
        a.release();
        assert_eq!(saved_bytes(first.await), b"A");
        assert_eq!(saved_bytes(save(&qemu, &names[1]).await), b"B");
        assert_eq!((a.saves(), b.saves()), (1, 1), "each saved once");
        c.shutdown().await;
    });
}

#[test]
fn a_helper_qemu_drops_after_reading_its_id_is_never_saved() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["a", "b", "c"]);
        let helpers = [
            Fake::new("a", b"A".to_vec()),
            Fake::new("b", b"B".to_vec()).plain(),
            Fake::new("c", b"C".to_vec()),
        ];
        let _tasks: Vec<_> = helpers.iter().map(|h| h.spawn_in(dir.path())).collect();
        connected(&c).await;
        let qemu = qemu(&socket).await;
        let names = list(&qemu).await;
        assert_eq!(names.len(), 3);
        // QEMU with id-list=a,,c: it drops b right after reading its Id.
        for name in &names {
            let id = discover(&qemu, name).await;
            if id == "b" {
                drop_helper(&qemu, name).await;
            }
        }
        assert_eq!(saved_bytes(save(&qemu, &names[0]).await), b"A");
        assert_eq!(saved_bytes(save(&qemu, &names[2]).await), b"C");
        let saves: Vec<usize> = helpers.iter().map(|h| h.saves()).collect();
        assert_eq!(saves, [1, 0, 1], "b, outside QEMU's id-list, saw a Save");
        c.shutdown().await;
    });
}

#[test]
fn a_destinations_discovery_and_loads_save_nothing() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["a", "b"]);
        let a = Fake::new("a", b"old a".to_vec());
        let b = Fake::new("b", b"old b".to_vec()).plain();
        let _tasks = [a.spawn_in(dir.path()), b.spawn_in(dir.path())];
        connected(&c).await;
        let qemu = qemu(&socket).await;
        let names = list(&qemu).await;
        for name in &names {
            discover(&qemu, name).await;
        }
        load(&qemu, &names[0], b"new a").await.expect("Load a");
        load(&qemu, &names[1], b"new b").await.expect("Load b");
        for name in &names {
            drop_helper(&qemu, name).await;
        }
        assert_eq!((a.data(), b.data()), (b"new a".to_vec(), b"new b".to_vec()));
        assert_eq!((a.saves(), b.saves()), (0, 0), "a load made a helper save");
        c.shutdown().await;
    });
}

#[test]
fn a_failing_helper_fails_every_save_of_the_round_naming_it_and_the_cause() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["a", "b"]);
        let a = Fake::new("a", b"A".to_vec());
        let b = Fake::new("b", b"B".to_vec()).fail_save("disk on fire");
        let _tasks = [a.spawn_in(dir.path()), b.spawn_in(dir.path())];
        connected(&c).await;
        let qemu = qemu(&socket).await;
        let names = list(&qemu).await;
        for name in &names {
            discover(&qemu, name).await;
        }
        // All or nothing: a's state is withheld, so that QEMU writes no
        // entry a destination would load.
        let withheld = save(&qemu, &names[0]).await;
        let text = error_text(&withheld);
        assert!(text.contains("helper \"a\""), "{text}");
        assert!(
            text.contains("withheld from QEMU because helper \"b\" failed"),
            "{text}"
        );
        assert_eq!(a.saves(), 1, "a was saved");
        let failed = save(&qemu, &names[1]).await;
        assert_eq!(
            error_name(&failed).as_deref(),
            Some("org.dbusvmstate.Error.HelperFailed")
        );
        let text = error_text(&failed);
        assert!(text.contains("helper \"b\""), "{text}");
        assert!(text.contains("disk on fire"), "{text}");
        let status = c.qemu_status().unwrap();
        let round = status.last_save.expect("recorded");
        assert!(round.helpers.is_empty(), "{round:?}");
        assert_eq!(round.failures.len(), 2);
        assert!(round.failures[1].contains("disk on fire"), "{round:?}");
        c.shutdown().await;
    });
}

#[test]
fn a_state_over_qemus_limit_is_an_error_naming_the_helper_and_the_limit() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["big", "plainbig"]);
        let big = Fake::new("big", pattern((1 << 20) + 1, 1));
        let plain = Fake::new("plainbig", pattern((1 << 20) + 1, 2)).plain();
        let _tasks = [big.spawn_in(dir.path()), plain.spawn_in(dir.path())];
        connected(&c).await;
        let qemu = qemu(&socket).await;
        for name in list(&qemu).await {
            let id = discover(&qemu, &name).await;
            let failed = save(&qemu, &name).await;
            let text = error_text(&failed);
            assert!(text.contains(&format!("helper \"{id}\"")), "{text}");
            assert!(text.contains("QEMU's dbus-vmstate limit"), "{text}");
            assert!(text.contains("1048577"), "{text}");
        }
        c.shutdown().await;
    });
}

#[test]
fn a_missing_required_helper_is_waited_for_then_left_out_of_the_list() {
    run(async {
        let dir = tmpdir();
        let socket = dir.path().join("qemu.sock");
        let c = builder(dir.path(), &["a", "gone"])
            .connect_timeout(Duration::from_millis(300))
            .qemu_socket(&socket)
            .bind()
            .expect("bind");
        let a = Fake::new("a", b"A".to_vec());
        let _task = a.spawn_in(dir.path());
        until("a connects", || c.status()[0].connected).await;
        let qemu = qemu(&socket).await;
        let names = list(&qemu).await;
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(discover(&qemu, &names[0]).await, "a");
        // Calling the missing helper directly names it.
        let missing = save(&qemu, ":1.2").await;
        assert_eq!(
            error_name(&missing).as_deref(),
            Some("org.dbusvmstate.Error.NotConnected")
        );
        assert!(error_text(&missing).contains("helper \"gone\""));
        c.shutdown().await;
    });
}

#[test]
fn only_save_load_and_the_id_reach_a_helper() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["a"]);
        let a = Fake::new("a", b"A".to_vec());
        let _task = a.spawn_in(dir.path());
        connected(&c).await;
        let qemu = qemu(&socket).await;
        let name = list(&qemu).await.remove(0);
        let fd = std::fs::File::open("/dev/null").unwrap();
        let fd = zbus::Fd::from(std::os::fd::AsFd::as_fd(&fd));
        let refused = [
            (
                "the streaming extension",
                call(
                    &qemu,
                    &name,
                    VMSTATE_PATH,
                    "org.dbusvmstate.Stream1",
                    "SaveFd",
                    &(fd,),
                )
                .await,
                "org.freedesktop.DBus.Error.UnknownMethod",
            ),
            (
                "another object",
                call(&qemu, &name, "/org/other", VMSTATE, "Save", &()).await,
                "org.freedesktop.DBus.Error.UnknownObject",
            ),
            (
                "setting the Id",
                call(
                    &qemu,
                    &name,
                    VMSTATE_PATH,
                    PROPERTIES,
                    "Set",
                    &(VMSTATE, "Id", zbus::Variant::from("x")),
                )
                .await,
                "org.freedesktop.DBus.Error.PropertyReadOnly",
            ),
            (
                "another interface's properties",
                call(
                    &qemu,
                    &name,
                    VMSTATE_PATH,
                    PROPERTIES,
                    "GetAll",
                    &("org.other",),
                )
                .await,
                "org.freedesktop.DBus.Error.UnknownInterface",
            ),
            (
                "an unknown name",
                save(&qemu, ":1.99").await,
                "org.freedesktop.DBus.Error.ServiceUnknown",
            ),
            (
                "a well-known name",
                save(&qemu, VMSTATE).await,
                "org.freedesktop.DBus.Error.ServiceUnknown",
            ),
            (
                "an unknown bus method",
                call(&qemu, BUS, BUS_PATH, BUS, "RequestName", &(VMSTATE, 0u32)).await,
                "org.freedesktop.DBus.Error.UnknownMethod",
            ),
            (
                "activation",
                call(
                    &qemu,
                    BUS,
                    BUS_PATH,
                    BUS,
                    "StartServiceByName",
                    &(VMSTATE, 0u32),
                )
                .await,
                "org.freedesktop.DBus.Error.ServiceUnknown",
            ),
            (
                "a rule never added",
                call(
                    &qemu,
                    BUS,
                    BUS_PATH,
                    BUS,
                    "RemoveMatch",
                    &("type='signal'",),
                )
                .await,
                "org.freedesktop.DBus.Error.MatchRuleNotFound",
            ),
            (
                "a Load of the wrong type",
                call(&qemu, &name, VMSTATE_PATH, VMSTATE, "Load", &("text",)).await,
                "org.freedesktop.DBus.Error.InvalidArgs",
            ),
        ];
        for (what, result, expected) in &refused {
            assert_eq!(error_name(result).as_deref(), Some(*expected), "{what}");
        }
        assert_eq!(
            (a.saves(), a.loads()),
            (0, 0),
            "a refused call reached the helper"
        );
        // And the front door still works.
        assert_eq!(saved_bytes(save(&qemu, &name).await), b"A");
        c.shutdown().await;
    });
}

#[test]
fn a_save_from_elsewhere_waits_for_qemus_then_is_refused_as_busy() {
    run(async {
        let dir = tmpdir();
        let socket = dir.path().join("qemu.sock");
        let c = builder(dir.path(), &["a"])
            .connect_timeout(Duration::from_millis(300))
            .qemu_socket(&socket)
            .bind()
            .expect("bind");
        let c = Arc::new(c);
        let a = Fake::new("a", b"A".to_vec()).save_does(Step::Held);
        let _task = a.spawn_in(dir.path());
        connected(&c).await;
        let qemu = qemu(&socket).await;
        let name = list(&qemu).await.remove(0);
        discover(&qemu, &name).await;
        let qemus = {
            let (qemu, name) = (qemu.clone(), name.clone());
            rt::spawn(async move { save(&qemu, &name).await })
        };
        until("QEMU's save reaches the helper", || a.saves() == 1).await;
        let err = c
            .save(Vec::new())
            .await
            .expect_err("saved during QEMU's save");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        assert!(err.to_string().contains("a save for QEMU"), "{err}");
        a.release();
        assert_eq!(saved_bytes(qemus.await), b"A");
        // With QEMU's save over, the coordinator saves again.
        a.set_save(Step::Whole);
        c.save(Vec::new()).await.expect("save after QEMU's");
        c.shutdown().await;
    });
}

#[test]
fn a_newer_qemu_connection_replaces_the_older() {
    run(async {
        let dir = tmpdir();
        let (c, socket) = front_door(dir.path(), &["a"]);
        let a = Fake::new("a", b"A".to_vec());
        let _task = a.spawn_in(dir.path());
        connected(&c).await;
        let old = qemu(&socket).await;
        let new = qemu(&socket).await;
        within("the older connection closes", old.closed()).await;
        let name = list(&new).await.remove(0);
        assert_eq!(saved_bytes(save(&new, &name).await), b"A");
        assert!(c.qemu_status().unwrap().connected);
        c.shutdown().await;
    });
}

#[test]
fn a_qemu_of_another_uid_is_turned_away_before_the_handshake() {
    run(async {
        let dir = tmpdir();
        let socket = dir.path().join("qemu.sock");
        let stranger = euid() + 1;
        let c = builder(dir.path(), &["a"])
            .allow_uid(stranger)
            .qemu_socket(&socket)
            .bind()
            .expect("bind");
        let stream = UnixStream::connect(&socket).expect("connect");
        let refused = zbus::connection::Builder::unix_stream(stream).build().await;
        assert!(refused.is_err(), "the handshake went through");
        until("the rejection is recorded", || {
            c.qemu_status().unwrap().last_rejection.is_some()
        })
        .await;
        let why = c.qemu_status().unwrap().last_rejection.unwrap();
        assert!(
            why.contains(&format!("peer uid {} is not allowed", euid())),
            "{why}"
        );
        assert!(!c.qemu_status().unwrap().connected);
        c.shutdown().await;
    });
}
