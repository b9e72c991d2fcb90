//! Shared pieces of the benchmarks: child processes (the bench binary runs
//! itself again in a role chosen by an environment variable), helpers
//! reached peer to peer or through a `dbus-daemon`, and raw socket copies.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbus_vmstate::helper::{self, BoxError, SharedBytes, State};
use dbus_vmstate::{coordinator, iface};
use zbus::Connection;

pub mod rss;
/// The tests' runtime shim (the library's own runtime is crate-private).
#[path = "../../tests/util/rt.rs"]
pub mod rt;
pub mod run;

/// The environment variable that selects a child's role.
pub const ROLE: &str = "DV_BENCH_ROLE";

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;
pub const GIB: usize = 1 << 30;

/// Buffer the raw-socket receiver reads into (as the coordinator's chunk
/// buffers).
pub const RAW_CHUNK_BYTES: usize = 1 << 20;

/// A size as the bench ids show it.
pub fn label(size: usize) -> String {
    match size {
        s if s >= GIB && s % GIB == 0 => format!("{}GiB", s / GIB),
        s if s >= MIB && s % MIB == 0 => format!("{}MiB", s / MIB),
        s => format!("{}KiB", s / KIB),
    }
}

/// State bytes that are not all zero, so no page is shared or skipped.
pub fn state_bytes(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for (i, b) in v.iter_mut().enumerate().step_by(512) {
        *b = (i / 512) as u8 | 1;
    }
    v
}

/// Runs the role this process was started in, if any; returns whether it
/// did (the bench's `main` then exits).
pub fn run_role() -> bool {
    let Ok(role) = std::env::var(ROLE) else {
        return false;
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match role.as_str() {
        "helper" => helper_role(&args),
        "raw-sender" => raw_sender_role(&args),
        "raw-receiver" => raw_receiver_role(&args),
        "rss" => rss::role(&args),
        other => Err(format!("unknown role {other}").into()),
    };
    if let Err(e) = result {
        eprintln!("bench child ({role}): {e}");
        std::process::exit(1);
    }
    true
}

fn arg(args: &[String], i: usize) -> Result<&str, BoxError> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {i}").into())
}

/// Starts this bench binary again in `role` with `args`.
pub fn spawn_child(role: &str, args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("bench binary path"))
        .env(ROLE, role)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start a bench child process")
}

/// Children killed when dropped.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A helper's state for the benchmarks: held in an `Arc`, saved without a
/// copy on both paths, and loaded into a buffer that is reused from one
/// load to the next (as the raw baseline's receiver does). Not the tests'
/// scripted `util::Fake`: that one copies, counts and can fail, which a
/// figure beside a raw-socket baseline must not measure.
pub struct BenchState {
    id: String,
    data: Mutex<Arc<Vec<u8>>>,
}

impl BenchState {
    pub fn new(id: &str, size: usize) -> Arc<Self> {
        Arc::new(BenchState {
            id: id.to_string(),
            data: Mutex::new(Arc::new(state_bytes(size))),
        })
    }
}

impl State for BenchState {
    fn id(&self) -> &str {
        &self.id
    }

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.data.lock().map_err(|_| "poisoned")?.to_vec())
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        let data = self.data.lock().map_err(|_| "poisoned")?.clone();
        out.write_all(&data)?;
        Ok(())
    }

    fn save_shared(&self) -> Result<SharedBytes, BoxError> {
        Ok(self.data.lock().map_err(|_| "poisoned")?.clone())
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        let mut guard = self.data.lock().map_err(|_| "poisoned")?;
        let buf = Arc::make_mut(&mut guard);
        // Reuses the resident buffer: no fresh pages for every load.
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                let mut more = [0u8; 4096];
                match input.read(&mut more)? {
                    0 => break,
                    n => {
                        buf.extend_from_slice(&more[..n]);
                        filled += n;
                        continue;
                    }
                }
            }
            match input.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(())
    }

    fn load(&self, data: Vec<u8>) -> Result<(), BoxError> {
        *self.data.lock().map_err(|_| "poisoned")? = Arc::new(data);
        Ok(())
    }
}

/// `helper SOCKET_OR_BUS ID SIZE STREAMING(0|1) [bus]`
fn helper_role(args: &[String]) -> Result<(), BoxError> {
    let target = arg(args, 0)?;
    let id = arg(args, 1)?;
    let size: usize = arg(args, 2)?.parse()?;
    let streaming = arg(args, 3)? == "1";
    let state = BenchState::new(id, size);
    let options = helper::Options::default()
        .streaming(streaming)
        .connect_timeout(Duration::from_secs(30));
    if args.get(4).map(String::as_str) == Some("bus") {
        rt::block_on(helper::serve_bus(target, state, options))?;
    } else {
        helper::serve_blocking(target, state, options)?;
    }
    Ok(())
}

/// Arguments of a helper child.
pub fn helper_args(target: &str, id: &str, size: usize, streaming: bool, bus: bool) -> Vec<String> {
    let mut v = vec![
        target.to_string(),
        id.to_string(),
        size.to_string(),
        if streaming { "1" } else { "0" }.to_string(),
    ];
    if bus {
        v.push("bus".to_string());
    }
    v
}

/// A short-named temporary directory (`sun_path` is 108 bytes).
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dvb")
        .tempdir_in("/tmp")
        .expect("temporary directory")
}

/// `n` helper processes of `size` bytes behind a coordinator.
pub struct Coordinated {
    pub coordinator: coordinator::Coordinator,
    pub ids: Vec<String>,
    _children: Children,
    _dir: tempfile::TempDir,
}

impl Coordinated {
    pub fn start(n: usize, size: usize, streaming: bool) -> Self {
        let dir = tmpdir();
        let ids: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
        let coordinator = rt::block_on(async {
            coordinator::Builder::new()
                .socket_dir(dir.path(), ids.iter().cloned())
                .connect_timeout(Duration::from_secs(60))
                .call_timeout(Duration::from_secs(120))
                .bind()
        })
        .expect("bind coordinator");
        let children = Children(
            ids.iter()
                .map(|id| {
                    let sock = dir.path().join(format!("{id}.sock"));
                    spawn_child(
                        "helper",
                        &helper_args(&sock.to_string_lossy(), id, size, streaming, false),
                    )
                })
                .collect(),
        );
        rt::block_on(coordinator.wait_connected(Duration::from_secs(120)))
            .expect("helpers connect");
        Coordinated {
            coordinator,
            ids,
            _children: children,
            _dir: dir,
        }
    }
}

/// `n` helper processes of `size` bytes, each reached through its own
/// peer-to-peer connection (no coordinator): for bare calls.
pub struct P2p {
    pub conns: Vec<Connection>,
    _children: Children,
    _dir: tempfile::TempDir,
}

impl P2p {
    pub fn start(n: usize, size: usize, streaming: bool) -> Self {
        let dir = tmpdir();
        let mut children = Children(Vec::new());
        let mut conns = Vec::new();
        for i in 0..n {
            let id = format!("h{i}");
            let path = dir.path().join(format!("{id}.sock"));
            let listener = UnixListener::bind(&path).expect("bind");
            children.0.push(spawn_child(
                "helper",
                &helper_args(&path.to_string_lossy(), &id, size, streaming, false),
            ));
            let (stream, _) = listener.accept().expect("accept");
            let conn = rt::block_on(
                zbus::connection::Builder::unix_stream(stream)
                    .server(zbus::Guid::generate())
                    .p2p()
                    .build(),
            )
            .expect("handshake");
            conns.push(conn);
        }
        P2p {
            conns,
            _children: children,
            _dir: dir,
        }
    }
}

/// A private `dbus-daemon` and `n` helpers on it, found as QEMU finds
/// them: the queued owners of `org.qemu.VMState1`.
pub struct Bus {
    pub conn: Connection,
    pub helpers: Vec<String>,
    _children: Children,
    _daemon: Children,
}

impl Bus {
    /// `None` when `dbus-daemon` cannot be started.
    pub fn start(n: usize, size: usize) -> Option<Self> {
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        let mut out = daemon.stdout.take()?;
        let daemon = Children(vec![daemon]);
        let mut address = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).ok()? == 1 && byte[0] != b'\n' {
            address.push(byte[0]);
        }
        let address = String::from_utf8(address).ok()?;
        let children = Children(
            (0..n)
                .map(|i| {
                    spawn_child(
                        "helper",
                        &helper_args(&address, &format!("h{i}"), size, false, true),
                    )
                })
                .collect(),
        );
        let conn =
            rt::block_on(zbus::connection::Builder::address(address.as_str()).build()).ok()?;
        let helpers = rt::block_on(async {
            for _ in 0..6000 {
                let owners = bus_owners(&conn).await;
                if owners.len() == n {
                    return owners;
                }
                rt::sleep(Duration::from_millis(10)).await;
            }
            Vec::new()
        });
        (helpers.len() == n).then_some(Bus {
            conn,
            helpers,
            _children: children,
            _daemon: daemon,
        })
    }
}

async fn bus_owners(conn: &Connection) -> Vec<String> {
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
        Ok(m) => m.body().deserialize::<Vec<String>>().unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// A bare `Save` call to `dest` (`None` on a peer-to-peer connection);
/// returns the state's size.
pub async fn save_call(conn: &Connection, dest: Option<&str>) -> usize {
    let reply = conn
        .call_method(
            dest,
            iface::OBJECT_PATH,
            Some(iface::INTERFACE),
            iface::METHOD_SAVE,
            &(),
        )
        .await
        .expect("Save");
    let body = reply.body();
    let data: &[u8] = body.deserialize().expect("ay");
    data.len()
}

/// A bare `Load` call to `dest` (`None` on a peer-to-peer connection).
pub async fn load_call(conn: &Connection, dest: Option<&str>, data: &[u8]) {
    conn.call_method(
        dest,
        iface::OBJECT_PATH,
        Some(iface::INTERFACE),
        iface::METHOD_LOAD,
        &serde_bytes::Bytes::new(data),
    )
    .await
    .expect("Load");
}

/// `Save` through the bus; returns the state's size.
pub async fn bus_save(conn: &Connection, dest: &str) -> usize {
    save_call(conn, Some(dest)).await
}

/// `Load` through the bus.
pub async fn bus_load(conn: &Connection, dest: &str, data: &[u8]) {
    load_call(conn, Some(dest), data).await
}

/// A child that sends `size` bytes each time it reads a request byte.
pub struct RawSender {
    stream: UnixStream,
    buf: Vec<u8>,
    _child: Children,
    _dir: tempfile::TempDir,
}

fn accept_child(role: &str, extra: &[String]) -> (UnixStream, Children, tempfile::TempDir) {
    let dir = tmpdir();
    let path = dir.path().join("raw.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let mut args = vec![path.to_string_lossy().to_string()];
    args.extend_from_slice(extra);
    let child = Children(vec![spawn_child(role, &args)]);
    let (stream, _) = listener.accept().expect("accept");
    tune(&stream);
    (stream, child, dir)
}

/// The same socket buffer the streaming path asks for.
fn tune(stream: &UnixStream) {
    let _ = socket2::SockRef::from(stream).set_send_buffer_size(4 << 20);
}

impl RawSender {
    pub fn start(size: usize) -> Self {
        let (stream, child, dir) = accept_child("raw-sender", &[size.to_string()]);
        RawSender {
            stream,
            buf: Vec::with_capacity(RAW_CHUNK_BYTES),
            _child: child,
            _dir: dir,
        }
    }

    /// Receives one copy of the state into a reused chunk buffer.
    pub fn copy(&mut self, size: usize) {
        self.stream.write_all(&[1]).expect("request");
        self.buf.resize(RAW_CHUNK_BYTES, 0);
        let mut left = size;
        while left > 0 {
            let want = left.min(RAW_CHUNK_BYTES);
            let n = self.stream.read(&mut self.buf[..want]).expect("read");
            assert!(n > 0, "raw sender ended early");
            left -= n;
        }
    }
}

fn raw_sender_role(args: &[String]) -> Result<(), BoxError> {
    let mut stream = UnixStream::connect(arg(args, 0)?)?;
    tune(&stream);
    let data = state_bytes(arg(args, 1)?.parse()?);
    let mut req = [0u8; 1];
    while stream.read(&mut req)? == 1 {
        stream.write_all(&data)?;
    }
    Ok(())
}

/// A child that receives `size` bytes into a resident buffer and answers
/// one byte.
pub struct RawReceiver {
    stream: UnixStream,
    data: Vec<u8>,
    _child: Children,
    _dir: tempfile::TempDir,
}

impl RawReceiver {
    pub fn start(size: usize) -> Self {
        let (stream, child, dir) = accept_child("raw-receiver", &[size.to_string()]);
        RawReceiver {
            stream,
            data: state_bytes(size),
            _child: child,
            _dir: dir,
        }
    }

    /// Sends one copy of the state and waits until it has all arrived.
    pub fn copy(&mut self) {
        self.stream.write_all(&self.data).expect("send");
        let mut ack = [0u8; 1];
        self.stream.read_exact(&mut ack).expect("ack");
    }
}

fn raw_receiver_role(args: &[String]) -> Result<(), BoxError> {
    let mut stream = UnixStream::connect(arg(args, 0)?)?;
    tune(&stream);
    let size: usize = arg(args, 1)?.parse()?;
    let mut data = state_bytes(size);
    loop {
        let mut filled = 0;
        while filled < size {
            match stream.read(&mut data[filled..])? {
                0 => return Ok(()),
                n => filled += n,
            }
        }
        stream.write_all(&[1])?;
    }
}

/// Where criterion writes its output (the same rule criterion follows).
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        Path::new(&target).join("criterion")
    } else {
        PathBuf::from("target/criterion")
    }
}

/// Peak resident memory of this process (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmHWM in /proc/self/status"))
}
