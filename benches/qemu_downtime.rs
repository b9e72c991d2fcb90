//! The pause a VM's helpers add to a migration, as QEMU itself reports
//! it: the `downtime` of `query-migrate` after migrating a `-M none` QEMU
//! with a `dbus-vmstate` object to `exec:cat > /dev/null`, the median of
//! several runs (`--runs N`, default 7), for the same helpers
//!
//! - behind a private `dbus-daemon` (QEMU's design: helpers own
//!   `org.qemu.VMState1` on the bus, QEMU calls them one after another),
//! - behind `dbus-vmstate serve --qemu-socket` (the front door: QEMU takes
//!   that socket for its bus, the helpers connect peer to peer to their
//!   own sockets, and the coordinator saves them all at once).
//!
//! The helpers are the same code on both sides (this crate's library,
//! each in its own process, `helper::serve_bus` or `helper::serve`), with
//! the same state and the same `Save` delay. Cases: 1 and 16 helpers of
//! 4 KiB, and 4 helpers whose `Save` takes 100 ms. Both sides are set up
//! at once and migrate in turn, one run each per round, and the table
//! gives the ratio of their medians.
//!
//! Run with `cargo bench --bench qemu_downtime` (`-- --runs 15` for more
//! runs, `-- --case 16` for the cases whose name holds "16"); skips (with a message) without `qemu-system-x86_64` or
//! `dbus-daemon`. Run as a test (`cargo test --all-targets`), it only
//! says how to run it.

mod common;
#[path = "../tests/util/qemu.rs"]
mod qemu;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use dbus_vmstate::helper::{self, BoxError, SharedBytes, State};
use dbus_vmstate::iface;

use common::{rt, spawn_child, tmpdir, BenchState, Children, KIB, ROLE};
use qemu::{Bus, Config, Qemu};

/// The role of a helper child of this bench.
const HELPER_ROLE: &str = "qemu-helper";

/// How long a helper or `serve` may take to come up.
const READY: Duration = Duration::from_secs(30);

/// One row of the table.
struct Case {
    name: &'static str,
    helpers: usize,
    size: usize,
    save_delay: Duration,
    /// The front door's downtime over the bus's at most this.
    target: Option<f64>,
}

const CASES: [Case; 3] = [
    Case {
        name: "1 x 4 KiB",
        helpers: 1,
        size: 4 * KIB,
        save_delay: Duration::ZERO,
        target: None,
    },
    Case {
        name: "16 x 4 KiB",
        helpers: 16,
        size: 4 * KIB,
        save_delay: Duration::ZERO,
        target: Some(0.5),
    },
    Case {
        name: "4 x 100 ms Save",
        helpers: 4,
        size: 4 * KIB,
        save_delay: Duration::from_millis(100),
        target: Some(0.4),
    },
];

/// A bench helper's state whose every `Save` first sleeps.
struct Slow {
    inner: Arc<BenchState>,
    delay: Duration,
}

impl State for Slow {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        std::thread::sleep(self.delay);
        self.inner.save()
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        self.inner.load(data)
    }

    fn save_to(&self, out: &mut dyn std::io::Write) -> Result<(), BoxError> {
        std::thread::sleep(self.delay);
        self.inner.save_to(out)
    }

    fn load_from(&self, input: &mut dyn std::io::Read) -> Result<(), BoxError> {
        self.inner.load_from(input)
    }

    fn save_shared(&self) -> Result<SharedBytes, BoxError> {
        std::thread::sleep(self.delay);
        self.inner.save_shared()
    }
}

/// `qemu-helper SOCKET_OR_BUS ID SIZE DELAY_MS bus|p2p`: the library's
/// default options, on a bus or peer to peer.
fn helper_role(args: &[String]) -> Result<(), BoxError> {
    let [target, id, size, delay_ms, how] = args else {
        return Err(format!("bad arguments {args:?}").into());
    };
    let state = Arc::new(Slow {
        inner: BenchState::new(id, size.parse()?),
        delay: Duration::from_millis(delay_ms.parse()?),
    });
    let options = helper::Options::default().connect_timeout(READY);
    match how.as_str() {
        "bus" => rt::block_on(helper::serve_bus(target, state, options))?,
        _ => helper::serve_blocking(target, state, options)?,
    }
    Ok(())
}

/// The helper children of `case`, reaching `target(id)`.
fn helpers(case: &Case, how: &str, target: impl Fn(&str) -> String) -> Children {
    Children(
        ids(case)
            .iter()
            .map(|id| {
                let args = [
                    target(id),
                    id.clone(),
                    case.size.to_string(),
                    case.save_delay.as_millis().to_string(),
                    how.to_string(),
                ];
                spawn_child(HELPER_ROLE, &args)
            })
            .collect(),
    )
}

fn ids(case: &Case) -> Vec<String> {
    (0..case.helpers).map(|i| format!("h{i}")).collect()
}

/// Waits until `n` helpers queue for `org.qemu.VMState1` on the bus.
fn wait_queued(address: &str, n: usize) -> Result<(), String> {
    rt::block_on(async {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(|e| format!("connect to the bus: {e}"))?;
        let started = Instant::now();
        loop {
            let reply = conn
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "ListQueuedOwners",
                    &(iface::BUS_NAME,),
                )
                .await;
            let owners: Vec<String> = reply
                .ok()
                .and_then(|m| m.body().deserialize().ok())
                .unwrap_or_default();
            if owners.len() >= n {
                return Ok(());
            }
            if started.elapsed() > READY {
                return Err(format!("{} of {n} helpers on the bus", owners.len()));
            }
            rt::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// A `dbus-vmstate serve --qemu-socket`, killed when dropped.
struct FrontDoor {
    child: Child,
    control: String,
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FrontDoor {
    /// Starts one for `ids` in `dir`, QEMU's socket at `qemu_socket`, and
    /// waits for its ready line.
    fn start(dir: &Path, ids: &[String], qemu_socket: &Path) -> Result<FrontDoor, String> {
        let log = dir.with_extension("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbus-vmstate"))
            .arg("serve")
            .arg("--socket-dir")
            .arg(dir)
            .arg("--id-list")
            .arg(ids.join(","))
            .arg("--qemu-socket")
            .arg(qemu_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start dbus-vmstate serve: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let door = FrontDoor {
            child,
            control: dir.join("control.sock").display().to_string(),
        };
        match rx.recv_timeout(READY) {
            Ok(line) if line.starts_with("ready: ") => Ok(door),
            _ => {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                Err(format!(
                    "serve --qemu-socket did not get ready: {}",
                    said.trim()
                ))
            }
        }
    }

    /// Waits until `status` reports every helper connected.
    fn wait_connected(&self, n: usize) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_dbus-vmstate"))
                .args(["status", "--json", "--control", &self.control])
                .stderr(Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let connected = doc["helpers"]
                .as_array()
                .map_or(0, |h| h.iter().filter(|h| h["connected"] == true).count());
            if connected >= n {
                return Ok(());
            }
            if started.elapsed() > READY {
                return Err(format!("{connected} of {n} helpers connected to serve"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One side of a case, set up: QEMU, its helpers and what is between
/// them (dropped in this order).
struct Side {
    qemu: Qemu,
    _helpers: Children,
    _door: Option<FrontDoor>,
    _bus: Option<Bus>,
    _dir: tempfile::TempDir,
}

impl Side {
    /// The case's helpers on a private `dbus-daemon`, and QEMU on it.
    fn bus(case: &Case) -> Result<Side, String> {
        let dir = tmpdir();
        let bus = Bus::start(&dir.path().join("bus.sock"))?;
        let helpers = helpers(case, "bus", |_| bus.address.clone());
        wait_queued(&bus.address, case.helpers)?;
        let ids = ids(case);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let qemu = Qemu::start(dir.path(), "bus", &Config::new(&bus.address, &ids))?;
        Ok(Side {
            qemu,
            _helpers: helpers,
            _door: None,
            _bus: Some(bus),
            _dir: dir,
        })
    }

    /// The case's helpers behind `serve --qemu-socket`, and QEMU on its
    /// QEMU socket.
    fn front_door(case: &Case) -> Result<Side, String> {
        let tmp = tmpdir();
        let dir = tmp.path().join("s");
        let qemu_socket = tmp.path().join("qemu.sock");
        let ids = ids(case);
        let door = FrontDoor::start(&dir, &ids, &qemu_socket)?;
        let helpers = helpers(case, "p2p", |id| {
            dir.join(format!("{id}.sock")).display().to_string()
        });
        door.wait_connected(case.helpers)?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let address = qemu::address(&qemu_socket);
        let qemu = Qemu::start(tmp.path(), "door", &Config::new(&address, &ids))?;
        Ok(Side {
            qemu,
            _helpers: helpers,
            _door: Some(door),
            _bus: None,
            _dir: tmp,
        })
    }

    /// One migration to /dev/null: QEMU's `downtime`, in ms. Leaves QEMU
    /// running, ready for the next.
    fn downtime(&mut self) -> Result<f64, String> {
        let outcome = self.qemu.migrate("exec:cat > /dev/null");
        if !outcome.completed() {
            return Err(format!(
                "migration {outcome:?}: {}",
                self.qemu.stderr().trim()
            ));
        }
        let downtime = outcome
            .downtime_ms
            .ok_or_else(|| format!("no downtime reported: {outcome:?}"))?;
        self.qemu
            .resume()
            .map_err(|e| format!("cont: {e}; QEMU stderr: {}", self.qemu.stderr().trim()))?;
        Ok(downtime as f64)
    }
}

/// The median downtime of each side over `runs` migrations, taken in
/// turn (one on each side per round, after a warm-up round), so that both
/// see the same machine: on a shared one, the load swings within seconds.
fn measure(case: &Case, runs: usize) -> [Result<f64, String>; 2] {
    let mut sides = [Side::bus(case), Side::front_door(case)];
    let mut times: [Vec<f64>; 2] = Default::default();
    for round in 0..=runs {
        for (side, times) in sides.iter_mut().zip(times.iter_mut()) {
            let Ok(s) = side else { continue };
            match s.downtime() {
                Ok(t) if round > 0 => times.push(t),
                Ok(_) => {}
                Err(e) => *side = Err(e),
            }
        }
    }
    let mut out = sides.map(|s| s.map(|_| 0.0));
    for (r, mut times) in out.iter_mut().zip(times) {
        if let Ok(median) = r {
            times.sort_by(f64::total_cmp);
            *median = times[times.len() / 2];
        }
    }
    out
}

/// The value after `name` on the command line (cargo adds `--bench`).
fn option(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

/// `--runs N`, default 7.
fn runs() -> usize {
    option("--runs")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(7)
}

fn present(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ms(r: &Result<f64, String>) -> String {
    r.as_ref().map_or("-".to_string(), |t| format!("{t:.0}"))
}

fn main() {
    if std::env::var(ROLE).as_deref() == Ok(HELPER_ROLE) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Err(e) = helper_role(&args) {
            eprintln!("bench helper: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, and must not start a benchmark of minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("qemu_downtime: a benchmark; run it with `cargo bench --bench qemu_downtime`");
        return;
    }
    for (program, package) in [
        (
            qemu::PROGRAM,
            "qemu-system-x86 (apt-get install qemu-system-x86)",
        ),
        ("dbus-daemon", "dbus-daemon (apt-get install dbus-daemon)"),
    ] {
        if !present(program, "--version") {
            eprintln!("qemu_downtime skipped: needs {package}");
            return;
        }
    }
    let runs = runs();
    println!("QEMU downtime (query-migrate, median of {runs} runs, migration to /dev/null)");
    println!(
        "{:<17} {:>15} {:>14} {:>7}  target",
        "case", "dbus-daemon ms", "front door ms", "ratio"
    );
    let mut errors = Vec::new();
    let only = option("--case");
    for case in CASES
        .iter()
        .filter(|c| only.as_ref().is_none_or(|o| c.name.contains(o.as_str())))
    {
        let [bus, door] = measure(case, runs);
        let ratio = match (&bus, &door) {
            (Ok(b), Ok(d)) if *b > 0.0 => Some(d / b),
            _ => None,
        };
        let target = match (case.target, ratio) {
            (None, _) => "-".to_string(),
            (Some(t), Some(r)) if r <= t => format!("<= {t}x, met"),
            (Some(t), Some(_)) => format!("<= {t}x, MISSED"),
            (Some(t), None) => format!("<= {t}x"),
        };
        let ratio = ratio.map_or("-".to_string(), |r| format!("{r:.2}x"));
        println!(
            "{:<17} {:>15} {:>14} {:>7}  {target}",
            case.name,
            ms(&bus),
            ms(&door),
            ratio
        );
        for (side, r) in [("dbus-daemon", &bus), ("front door", &door)] {
            if let Err(e) = r {
                errors.push(format!("{}, {side}: {e}", case.name));
            }
        }
    }
    for e in &errors {
        eprintln!("{e}");
    }
}
