//! Real QEMU: `qemu-system-x86_64 -M none` with a `dbus-vmstate` object,
//! driven over QMP (a Unix socket, one JSON object a line), migrating to
//! and from files with `exec:`; and a private `dbus-daemon`, the bus QEMU's
//! own design puts between it and the helpers.
//!
//! Standalone (std and serde_json only), so the benches include it too.
//! Every wait has a deadline, and every process is killed when dropped.
//! Tests that use it check `require(Requirement::Qemu)` first.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The QEMU program.
pub const PROGRAM: &str = "qemu-system-x86_64";

/// How long QEMU may take to start, to answer a QMP command, or to finish
/// a migration.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a migration's state is polled.
const POLL: Duration = Duration::from_millis(5);

/// A QMP connection: commands in, replies out, events skipped.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Why a QMP command gave no result.
#[derive(Debug)]
pub enum QmpError {
    /// QEMU replied with an error: its `desc`.
    Command(String),
    /// The connection failed or closed (QEMU exited), or no reply came
    /// within [`DEADLINE`].
    Io(io::Error),
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpError::Command(desc) => write!(f, "QMP error: {desc}"),
            QmpError::Io(e) => write!(f, "QMP connection: {e}"),
        }
    }
}

impl Qmp {
    /// Reads the greeting on `stream` and leaves capabilities negotiation.
    fn handshake(stream: UnixStream) -> Result<Qmp, QmpError> {
        stream
            .set_read_timeout(Some(DEADLINE))
            .map_err(QmpError::Io)?;
        let writer = stream.try_clone().map_err(QmpError::Io)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Io(io::Error::other(format!(
                "not a QMP greeting: {greeting}"
            ))));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The next JSON object QEMU sends.
    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(QmpError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| QmpError::Io(io::Error::other(format!("{e}: {line:?}")))),
            Err(e) => Err(QmpError::Io(e)),
        }
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(QmpError::Io)?;
        loop {
            let mut reply = self.read()?;
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = reply.get("error") {
                let desc = error["desc"].as_str().unwrap_or("(no desc)");
                return Err(QmpError::Command(desc.to_string()));
            }
            // An event: not the reply.
        }
    }
}

/// How a migration ended, as QEMU reported it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `query-migrate`'s last `status` (`completed`, `failed`, ...), or
    /// `exited` when QEMU exited before reporting an end (an incoming QEMU
    /// 7.2 exits when its load fails).
    pub status: String,
    /// `downtime` in milliseconds (the source, once completed).
    pub downtime_ms: Option<u64>,
    /// `error-desc`, if QEMU gave one.
    pub error: Option<String>,
    /// QEMU's exit status, if it exited.
    pub exit: Option<ExitStatus>,
}

impl Outcome {
    /// Whether the migration completed.
    pub fn completed(&self) -> bool {
        self.status == "completed"
    }
}

/// QEMU's stderr, read into memory by a thread as it comes.
#[derive(Debug)]
struct Stderr {
    text: Arc<Mutex<String>>,
    done: mpsc::Receiver<()>,
}

impl Stderr {
    fn capture(mut pipe: impl Read + Send + 'static) -> Stderr {
        let text = Arc::new(Mutex::new(String::new()));
        let (tx, done) = mpsc::channel();
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let chunk = String::from_utf8_lossy(&buf[..n]);
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&chunk);
            }
            let _ = tx.send(());
        });
        Stderr { text, done }
    }

    fn now(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How to start a QEMU.
#[derive(Debug, Clone)]
pub struct Config {
    /// The D-Bus address of its `dbus-vmstate` object (`addr=`).
    pub address: String,
    /// Its `id-list=`.
    pub id_list: Vec<String>,
    /// Started with `-incoming defer`, to load with
    /// [`Qemu::migrate_incoming`].
    pub incoming: bool,
}

impl Config {
    /// A source QEMU whose `dbus-vmstate` object connects to `address`
    /// and saves the helpers `id_list`.
    pub fn new(address: &str, id_list: &[&str]) -> Config {
        Config {
            address: address.to_string(),
            id_list: id_list.iter().map(|s| s.to_string()).collect(),
            incoming: false,
        }
    }

    /// The same, waiting for an incoming migration.
    pub fn incoming(mut self) -> Config {
        self.incoming = true;
        self
    }

    /// The `-object` argument (commas inside a value are doubled).
    fn object(&self) -> String {
        let list = self.id_list.join(",,");
        format!(
            "dbus-vmstate,id=dv0,addr={},id-list={list}",
            self.address.replace(',', ",,")
        )
    }
}

/// A running `qemu-system-x86_64 -M none` with a `dbus-vmstate` object and
/// a QMP socket, killed when dropped.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    qmp: Qmp,
    stderr: Stderr,
    name: String,
}

impl Qemu {
    /// Starts QEMU as `config` says, its QMP socket at `dir/NAME.qmp`, and
    /// negotiates QMP. Fails with QEMU's stderr if it exits first (QEMU
    /// refuses to start when nothing listens at the `dbus-vmstate`
    /// address) or gives no QMP greeting within [`DEADLINE`].
    pub fn start(dir: &Path, name: &str, config: &Config) -> Result<Qemu, String> {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let mut cmd = Command::new(PROGRAM);
        cmd.args(["-M", "none", "-nodefaults", "-display", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-object")
            .arg(config.object());
        if config.incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {PROGRAM}: {e}"))?;
        let stderr = Stderr::capture(child.stderr.take().expect("piped stderr"));
        match connect(&mut child, &qmp_path) {
            Ok(qmp) => Ok(Qemu {
                child,
                qmp,
                stderr,
                name: name.to_string(),
            }),
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = stderr.done.recv_timeout(Duration::from_secs(2));
                Err(format!(
                    "QEMU {name}: {e} (exit: {status:?}); stderr:\n{}",
                    stderr.now()
                ))
            }
        }
    }

    /// Runs a QMP command.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.qmp.execute(command, arguments)
    }

    /// Migrates to `uri` and waits for the end (completed or failed).
    ///
    /// # Panics
    ///
    /// If QEMU refuses the command or the migration does not end within
    /// [`DEADLINE`].
    pub fn migrate(&mut self, uri: &str) -> Outcome {
        self.start_migration(uri);
        self.wait_migration()
    }

    /// Starts migrating to `uri`, without waiting for the end (see
    /// [`Qemu::wait_migration`]).
    ///
    /// # Panics
    ///
    /// If QEMU refuses the command.
    pub fn start_migration(&mut self, uri: &str) {
        if let Err(e) = self.execute("migrate", Some(json!({ "uri": uri }))) {
            panic!(
                "QEMU {}: migrate {uri:?}: {e}\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Migrates into `file` (`exec:cat > FILE`).
    pub fn migrate_to(&mut self, file: &Path) -> Outcome {
        self.migrate(&format!("exec:cat > {}", file.display()))
    }

    /// An incoming QEMU ([`Config::incoming`]) loads `file` (`exec:cat
    /// FILE`); waits for the end, which is QEMU's exit when the load fails.
    pub fn migrate_incoming(&mut self, file: &Path) -> Outcome {
        let uri = format!("exec:cat {}", file.display());
        match self.execute("migrate-incoming", Some(json!({ "uri": uri }))) {
            Ok(_) => self.wait_migration(),
            Err(QmpError::Io(_)) => self.exited_outcome(None),
            Err(e) => panic!(
                "QEMU {}: migrate-incoming: {e}\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Polls `query-migrate` until it reports `completed` or `failed`, or
    /// QEMU exits.
    ///
    /// # Panics
    ///
    /// If the migration does not end within [`DEADLINE`].
    pub fn wait_migration(&mut self) -> Outcome {
        let started = Instant::now();
        loop {
            let info = match self.execute("query-migrate", None) {
                Ok(info) => info,
                Err(QmpError::Io(_)) => return self.exited_outcome(None),
                Err(e) => panic!("QEMU {}: query-migrate: {e}", self.name),
            };
            let status = info["status"].as_str().unwrap_or("").to_string();
            if status == "completed" || status == "failed" {
                return Outcome {
                    status,
                    downtime_ms: info["downtime"].as_u64(),
                    error: info["error-desc"].as_str().map(str::to_string),
                    exit: self.child.try_wait().ok().flatten(),
                };
            }
            assert!(
                started.elapsed() < DEADLINE,
                "QEMU {}: migration still {status:?} after {DEADLINE:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The outcome of a QEMU whose QMP connection closed: waits (under
    /// [`DEADLINE`]) for it to exit.
    fn exited_outcome(&mut self, error: Option<String>) -> Outcome {
        let exit = self.wait_exit();
        Outcome {
            status: "exited".to_string(),
            downtime_ms: None,
            error,
            exit: Some(exit),
        }
    }

    /// Waits for QEMU to exit, killing it after [`DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Whatever it wrote before exiting.
                let _ = self.stderr.done.recv_timeout(Duration::from_secs(2));
                return status;
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("QEMU {} did not exit within {DEADLINE:?}", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// `query-status`'s `status` (`running`, `postmigrate`, `inmigrate`,
    /// ...).
    pub fn run_state(&mut self) -> String {
        match self.execute("query-status", None) {
            Ok(v) => v["status"].as_str().unwrap_or("").to_string(),
            Err(e) => panic!("QEMU {}: query-status: {e}", self.name),
        }
    }

    /// Lets a source run again after a completed migration (`cont`), so
    /// that it can migrate once more. QEMU reports `completed` a moment
    /// before it has cleaned up, and refuses `cont` until then ("Migration
    /// is not finalized yet"): that is retried, under [`DEADLINE`].
    pub fn resume(&mut self) -> Result<(), QmpError> {
        let started = Instant::now();
        loop {
            match self.execute("cont", None) {
                Err(QmpError::Command(desc))
                    if desc.contains("not finalized") && started.elapsed() < DEADLINE =>
                {
                    std::thread::sleep(POLL)
                }
                other => return other.map(drop),
            }
        }
    }

    /// What QEMU wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.now()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to the QMP socket at `path` once QEMU has created it, failing
/// if QEMU exits first or after [`DEADLINE`].
fn connect(child: &mut Child, path: &Path) -> Result<Qmp, String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before QMP was up ({status})"));
        }
        match UnixStream::connect(path) {
            Ok(stream) => return Qmp::handshake(stream).map_err(|e| e.to_string()),
            Err(e) if started.elapsed() > DEADLINE => {
                return Err(format!(
                    "no QMP socket at {} within {DEADLINE:?}: {e}",
                    path.display()
                ))
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// A D-Bus address for the Unix socket at `path`.
pub fn address(path: &Path) -> String {
    format!("unix:path={}", path.display())
}

/// A private `dbus-daemon`, as QEMU's design puts one per VM; stopped when
/// dropped.
#[derive(Debug)]
pub struct Bus {
    child: Child,
    /// Its address, `unix:path=...` (the guid dropped: QEMU's option
    /// parser needs no more).
    pub address: String,
}

impl Bus {
    /// Starts one (the session configuration) listening at `path`, and
    /// waits until it accepts connections (it prints its address then).
    pub fn start(path: &Path) -> Result<Bus, String> {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--address={}", address(path)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start dbus-daemon: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(line) if !line.trim().is_empty() => Ok(Bus {
                child,
                address: address(path),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "dbus-daemon printed no address within {DEADLINE:?}"
                ))
            }
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
