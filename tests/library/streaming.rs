//! The streaming path (`org.dbusvmstate.Stream1`): round trips beyond the
//! D-Bus message cap, plain and streaming helpers side by side, and every
//! way a streamed transfer can go wrong.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;
use dbus_vmstate::coordinator::Mode;
use dbus_vmstate::error::Call;
use dbus_vmstate::helper::{self, BoxError, State};
use dbus_vmstate::stream::{native, Limits};
use dbus_vmstate::{iface, rt, Error};

/// What a [`Streamer`] does when saving or loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Moves the whole state.
    Whole,
    /// Moves this many bytes, then fails with an error.
    FailAfter(usize),
    /// Moves this many bytes, then blocks for an hour.
    StallAfter(usize),
    /// Loads only this many bytes and returns success.
    StopAfter(usize),
}

/// A helper implementing the streaming hooks only.
struct Streamer {
    id: String,
    data: Mutex<Vec<u8>>,
    save: Act,
    load: Act,
    saves: AtomicUsize,
    loads: AtomicUsize,
    /// Set when writing the state failed (the coordinator closed its end).
    write_failed: std::sync::atomic::AtomicBool,
}

impl Streamer {
    fn new(id: &str, data: Vec<u8>, save: Act, load: Act) -> Arc<Self> {
        Arc::new(Streamer {
            id: id.to_string(),
            data: Mutex::new(data),
            save,
            load,
            saves: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            write_failed: Default::default(),
        })
    }

    fn data(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl State for Streamer {
    fn id(&self) -> &str {
        &self.id
    }

    fn save_to(&self, out: &mut dyn Write) -> Result<(), BoxError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        let data = self.data();
        match self.save {
            Act::Whole | Act::StopAfter(_) => {
                if let Err(e) = out.write_all(&data) {
                    self.write_failed.store(true, Ordering::SeqCst);
                    return Err(e.into());
                }
            }
            Act::FailAfter(n) => {
                out.write_all(&data[..n])?;
                return Err("disk on fire".into());
            }
            Act::StallAfter(n) => {
                out.write_all(&data[..n])?;
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Ok(())
    }

    fn load_from(&self, input: &mut dyn Read) -> Result<(), BoxError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let mut data = Vec::new();
        match self.load {
            Act::Whole => {
                input.read_to_end(&mut data)?;
            }
            Act::FailAfter(n) => {
                input.take(n as u64).read_to_end(&mut data)?;
                return Err("bad version".into());
            }
            Act::StallAfter(n) => {
                input.take(n as u64).read_to_end(&mut data)?;
                std::thread::sleep(Duration::from_secs(3600));
            }
            Act::StopAfter(n) => {
                input.take(n as u64).read_to_end(&mut data)?;
            }
        }
        *self.data.lock().unwrap() = data;
        Ok(())
    }
}

/// Fast test data of `len` bytes (every 4 KiB page distinct).
fn big(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![seed; len];
    for (page, chunk) in v.chunks_mut(4096).enumerate() {
        chunk[0] = (page % 251) as u8;
        if let Some(last) = chunk.last_mut() {
            *last = (page / 251) as u8 ^ seed;
        }
    }
    v
}

fn spawn_with(dir: &std::path::Path, state: Arc<dyn State>, streaming: bool) {
    let socket = sock(dir, state.id());
    drop(rt::spawn(helper::serve(
        socket,
        state,
        helper::Options::default()
            .connect_timeout(Duration::from_secs(10))
            .streaming(streaming),
    )));
}

fn round_trip(size: usize) {
    run(async move {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let original = big(size, 0x5a);
        let a = Streamer::new("a", original.clone(), Act::Whole, Act::Whole);
        spawn_with(dir.path(), a.clone(), true);
        let saved = c.save_to_path(&path).await.unwrap();
        assert_eq!(saved.helpers[0].mode, Mode::Stream);
        assert_eq!(saved.helpers[0].transfer.bytes, size as u64);

        *a.data.lock().unwrap() = vec![1, 2, 3];
        let loaded = c.load_from_path(&path, None).await.unwrap();
        assert_eq!(loaded.helpers[0].mode, Mode::Stream);
        assert!(a.data() == original, "{size} bytes came back different");
        c.shutdown().await;
    });
}

#[test]
fn round_trip_0_bytes() {
    round_trip(0);
}

#[test]
fn round_trip_1_byte() {
    round_trip(1);
}

#[test]
fn round_trip_chunk_sizes() {
    for size in [
        native::CHUNK_BYTES - 1,
        native::CHUNK_BYTES,
        native::CHUNK_BYTES + 1,
    ] {
        round_trip(size);
    }
}

#[test]
fn round_trip_over_the_message_cap() {
    round_trip(iface::MAX_MESSAGE_BYTES + (3 << 20) + 5);
}

#[test]
fn plain_only_helper_over_the_cap_fails_with_a_clear_error() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let a = MemHelper::new("a", vec![7; iface::MAX_SAVE_BLOB_BYTES + 1]);
        spawn_with(dir.path(), a.clone(), false);
        let err = c.save_to_path(&path).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::OverMessageLimit { id, call: Call::Save, limit, .. }
                    if id == "a" && *limit == iface::MAX_SAVE_BLOB_BYTES as u64
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("helper \"a\"")
                && text.contains(&iface::MAX_SAVE_BLOB_BYTES.to_string())
                && text.contains(iface::STREAM_INTERFACE),
            "{text}"
        );
        assert!(!path.exists());

        // A stream holding more than one Load message for it: refused
        // before any Load.
        let size = iface::MAX_LOAD_BLOB_BYTES + 1;
        let mut w = native::Writer::new(std::io::BufWriter::new(
            std::fs::File::create(&path).unwrap(),
        ))
        .unwrap();
        let h = w.begin("a").unwrap();
        let block = vec![3u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            w.write_chunk(h, &block[..n]).unwrap();
            left -= n;
        }
        w.end(h).unwrap();
        w.finish().unwrap();
        let err = c.load_from_path(&path, None).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::OverMessageLimit { id, call: Call::Load, size: Some(s), .. }
                    if id == "a" && *s == size as u64
            ),
            "{err}"
        );
        assert_eq!(a.loads(), 0);
    });
}

#[test]
fn streaming_helper_failing_mid_save_reports_its_named_error() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a", "b"]).bind().unwrap();
        let a = Streamer::new("a", big(3 << 20, 1), Act::Whole, Act::Whole);
        let b = Streamer::new("b", big(6 << 20, 2), Act::FailAfter(5 << 20), Act::Whole);
        spawn_with(dir.path(), a.clone(), true);
        spawn_with(dir.path(), b.clone(), true);
        let err = c.save_to_path(&path).await.unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Save, .. } if id == "b"),
            "{err}"
        );
        assert_eq!(
            err.dbus_error_name().as_deref(),
            Some(iface::ERROR_SAVE_FAILED)
        );
        assert!(dbus_vmstate::error::chain(&err).contains("disk on fire"));
        assert!(!path.exists());
    });
}

#[test]
fn streaming_helper_failing_mid_load_reports_its_named_error() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let a = Streamer::new("a", big(8 << 20, 1), Act::Whole, Act::FailAfter(3 << 20));
        spawn_with(dir.path(), a.clone(), true);
        c.save_to_path(&path).await.unwrap();
        let err = c.load_from_path(&path, None).await.unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Load, .. } if id == "a"),
            "{err}"
        );
        assert_eq!(
            err.dbus_error_name().as_deref(),
            Some(iface::ERROR_LOAD_FAILED)
        );
        assert!(dbus_vmstate::error::chain(&err).contains("bad version"));
    });
}

#[test]
fn helper_loading_only_part_of_its_state_fails() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let a = Streamer::new("a", big(2 << 20, 1), Act::Whole, Act::StopAfter(1000));
        spawn_with(dir.path(), a.clone(), true);
        c.save_to_path(&path).await.unwrap();
        let err = c.load_from_path(&path, None).await.unwrap_err();
        assert_eq!(
            err.dbus_error_name().as_deref(),
            Some(iface::ERROR_LOAD_FAILED),
            "{err}"
        );
        assert!(
            dbus_vmstate::error::chain(&err).contains("1000 of the 2097152 bytes"),
            "{}",
            dbus_vmstate::error::chain(&err)
        );
    });
}

#[test]
fn helper_stalling_mid_stream_times_out() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"])
            .call_timeout(SHORT)
            .bind()
            .unwrap();
        let a = Streamer::new("a", big(8 << 20, 1), Act::StallAfter(2 << 20), Act::Whole);
        spawn_with(dir.path(), a.clone(), true);
        let err = c.save_to_path(&path).await.unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { id, call: Call::Save, .. } if id == "a"),
            "{err}"
        );
        assert!(!path.exists());
    });
}

#[test]
fn mixed_plain_and_streaming_helpers_move_concurrently() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let ids = ["s1", "s2", "p1", "p2"];
        let c = builder(dir.path(), &ids).bind().unwrap();
        let originals: Vec<Vec<u8>> = (0..4).map(|i| big((3 << 20) + i * 4099, i as u8)).collect();
        let s1 = Streamer::new("s1", originals[0].clone(), Act::Whole, Act::Whole);
        let s2 = Streamer::new("s2", originals[1].clone(), Act::Whole, Act::Whole);
        let p1 = MemHelper::new("p1", originals[2].clone());
        let p2 = MemHelper::new("p2", originals[3].clone());
        spawn_with(dir.path(), s1.clone(), true);
        spawn_with(dir.path(), s2.clone(), true);
        spawn_with(dir.path(), p1.clone(), false);
        spawn_with(dir.path(), p2.clone(), false);

        let saved = c.save_to_path(&path).await.unwrap();
        let mode = |list: &[dbus_vmstate::coordinator::HelperReport], id: &str| {
            list.iter().find(|h| h.id == id).map(|h| h.mode)
        };
        for (id, want) in [
            ("s1", Mode::Stream),
            ("s2", Mode::Stream),
            ("p1", Mode::Plain),
            ("p2", Mode::Plain),
        ] {
            assert_eq!(mode(&saved.helpers, id), Some(want), "{id}");
        }
        let records =
            native::read_all(std::fs::File::open(&path).unwrap(), Limits::default()).unwrap();
        assert_eq!(records.len(), 4);

        for s in [&s1, &s2] {
            *s.data.lock().unwrap() = Vec::new();
        }
        for p in [&p1, &p2] {
            *p.data.lock().unwrap() = Vec::new();
        }
        let loaded = c.load_from_path(&path, None).await.unwrap();
        assert_eq!(mode(&loaded.helpers, "s2"), Some(Mode::Stream));
        assert_eq!(mode(&loaded.helpers, "p2"), Some(Mode::Plain));
        assert!(s1.data() == originals[0] && s2.data() == originals[1]);
        assert!(p1.data() == originals[2] && p2.data() == originals[3]);
    });
}

#[test]
fn optional_helper_failing_mid_stream_is_left_out() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a", "b"])
            .optional("b")
            .bind()
            .unwrap();
        let a = Streamer::new("a", big(3 << 20, 1), Act::Whole, Act::Whole);
        let b = Streamer::new("b", big(5 << 20, 2), Act::FailAfter(4 << 20), Act::Whole);
        spawn_with(dir.path(), a.clone(), true);
        spawn_with(dir.path(), b.clone(), true);
        // b is optional: save would not wait for it.
        while !c.status().iter().all(|h| h.connected) {
            rt::sleep(Duration::from_millis(5)).await;
        }
        let saved = c.save_to_path(&path).await.unwrap();
        assert_eq!(saved.helpers.len(), 1);
        assert_eq!(saved.skipped[0].id, "b");
        assert!(
            saved.skipped[0].reason.contains("disk on fire"),
            "{}",
            saved.skipped[0].reason
        );
        let records =
            native::read_all(std::fs::File::open(&path).unwrap(), Limits::default()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, "a");
        assert!(records[0].data == a.data());
    });
}

#[test]
fn non_seekable_input_is_spooled_and_loaded() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a", "p"]).bind().unwrap();
        let original = big(20 << 20, 9);
        let a = Streamer::new("a", original.clone(), Act::Whole, Act::Whole);
        let p = MemHelper::new("p", vec![4; 5000]);
        spawn_with(dir.path(), a.clone(), true);
        spawn_with(dir.path(), p.clone(), false);
        c.save_to_path(&path).await.unwrap();
        *a.data.lock().unwrap() = Vec::new();
        *p.data.lock().unwrap() = Vec::new();
        // A reader with no Seek: `load` spools it (past the memory part).
        let file = std::fs::File::open(&path).unwrap();
        let loaded = c.load(file.take(u64::MAX), None).await.unwrap();
        assert_eq!(loaded.helpers.len(), 2);
        assert!(a.data() == original);
        assert_eq!(p.data(), vec![4; 5000]);
    });
}

/// A seekable input whose bytes change after the first pass, as a file
/// rewritten during a load would.
struct Changing {
    bytes: std::io::Cursor<Vec<u8>>,
    flip_at: usize,
    flipped: bool,
}

impl Read for Changing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.bytes.read(buf)
    }
}

impl std::io::Seek for Changing {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let before = self.bytes.position();
        let at = self.bytes.seek(pos)?;
        // Rewound after a pass that read past the byte: it changes now.
        if at == 0 && before > self.flip_at as u64 && !self.flipped {
            self.flipped = true;
            self.bytes.get_mut()[self.flip_at] ^= 0x01;
        }
        Ok(at)
    }
}

#[test]
fn input_changing_after_verification_never_completes_a_streamed_load() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let original = big(3 << 20, 5);
        let a = Streamer::new("a", original.clone(), Act::Whole, Act::Whole);
        spawn_with(dir.path(), a.clone(), true);
        c.save_to_path(&path).await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        *a.data.lock().unwrap() = b"old".to_vec();
        // A byte of the helper's END record (after all its chunks; the
        // stream ends with END and STREAM_END, 28 bytes each).
        let flip_at = bytes.len() - 2 * 28 + 14;
        let input = Changing {
            bytes: std::io::Cursor::new(bytes),
            flip_at,
            flipped: false,
        };
        let err = c.load_seekable(input, None).await.unwrap_err();
        assert!(
            err.is_stream() || matches!(&err, Error::Several { .. }),
            "{err}"
        );
        assert!(
            dbus_vmstate::error::chain(&err).contains("checksum"),
            "{}",
            dbus_vmstate::error::chain(&err)
        );
        // Verification passed, so LoadFd was called; the helper saw its
        // input end short and kept its old state.
        assert_eq!(a.loads.load(Ordering::SeqCst), 1);
        assert_eq!(a.data(), b"old", "the helper loaded a state that failed");
    });
}

/// A helper on raw zbus whose `SaveFd` writes `write` bytes but claims
/// `claim`, and whose `LoadFd` reads `read` bytes, closes its end and
/// claims success.
struct Liar {
    write: usize,
    claim: u64,
    read: usize,
}

struct LiarVm;

#[zbus::interface(name = "org.qemu.VMState1")]
impl LiarVm {
    #[zbus(property)]
    async fn id(&self) -> String {
        "a".to_string()
    }
}

#[zbus::interface(name = "org.dbusvmstate.Stream1")]
impl Liar {
    async fn save_fd(&self, fd: zbus::OwnedFd) -> u64 {
        let mut s = UnixStream::from(std::os::fd::OwnedFd::from(fd));
        let _ = s.write_all(&vec![1; self.write]);
        self.claim
    }

    async fn load_fd(&self, fd: zbus::OwnedFd, _size: u64) {
        let mut s = UnixStream::from(std::os::fd::OwnedFd::from(fd));
        let _ = s.read_exact(&mut vec![0; self.read]);
    }
}

async fn spawn_liar(dir: &std::path::Path, liar: Liar) -> zbus::Connection {
    let stream = UnixStream::connect(sock(dir, "a")).unwrap();
    zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .serve_at(iface::OBJECT_PATH, LiarVm)
        .serve_at(iface::OBJECT_PATH, liar)
        .build()
        .await
        .unwrap()
}

#[test]
fn helper_closing_its_socket_early_on_save_fails_the_save() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let liar = Liar {
            write: 1000,
            claim: 5000,
            read: 0,
        };
        let _conn = spawn_liar(dir.path(), liar).await;
        connected(&c).await;
        let err = c.save_to_path(&path).await.unwrap_err();
        assert!(
            matches!(&err, Error::Transfer { id, call: Call::Save, .. } if id == "a"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("reported 5000 bytes, but 1000 arrived"),
            "{err}"
        );
        assert!(!path.exists());
    });
}

#[test]
fn helper_closing_its_socket_early_on_load_fails_the_load() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let liar = Liar {
            write: 0,
            claim: 0,
            read: 1000,
        };
        let _conn = spawn_liar(dir.path(), liar).await;
        connected(&c).await;
        let size = 16 << 20;
        let stream =
            native::encode(&[dbus_vmstate::stream::Record::new("a", vec![2; size])]).unwrap();
        let err = c
            .load_seekable(std::io::Cursor::new(stream), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Transfer { id, call: Call::Load, .. } if id == "a"),
            "{err}"
        );
        assert!(err.to_string().contains("stopped reading"), "{err}");
    });
}

/// An output that fails once `room` bytes were written.
#[derive(Debug)]
struct FullDisk {
    room: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::from_raw_os_error(libc_enospc()));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `ENOSPC` on Linux.
fn libc_enospc() -> i32 {
    28
}

#[test]
fn output_failure_stops_streaming_helpers_and_is_reported() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let a = Streamer::new("a", big(64 << 20, 1), Act::Whole, Act::Whole);
        spawn_with(dir.path(), a.clone(), true);
        let err = c.save(FullDisk { room: 2 << 20 }).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{err}"
        );
        // The helper was stopped rather than left to stream all 64 MiB.
        assert!(a.write_failed.load(Ordering::SeqCst));
    });
}
