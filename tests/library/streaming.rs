//! The streaming path (`org.dbusvmstate.Stream1`): round trips beyond the
//! D-Bus message cap, plain and streaming helpers side by side, and every
//! way a streamed transfer can go wrong.

use std::io::{Read, Write};

use crate::util::*;
use dbus_vmstate::coordinator::Mode;
use dbus_vmstate::error::Call;
use dbus_vmstate::stream::{native, Limits};
use dbus_vmstate::{iface, Error};

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

fn round_trip(size: usize) {
    run(async move {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let original = big(size, 0x5a);
        let a = Fake::new("a", original.clone());
        drop(a.spawn_in(dir.path()));
        let saved = c.save_to_path(&path).await.unwrap();
        assert_eq!(saved.helpers[0].mode, Mode::Stream);
        assert_eq!(saved.helpers[0].transfer.bytes, size as u64);

        a.set_data(vec![1, 2, 3]);
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
        let a = Fake::new("a", vec![7; iface::MAX_SAVE_BLOB_BYTES + 1]).plain();
        drop(a.spawn_in(dir.path()));
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
        let a = Fake::new("a", big(3 << 20, 1));
        let b = Fake::new("b", big(6 << 20, 2))
            .save_does(Step::FailAfter(5 << 20, "disk on fire".into()));
        drop(a.spawn_in(dir.path()));
        drop(b.spawn_in(dir.path()));
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
        let a = Fake::new("a", big(8 << 20, 1))
            .load_does(Step::FailAfter(3 << 20, "bad version".into()));
        drop(a.spawn_in(dir.path()));
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
        let a = Fake::new("a", big(2 << 20, 1)).load_does(Step::StopAfter(1000));
        drop(a.spawn_in(dir.path()));
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
        let a = Fake::new("a", big(8 << 20, 1)).save_does(Step::HangAfter(2 << 20));
        drop(a.spawn_in(dir.path()));
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
        let s1 = Fake::new("s1", originals[0].clone());
        let s2 = Fake::new("s2", originals[1].clone());
        let p1 = Fake::new("p1", originals[2].clone()).plain();
        let p2 = Fake::new("p2", originals[3].clone()).plain();
        drop(s1.spawn_in(dir.path()));
        drop(s2.spawn_in(dir.path()));
        drop(p1.spawn_in(dir.path()));
        drop(p2.spawn_in(dir.path()));

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
            s.set_data(Vec::new());
        }
        for p in [&p1, &p2] {
            p.set_data(Vec::new());
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
        let a = Fake::new("a", big(3 << 20, 1));
        let b = Fake::new("b", big(5 << 20, 2))
            .save_does(Step::FailAfter(4 << 20, "disk on fire".into()));
        drop(a.spawn_in(dir.path()));
        drop(b.spawn_in(dir.path()));
        // b is optional: save would not wait for it.
        until("a and b to connect", || {
            c.status().iter().all(|h| h.connected)
        })
        .await;
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
        let a = Fake::new("a", original.clone());
        let p = Fake::new("p", vec![4; 5000]).plain();
        drop(a.spawn_in(dir.path()));
        drop(p.spawn_in(dir.path()));
        c.save_to_path(&path).await.unwrap();
        a.set_data(Vec::new());
        p.set_data(Vec::new());
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
        let a = Fake::new("a", original.clone());
        drop(a.spawn_in(dir.path()));
        c.save_to_path(&path).await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        a.set_data(b"old".to_vec());
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
        assert_eq!(a.loads(), 1);
        assert_eq!(a.data(), b"old", "the helper loaded a state that failed");
    });
}

#[test]
fn helper_closing_its_socket_early_on_save_fails_the_save() {
    run(async {
        let dir = tmpdir();
        let path = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let _conn = Raw::new("a")
            .lying_stream(1000, 5000, 0)
            .connect(&sock(dir.path(), "a"))
            .await;
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
        let _conn = Raw::new("a")
            .lying_stream(0, 0, 1000)
            .connect(&sock(dir.path(), "a"))
            .await;
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
        let a = Fake::new("a", big(64 << 20, 1));
        drop(a.spawn_in(dir.path()));
        let err = c.save(FullDisk { room: 2 << 20 }).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{err}"
        );
        // The helper was stopped rather than left to stream all 64 MiB.
        assert!(a.write_failed());
    });
}
