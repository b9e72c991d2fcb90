//! The pieces of a QEMU migration test: the helpers of each kind, the
//! coordinator or bus each side puts in front of them, and what QEMU wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dbus_vmstate::helper;
use dbus_vmstate::iface;
use dbus_vmstate::stream::{self, Record};

use crate::interop::{pattern, python_helper, Process};
use crate::util::process::{run_bin, Serve};
use crate::util::qemu::{self, Bus, Config, Qemu};
use crate::util::{require, rt, sock, within, Fake, Requirement};

/// Starts QEMU, failing the test with its stderr if it does not come up.
pub fn start_qemu(dir: &Path, name: &str, config: &Config) -> Qemu {
    Qemu::start(dir, name, config).unwrap_or_else(|e| panic!("{e}"))
}

/// The records of the `dbus-vmstate` section in QEMU's migration file,
/// sorted by Id.
pub fn saved_by_qemu(migration: &Path) -> Vec<Record> {
    let bytes = std::fs::read(migration).expect("read the migration file");
    let mut records = stream::qemu::migration::locate(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", migration.display()))
        .decoded
        .records;
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records
}

/// The records `ids` hold, state `pattern(size, seed)`, sorted by Id.
pub fn expected(helpers: &[(&str, usize)], seed: u8) -> Vec<Record> {
    let mut records: Vec<Record> = helpers
        .iter()
        .map(|&(id, size)| Record::new(id, pattern(size, seed)))
        .collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records
}

/// Compares records by Id and length first, so a mismatch does not print
/// a megabyte.
pub fn assert_records(got: &[Record], want: &[Record], what: &str) {
    let shape = |r: &[Record]| {
        r.iter()
            .map(|r| (r.id.clone(), r.data.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(got), shape(want), "{what}: Ids and sizes");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.data == w.data,
            "{what}: helper {:?} holds other bytes",
            g.id
        );
    }
}

/// The kinds of helper a test migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This crate's library ([`Fake`]), in this process.
    Library,
    /// GDBus (PyGObject), peer to peer.
    GdbusP2p,
    /// GDBus, speaking to its socket as to a bus (`Hello`,
    /// `RequestName`), as helpers written for QEMU's design do.
    GdbusBus,
}

impl Kind {
    /// Whether the machine can run this kind (prints the skip if not).
    pub fn available(self) -> bool {
        match self {
            Kind::Library => true,
            Kind::GdbusP2p | Kind::GdbusBus => require(Requirement::PythonDbus),
        }
    }
}

/// Running helpers of one kind; stopped when dropped.
pub struct Helpers {
    /// The library helpers, to look into (empty for other kinds).
    pub fakes: Vec<Arc<Fake>>,
    _tasks: Vec<rt::Task<dbus_vmstate::Result<()>>>,
    _procs: Vec<Process>,
}

impl Helpers {
    /// Helpers `(id, size)` of `kind` holding `pattern(size, seed)`, each
    /// connecting to `dir/ID.sock`.
    pub fn start(kind: Kind, dir: &Path, helpers: &[(&str, usize)], seed: u8) -> Helpers {
        let mut started = Helpers {
            fakes: Vec::new(),
            _tasks: Vec::new(),
            _procs: Vec::new(),
        };
        for &(id, size) in helpers {
            let address = qemu::address(&sock(dir, id));
            match kind {
                Kind::Library => {
                    let fake = Fake::new(id, pattern(size, seed));
                    started._tasks.push(fake.spawn_in(dir));
                    started.fakes.push(fake);
                }
                Kind::GdbusP2p | Kind::GdbusBus => {
                    let mut cmd = python_helper("gdbus_helper.py");
                    cmd.args(["--address", &address, "--id", id]).args([
                        "--size",
                        &size.to_string(),
                        "--seed",
                        &seed.to_string(),
                    ]);
                    if kind == Kind::GdbusBus {
                        cmd.args(["--bus", "--export-after-name"]);
                    }
                    started
                        ._procs
                        .push(Process::spawn(&format!("{kind:?} helper {id}"), cmd));
                }
            }
        }
        started
    }

    /// Library helpers `fakes`, each connecting to `dir/ID.sock`.
    pub fn library(dir: &Path, fakes: &[&Arc<Fake>]) -> Helpers {
        Helpers {
            fakes: fakes.iter().map(|f| Arc::clone(f)).collect(),
            _tasks: fakes.iter().map(|f| f.spawn_in(dir)).collect(),
            _procs: Vec::new(),
        }
    }
}

/// One side of a migration without a bus daemon: a `dbus-vmstate serve`
/// with one socket per helper and one for QEMU (`--qemu-socket`).
pub struct FrontDoor {
    pub serve: Serve,
    /// The helpers' socket directory.
    pub dir: PathBuf,
    /// The socket QEMU connects to as its bus.
    pub qemu_socket: PathBuf,
}

impl FrontDoor {
    /// `serve --socket-dir ROOT/NAME --id-list IDS --qemu-socket
    /// ROOT/NAME-qemu.sock` plus `extra`, once it is ready.
    pub fn start(root: &Path, name: &str, ids: &[&str], extra: &[&str]) -> FrontDoor {
        let dir = root.join(name);
        let qemu_socket = root.join(format!("{name}-qemu.sock"));
        let list = ids.join(",");
        let mut args = vec!["--id-list", &list, "--qemu-socket"];
        let socket_arg = qemu_socket.to_str().expect("UTF-8 path").to_string();
        args.push(&socket_arg);
        args.extend_from_slice(extra);
        let serve = Serve::start(&dir, &args);
        FrontDoor {
            serve,
            dir,
            qemu_socket,
        }
    }

    /// The address QEMU's `dbus-vmstate` object is given.
    pub fn address(&self) -> String {
        qemu::address(&self.qemu_socket)
    }

    /// Waits until `serve` reports each of `ids` connected.
    pub fn wait_connected(&self, ids: &[&str]) {
        crate::util::process::wait_until("the helpers to connect to serve", || {
            let out = run_bin(["status", "--control", &self.serve.control_arg(), "--json"]);
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            let helpers = doc["helpers"].as_array().cloned().unwrap_or_default();
            ids.iter().all(|id| {
                helpers
                    .iter()
                    .any(|h| h["id"] == *id && h["connected"] == true)
            })
        });
    }

    /// What the helpers hold now, saved through `serve`'s control socket,
    /// sorted by Id.
    pub fn held(&self) -> Vec<Record> {
        let file = self.dir.with_extension("held.vmstate");
        let out = run_bin([
            "save",
            "--control",
            &self.serve.control_arg(),
            "--output",
            file.to_str().expect("UTF-8 path"),
        ]);
        assert!(
            out.status.success(),
            "save through the control socket: {}\nserve log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.serve.log()
        );
        let (_, mut records) = stream::read_records(
            std::fs::File::open(&file).expect("open the saved stream"),
            Default::default(),
        )
        .expect("the saved stream decodes");
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }
}

/// A private `dbus-daemon` at `ROOT/NAME-bus.sock`, failing the test if it
/// does not start.
pub fn start_bus(root: &Path, name: &str) -> Bus {
    Bus::start(&root.join(format!("{name}-bus.sock"))).unwrap_or_else(|e| panic!("{e}"))
}

/// Library helpers `fakes` on `bus`, each owning (or queued for)
/// `org.qemu.VMState1` as QEMU expects; returns once all are queued.
pub fn serve_on_bus(bus: &Bus, fakes: &[&Arc<Fake>]) -> Vec<rt::Task<dbus_vmstate::Result<()>>> {
    let tasks = fakes
        .iter()
        .map(|&fake| {
            let address = bus.address.clone();
            let state: Arc<dyn helper::State> = fake.clone();
            let options = fake.options();
            rt::spawn(async move { helper::serve_bus(&address, state, options).await })
        })
        .collect();
    let address = bus.address.clone();
    let n = fakes.len();
    rt::block_on(within(
        "the helpers to queue for org.qemu.VMState1",
        async {
            let conn = zbus::connection::Builder::address(address.as_str())
                .build()
                .await
                .expect("connect to the bus");
            while queued_owners(&conn).await.len() < n {
                rt::sleep(Duration::from_millis(5)).await;
            }
        },
    ));
    tasks
}

/// The queued owners of `org.qemu.VMState1`, as QEMU lists them.
async fn queued_owners(conn: &zbus::Connection) -> Vec<String> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "ListQueuedOwners",
            &(iface::BUS_NAME,),
        )
        .await;
    match reply {
        Ok(m) => m.body().deserialize().unwrap_or_default(),
        // No owner yet.
        Err(_) => Vec::new(),
    }
}
