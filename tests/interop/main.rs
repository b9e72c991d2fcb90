//! Helpers and coordinators written on other D-Bus implementations: GLib's
//! GDBus (PyGObject), libdbus (dbus-python) and systemd's sd-bus (C), each
//! talking peer to peer with this crate, and bus-style helpers that expect a
//! message bus on their socket.
//!
//! The helper programs live in `tests/interop/`; the Python ones run under
//! `/usr/bin/python3` (python3-gi, gir1.2-glib-2.0, python3-dbus), the C
//! one is compiled here with `cc` against libsystemd-dev.

#[path = "../util/mod.rs"]
mod util;

mod auth;
mod bus_driver;
mod support;

use std::process::Command;

use dbus_vmstate::stream::{self, Record};
use support::*;
use util::{builder, require, rt, run, sock, tmpdir, until, Raw, Requirement};

/// The sizes every stack must move: empty, just over a page, and 16 MiB.
const SIZES: [(&str, usize); 3] = [("empty", 0), ("page", 4097), ("big", 16 << 20)];

/// Seed of the source helpers' state.
const SEED: u8 = 0x2b;

/// Starts one helper of a stack: `(address, id, size, seed)` to a command.
type Launch = fn(&str, &str, usize, u8) -> Command;

fn address(dir: &std::path::Path, id: &str) -> String {
    format!("unix:path={}", sock(dir, id).display())
}

async fn wait_all(procs: Vec<Process>) {
    for p in procs {
        rt::spawn_blocking(move || p.expect_success()).await;
    }
}

/// Saves helpers of one stack holding 0 bytes, 4097 bytes and 16 MiB,
/// checks every byte of the stream, loads it into fresh, empty helpers of
/// the same stack and saves those again to check what they received.
fn migrate(stack: &str, launch: Launch) {
    let ids: Vec<&str> = SIZES.iter().map(|(id, _)| *id).collect();
    run(async move {
        // Source.
        let dir = tmpdir();
        let c = builder(dir.path(), &ids).bind().unwrap();
        let procs: Vec<Process> = SIZES
            .iter()
            .map(|&(id, size)| {
                let cmd = launch(&address(dir.path(), id), id, size, SEED);
                Process::spawn(&format!("{stack} helper {id}"), cmd)
            })
            .collect();
        let file = dir.path().join("state.vmstate");
        let report = c
            .save_to_path(&file)
            .await
            .unwrap_or_else(|e| panic!("{stack}: save failed: {e}"));
        for &(id, size) in &SIZES {
            let h = report.helpers.iter().find(|h| h.id == id).unwrap();
            assert_eq!(h.transfer.bytes, size as u64, "{stack} {id}");
        }
        let (_, records) =
            stream::read_records(std::fs::File::open(&file).unwrap(), Default::default()).unwrap();
        for &(id, size) in &SIZES {
            let r = records.iter().find(|r| r.id == id).unwrap();
            assert!(
                r.data == pattern(size, SEED),
                "{stack}: {id} saved other bytes"
            );
        }
        c.shutdown().await;
        wait_all(procs).await;

        // Destination: empty helpers get the stream, then report it back.
        let dir2 = tmpdir();
        let c = builder(dir2.path(), &ids).bind().unwrap();
        let procs: Vec<Process> = SIZES
            .iter()
            .map(|&(id, _)| {
                let cmd = launch(&address(dir2.path(), id), id, 0, 0);
                Process::spawn(&format!("{stack} helper {id}"), cmd)
            })
            .collect();
        c.load_from_path(&file, None)
            .await
            .unwrap_or_else(|e| panic!("{stack}: load failed: {e}"));
        let (out, _) = c.save(Vec::new()).await.unwrap();
        let (_, again) = stream::read_records(&out[..], Default::default()).unwrap();
        for &(id, size) in &SIZES {
            let r: &Record = again.iter().find(|r| r.id == id).unwrap();
            assert!(
                r.data == pattern(size, SEED),
                "{stack}: {id} holds other bytes after Load"
            );
        }
        c.shutdown().await;
        wait_all(procs).await;
    });
}

fn gdbus_p2p(address: &str, id: &str, size: usize, seed: u8) -> Command {
    let mut cmd = python_helper("gdbus_helper.py");
    cmd.args(["--address", address, "--id", id]).args([
        "--size",
        &size.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    cmd
}

#[test]
fn gdbus_p2p_helper_saves_and_loads() {
    if !require(Requirement::PythonDbus) {
        return;
    }
    migrate("GDBus", gdbus_p2p);
}

fn dbus_python_p2p(address: &str, id: &str, size: usize, seed: u8) -> Command {
    let mut cmd = python_helper("dbuspy_helper.py");
    cmd.args(["--address", address, "--id", id]).args([
        "--size",
        &size.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    cmd
}

#[test]
fn dbus_python_p2p_helper_saves_and_loads() {
    if !require(Requirement::PythonDbus) {
        return;
    }
    migrate("dbus-python", dbus_python_p2p);
}

fn sdbus_p2p(address: &str, id: &str, size: usize, seed: u8) -> Command {
    let mut cmd = sdbus_helper();
    cmd.args([address, id, &size.to_string(), &seed.to_string()]);
    cmd
}

#[test]
fn sdbus_p2p_helper_saves_and_loads() {
    if !require(Requirement::SdBus) {
        return;
    }
    migrate("sd-bus", sdbus_p2p);
}

/// Exports its object only once it owns org.qemu.VMState1.
fn gdbus_bus(address: &str, id: &str, size: usize, seed: u8) -> Command {
    let mut cmd = gdbus_p2p(address, id, size, seed);
    cmd.args(["--bus", "--export-after-name"]);
    cmd
}

#[test]
fn gdbus_bus_style_helper_saves_and_loads() {
    if !require(Requirement::PythonDbus) {
        return;
    }
    migrate("GDBus bus-style", gdbus_bus);
}

fn dbus_python_bus(address: &str, id: &str, size: usize, seed: u8) -> Command {
    let mut cmd = dbus_python_p2p(address, id, size, seed);
    cmd.arg("--bus");
    cmd
}

#[test]
fn dbus_python_bus_style_helper_saves_and_loads() {
    if !require(Requirement::PythonDbus) {
        return;
    }
    migrate("dbus-python bus-style", dbus_python_bus);
}

fn sdbus_bus(address: &str, id: &str, size: usize, seed: u8) -> Command {
    let mut cmd = sdbus_p2p(address, id, size, seed);
    cmd.arg("bus");
    cmd
}

#[test]
fn sdbus_bus_style_helper_saves_and_loads() {
    if !require(Requirement::SdBus) {
        return;
    }
    migrate("sd-bus bus-style", sdbus_bus);
}

/// A zbus helper that connects as to a bus (`Hello`, `AddMatch`,
/// `RequestName`), saved and loaded at every size, in process. The
/// coordinator's calls carry the unique name it handed out as their
/// destination.
#[test]
fn zbus_bus_style_helper_saves_and_loads() {
    let ids: Vec<&str> = SIZES.iter().map(|(id, _)| *id).collect();
    run(async move {
        let dir = tmpdir();
        let c = builder(dir.path(), &ids).bind().unwrap();
        let mut helpers = Vec::new();
        for &(id, size) in &SIZES {
            let seen = Raw::new(id).with_data(pattern(size, SEED));
            let conn = seen
                .connect_bus_style(&address(dir.path(), id))
                .await
                .unwrap_or_else(|e| panic!("zbus bus-style helper {id}: {e}"));
            helpers.push((id, size, seen, conn));
        }
        let (saved, _) = c.save(Vec::new()).await.unwrap();
        for (_, _, seen, _) in &helpers {
            seen.set_data(Vec::new());
        }
        c.load(std::io::Cursor::new(saved), None).await.unwrap();
        for (id, size, seen, conn) in &helpers {
            assert!(
                seen.data() == pattern(*size, SEED),
                "zbus bus-style helper {id} holds other bytes after Load"
            );
            let unique = conn.unique_name().expect("a unique name from Hello");
            assert!(unique.starts_with(":1."), "{unique}");
            assert_eq!(seen.save_destinations(), vec![Some(unique.to_string())]);
        }
        c.shutdown().await;
    });
}

/// A peer-to-peer helper gets calls with no destination field, as before.
#[test]
fn p2p_helper_gets_calls_without_destination() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["p"]).bind().unwrap();
        let seen = Raw::new("p").with_data(vec![5; 10]);
        let _conn = seen.connect(&sock(dir.path(), "p")).await;
        c.save(Vec::new()).await.unwrap();
        assert_eq!(seen.save_destinations(), vec![None]);
        c.shutdown().await;
    });
}

/// The other direction: this crate's helper (the `dbus-vmstate helper`
/// binary) serving a coordinator written on GDBus, a `Gio.DBusServer`.
#[test]
fn helper_serves_a_gdbus_coordinator() {
    if !require(Requirement::PythonDbus) {
        return;
    }
    let dir = tmpdir();
    let socket = sock(dir.path(), "fh");
    let state = dir.path().join("fh.state");
    std::fs::write(&state, pattern(4097, SEED)).unwrap();

    let mut coordinator = python_helper("gdbus_coordinator.py");
    coordinator
        .args(["--socket", socket.to_str().unwrap(), "--id", "fh"])
        .args(["--size", "4097", "--seed", &SEED.to_string()])
        .args(["--final-size", "65536", "--final-seed", "9"]);
    let coordinator = Process::spawn("GDBus coordinator", coordinator);

    let mut helper = Command::new(env!("CARGO_BIN_EXE_dbus-vmstate"));
    helper
        .args(["helper", "--socket", socket.to_str().unwrap(), "--id", "fh"])
        .arg("--state-file")
        .arg(&state);
    let helper = Process::spawn("dbus-vmstate helper", helper);

    let said = coordinator.expect_success();
    for step in [
        "initial Save: 4097 bytes match",
        "Save after Load of 16777216 bytes: 16777216 bytes match",
        "Save after Load of 0 bytes: 0 bytes match",
    ] {
        assert!(
            said.contains(step),
            "GDBus coordinator did not report {step:?}:\n{said}"
        );
    }
    helper.expect_success();
    assert!(
        std::fs::read(&state).unwrap() == pattern(65536, 9),
        "the state file does not hold what the GDBus coordinator loaded last"
    );
}

/// QEMU to dbus-vmstate with unmodified helpers: the payload QEMU 7.2
/// wrote loads into bus-style GDBus helpers (as QEMU's own dbus-vmstate
/// test helpers are written) on their per-helper sockets.
#[test]
fn qemu_payload_loads_into_bus_style_gdbus_helpers() {
    if !require(Requirement::PythonDbus) {
        return;
    }
    let vector = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/qemu-7.2-two-helpers.payload");
    run(async move {
        let dir = tmpdir();
        let c = builder(dir.path(), &["idA", "idB"]).bind().unwrap();
        let procs: Vec<Process> = ["idA", "idB"]
            .iter()
            .map(|id| Process::spawn(id, gdbus_bus(&address(dir.path(), id), id, 0, 0)))
            .collect();
        let report = c.load_from_path(&vector, None).await.unwrap();
        assert_eq!(report.format, stream::Format::Qemu);
        let (out, _) = c.save(Vec::new()).await.unwrap();
        let (_, mut records) = stream::read_records(&out[..], Default::default()).unwrap();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            records,
            vec![
                Record::new("idA", b"I'am\0idA!\0".to_vec()),
                Record::new("idB", b"I'am\0idB!\0".to_vec()),
            ]
        );
        c.shutdown().await;
        wait_all(procs).await;
    });
}

/// A bus-style helper is held to its socket's Id like any other, and one
/// that never exports its object is turned away with the reason.
#[test]
fn bus_style_helpers_are_checked_like_any_other() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a", "quiet"])
            // Long enough for several Id attempts even on a loaded machine,
            // so the quiet helper's last answer is UnknownObject, not silence.
            .handshake_timeout(std::time::Duration::from_secs(3))
            .bind()
            .unwrap();
        // The coordinator may close either before its RequestName is
        // answered: what counts is the reason it records.
        let _wrong = Raw::new("b")
            .with_data(vec![1])
            .connect_bus_style(&address(dir.path(), "a"))
            .await;
        // Its object at the wrong path: reading its Id keeps failing with
        // UnknownObject.
        let _quiet = Raw::new("quiet")
            .at_path("/elsewhere")
            .connect_bus_style(&address(dir.path(), "quiet"))
            .await;
        let reasons = |c: &dbus_vmstate::coordinator::Coordinator| {
            c.status()
                .into_iter()
                .map(|s| s.last_rejection.unwrap_or_default())
                .collect::<Vec<_>>()
        };
        until("both helpers to be turned away", || {
            reasons(&c).iter().all(|r| !r.is_empty())
        })
        .await;
        let why = reasons(&c);
        assert!(why[0].contains(r#"it claims Id "b""#), "{why:?}");
        assert!(why[1].contains("UnknownObject"), "{why:?}");
        assert!(c.status().iter().all(|s| !s.connected));
        c.shutdown().await;
    });
}
