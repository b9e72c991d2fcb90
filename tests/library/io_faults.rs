//! Output that cannot be written and streams that must not load: the save
//! fails with nothing left behind, the load fails before any `Load` call.

use std::time::Duration;

use crate::util::*;
use dbus_vmstate::stream::{self, native, Record};
use dbus_vmstate::Error;

/// Coordinator with helpers a (5000 bytes) and b (3000 bytes) connected.
async fn pair(
    dir: &std::path::Path,
) -> (
    dbus_vmstate::coordinator::Coordinator,
    std::sync::Arc<Fake>,
    std::sync::Arc<Fake>,
) {
    let c = builder(dir, &["a", "b"]).bind().unwrap();
    let a = Fake::new("a", pattern(5000, 1));
    let b = Fake::new("b", pattern(3000, 2));
    drop(a.spawn(sock(dir, "a")));
    drop(b.spawn(sock(dir, "b")));
    connected(&c).await;
    (c, a, b)
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Mounts one, or `None` (the test skipped) when not root.
    fn mount(bytes: usize) -> Option<Tmpfs> {
        if !require(Requirement::Root) {
            return None;
        }
        let dir = tmpdir();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs");
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn full_disk_fails_the_save_and_leaves_no_file() {
    let Some(fs) = Tmpfs::mount(64 << 10) else {
        return;
    };
    run(async move {
        let dir = tmpdir();
        let (c, _, _) = pair(dir.path()).await;
        // Big enough not to fit: 96 KiB of state into a 64 KiB filesystem.
        let big = Fake::new("big", pattern(96 << 10, 3));
        let c2 = builder(&dir.path().join("big"), &["big"]).bind().unwrap();
        drop(big.spawn(sock(&dir.path().join("big"), "big")));
        let previous = fs.0.path().join("previous.vmstate");
        let (bytes, _) = c.save(Vec::new()).await.unwrap();
        std::fs::write(&previous, &bytes).unwrap();

        let out = fs.0.path().join("new.vmstate");
        let err = c2.save_to_path(&out).await.unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let text = dbus_vmstate::error::chain(&err);
        assert!(
            text.contains("new.vmstate") && text.contains("space"),
            "{text}"
        );
        let left: Vec<_> = std::fs::read_dir(fs.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("previous.vmstate")]);
        // Overwriting the existing file fails the same way and keeps it.
        assert!(c2.save_to_path(&previous).await.is_err());
        assert_eq!(std::fs::read(&previous).unwrap(), bytes);
    });
}

#[test]
fn closed_pipe_fails_the_save() {
    run(async {
        let dir = tmpdir();
        let (c, _, _) = pair(dir.path()).await;
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let err = c.save(writer).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe),
            "{err}"
        );
        // The coordinator keeps serving.
        let (out, _) = c.save(Vec::new()).await.unwrap();
        assert!(!out.is_empty());
    });
}

/// Offsets where a record (or the stream header) ends in a native stream.
fn record_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut at = native::HEADER_BYTES;
    let mut out = vec![at];
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += native::RECORD_HEADER_BYTES + len + native::RECORD_CRC_BYTES;
        out.push(at);
    }
    assert_eq!(at, bytes.len());
    out
}

#[test]
fn stream_truncated_at_every_record_boundary_completes_no_load() {
    run(async {
        let dir = tmpdir();
        let (c, a, b) = pair(dir.path()).await;
        let (good, _) = c.save(Vec::new()).await.unwrap();
        let saved = (a.data(), b.data());
        give_old([&a, &b]);
        let boundaries = record_boundaries(&good);
        assert!(
            boundaries.len() >= 7,
            "header, 2 x (begin, chunk, end), stream end"
        );
        for &cut in &boundaries[..boundaries.len() - 1] {
            let err = c
                .load(std::io::Cursor::new(good[..cut].to_vec()), None)
                .await
                .unwrap_err();
            assert!(err.is_stream(), "cut at {cut}: {err}");
            assert!(err.to_string().contains("rejected"), "{err}");
        }
        assert_all_old([&a, &b], "a truncated stream");
        // The whole stream still loads.
        c.load(std::io::Cursor::new(good), None).await.unwrap();
        assert!((a.data(), b.data()) == saved);
    });
}

#[test]
fn stream_of_a_newer_format_version_calls_no_load() {
    run(async {
        let dir = tmpdir();
        let (c, a, b) = pair(dir.path()).await;
        let (mut bytes, _) = c.save(Vec::new()).await.unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..16]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        let err = c.load(std::io::Cursor::new(bytes), None).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Stream(stream::Error::UnsupportedVersion { found: 3, .. })
            ),
            "{err}"
        );
        assert_eq!((a.loads(), b.loads()), (0, 0));
    });
}

/// A native record built by hand (for streams our writer refuses to make).
fn raw_record(kind: u8, helper: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, 0, 0, 0];
    r.extend_from_slice(&helper.to_le_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(payload);
    let crc = crc32c::crc32c(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    r
}

fn raw_end(len: u64, crc: u32) -> Vec<u8> {
    let mut p = len.to_le_bytes().to_vec();
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

#[test]
fn stream_with_a_duplicate_id_completes_no_load() {
    run(async {
        let dir = tmpdir();
        let (c, a, b) = pair(dir.path()).await;
        give_old([&a, &b]);
        let mut bytes = native::encode(&[]).unwrap();
        bytes.truncate(native::HEADER_BYTES);
        for (index, id) in [(0u32, "a"), (1, "a"), (2, "b")] {
            bytes.extend(raw_record(1, index, id.as_bytes()));
            bytes.extend(raw_record(2, index, b"x"));
            bytes.extend(raw_record(3, index, &raw_end(1, crc32c::crc32c(b"x"))));
        }
        let mut end = 3u32.to_le_bytes().to_vec();
        end.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend(raw_record(0xff, u32::MAX, &end));
        let err = c.load(std::io::Cursor::new(bytes), None).await.unwrap_err();
        assert!(
            matches!(&err, Error::Stream(stream::Error::DuplicateId { id }) if id == "a"),
            "{err}"
        );
        assert_all_old([&a, &b], "a duplicate Id");
    });
}

#[test]
fn qemu_payload_with_a_duplicate_id_calls_no_load() {
    run(async {
        let dir = tmpdir();
        let (c, a, b) = pair(dir.path()).await;
        let mut bytes = 3u32.to_be_bytes().to_vec();
        for id in ["a", "b", "a"] {
            bytes.extend_from_slice(&1u32.to_be_bytes());
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(&1u32.to_be_bytes());
            bytes.push(7);
        }
        let err = c
            .load(std::io::Cursor::new(bytes), Some(stream::Format::Qemu))
            .await
            .unwrap_err();
        assert!(err.is_stream(), "{err}");
        assert_eq!(err.helper_id(), Some("a"));
        assert_eq!((a.loads(), b.loads()), (0, 0));
    });
}

#[test]
fn load_failure_of_one_helper_leaves_the_others_loaded_and_reported() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a", "b"])
            .call_timeout(Duration::from_secs(5))
            .bind()
            .unwrap();
        let a = Fake::new("a", Vec::new());
        let b = Fake::new("b", Vec::new()).fail_load("corrupt");
        drop(a.spawn(sock(dir.path(), "a")));
        drop(b.spawn(sock(dir.path(), "b")));
        let stream =
            native::encode(&[Record::new("a", vec![1; 10]), Record::new("b", vec![2; 10])])
                .unwrap();
        let err = c
            .load(std::io::Cursor::new(stream), None)
            .await
            .unwrap_err();
        assert_eq!(err.helper_id(), Some("b"));
        assert_eq!(a.data(), vec![1; 10]);
        let status = c.status();
        assert!(status[0].last_load.is_some());
        assert!(status[1].last_load.is_none());
    });
}
