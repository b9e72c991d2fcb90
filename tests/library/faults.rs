//! Misbehaving helpers and damaged streams: each fails cleanly, names the
//! helper, leaves no output file, and calls no Load from a bad stream.

use std::time::Duration;

use crate::util::*;
use dbus_vmstate::error::Call;
use dbus_vmstate::{iface, Error};

/// A coordinator for a and b with both helpers connected.
async fn two_helpers(
    dir: &std::path::Path,
    script_b: impl FnOnce(std::sync::Arc<Fake>) -> std::sync::Arc<Fake>,
    call_timeout: Duration,
) -> (
    dbus_vmstate::coordinator::Coordinator,
    std::sync::Arc<Fake>,
    std::sync::Arc<Fake>,
) {
    let c = builder(dir, &["a", "b"])
        .call_timeout(call_timeout)
        .bind()
        .unwrap();
    let a = Fake::new("a", pattern(5000, 1));
    let b = script_b(Fake::new("b", pattern(3000, 2)));
    drop(a.spawn(sock(dir, "a")));
    drop(b.spawn(sock(dir, "b")));
    connected(&c).await;
    (c, a, b)
}

/// Saves a good stream of a and b into `dir/good.vmstate`, returns its bytes.
async fn good_stream(dir: &std::path::Path) -> Vec<u8> {
    let (c, _, _) = two_helpers(dir, |b| b, Duration::from_secs(10)).await;
    let path = dir.join("good.vmstate");
    c.save_to_path(&path).await.unwrap();
    c.shutdown().await;
    std::fs::read(path).unwrap()
}

#[test]
fn save_error_reply_names_helper_and_writes_nothing() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        let (c, a, b) = two_helpers(
            dir.path(),
            |b| b.fail_save("disk on fire"),
            Duration::from_secs(10),
        )
        .await;
        let err = c.save_to_path(&out).await.unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Save, .. } if id == "b"),
            "{err}"
        );
        assert_eq!(
            err.dbus_error_name().as_deref(),
            Some(iface::ERROR_SAVE_FAILED)
        );
        let text = dbus_vmstate::error::chain(&err);
        assert!(
            text.contains("helper \"b\"") && text.contains("disk on fire"),
            "{text}"
        );
        assert!(!out.exists());
        assert_eq!((a.saves(), b.saves()), (1, 1));
        // Nothing but the two sockets is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_still_serves(&c, &[&a, &b]).await;
    });
}

#[test]
fn save_error_leaves_existing_file_untouched() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        std::fs::write(&out, b"previous").unwrap();
        let (c, _, _) =
            two_helpers(dir.path(), |b| b.fail_save("nope"), Duration::from_secs(10)).await;
        c.save_to_path(&out).await.unwrap_err();
        assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    });
}

#[test]
fn load_error_reply_names_helper() {
    run(async {
        let dir = tmpdir();
        let stream = good_stream(dir.path()).await;
        let (c, a, b) = two_helpers(
            dir.path(),
            |b| b.fail_load("bad version"),
            Duration::from_secs(10),
        )
        .await;
        // a holds other bytes than the stream's, so its Load shows.
        a.set_data(b"before the load".to_vec());
        let err = c
            .load(std::io::Cursor::new(stream), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Load, .. } if id == "b"),
            "{err}"
        );
        assert_eq!(
            err.dbus_error_name().as_deref(),
            Some(iface::ERROR_LOAD_FAILED)
        );
        assert!(dbus_vmstate::error::chain(&err).contains("bad version"));
        assert_eq!((a.loads(), b.loads()), (1, 1));
        assert_eq!(a.data(), pattern(5000, 1), "the other helper loaded");
        let status = c.status();
        assert!(status[0].last_load.is_some(), "a's load is reported");
        assert!(status[1].last_load.is_none(), "b's is not");
        assert_still_serves(&c, &[&a, &b]).await;
    });
}

#[test]
fn save_that_never_answers_times_out() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        let (c, _, _) = two_helpers(dir.path(), |b| b.hang_save(), SHORT).await;
        let err = c.save_to_path(&out).await.unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { id, call: Call::Save, .. } if id == "b"),
            "{err}"
        );
        assert!(err.is_timeout());
        assert!(!out.exists());
    });
}

#[test]
fn load_that_never_answers_times_out() {
    run(async {
        let dir = tmpdir();
        let stream = good_stream(dir.path()).await;
        let (c, a, _) = two_helpers(dir.path(), |b| b.hang_load(), SHORT).await;
        let err = c
            .load(std::io::Cursor::new(stream), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { id, call: Call::Load, .. } if id == "b"),
            "{err}"
        );
        assert_eq!(a.loads(), 1);
    });
}

#[test]
fn helper_exiting_during_save_fails_the_save() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let a = Raw::new("a").crash_in_save();
        let _conn = a.connect(&sock(dir.path(), "a")).await;
        connected(&c).await;
        let err = c.save_to_path(&out).await.unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Save, .. } if id == "a"),
            "a lost connection is a call error, not a timeout: {err}"
        );
        assert_eq!(a.calls(), 1);
        assert!(!out.exists());
    });
}

#[test]
fn helper_exiting_during_load_fails_the_load() {
    run(async {
        let dir = tmpdir();
        let records = vec![dbus_vmstate::stream::Record::new("a", vec![9; 100])];
        let stream = dbus_vmstate::stream::native::encode(&records).unwrap();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let a = Raw::new("a").crash_in_load();
        let _conn = a.connect(&sock(dir.path(), "a")).await;
        connected(&c).await;
        let err = c
            .load(std::io::Cursor::new(stream), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Load, .. } if id == "a"),
            "{err}"
        );
        assert_eq!(a.calls(), 1);
    });
}

#[test]
fn helper_claiming_another_id_is_rejected() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"])
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        // A helper whose Id is "b" connects to a's socket.
        let impostor = Fake::new("b", b"not a's state".to_vec());
        let task = impostor.spawn(sock(dir.path(), "a"));
        // The coordinator says why and closes the connection: the helper's
        // serve fails with that reason.
        let served = task.await;
        assert!(
            matches!(&served, Err(Error::Rejected { reason, .. }) if reason.contains("claims Id \"b\"")),
            "{served:?}"
        );
        let err = c.save_to_path(dir.path().join("out")).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotConnected { id, .. } if id == "a"),
            "{err}"
        );
        assert!(err.to_string().contains("claims Id \"b\""), "{err}");
        assert_eq!(impostor.saves(), 0);
        let status = c.status();
        assert!(!status[0].connected);
        assert!(status[0]
            .last_rejection
            .as_deref()
            .unwrap()
            .contains("\"b\""));
        // The real helper is accepted afterwards.
        let a = Fake::new("a", Vec::new());
        drop(a.spawn(sock(dir.path(), "a")));
        connected(&c).await;
        assert_still_serves(&c, &[&a]).await;
    });
}

#[test]
fn peer_with_disallowed_uid_is_rejected() {
    run(async {
        let dir = tmpdir();
        // Allow only a uid this process does not run as.
        let other_uid = if euid() == 4242 { 4243 } else { 4242 };
        let c = builder(dir.path(), &["a"])
            .allow_uid(other_uid)
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        let a = Fake::new("a", b"x".to_vec());
        // Turned away before the D-Bus handshake, the helper's serve fails.
        let served = a.spawn(sock(dir.path(), "a")).await;
        assert!(served.is_err(), "{served:?}");
        let err = c.save_to_path(dir.path().join("out")).await.unwrap_err();
        assert!(err.to_string().contains("is not allowed"), "{err}");
        assert_eq!(a.saves(), 0);
    });
}

#[test]
fn save_reply_of_wrong_type_is_rejected() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let _conn = Raw::new("a")
            .wrong_save_type()
            .connect(&sock(dir.path(), "a"))
            .await;
        connected(&c).await;
        let err = c.save_to_path(&out).await.unwrap_err();
        assert!(
            matches!(&err, Error::Call { id, call: Call::Save, .. } if id == "a"),
            "{err}"
        );
        let text = dbus_vmstate::error::chain(&err);
        assert!(
            text.contains("helper \"a\": Save call failed") && text.contains("ignature"),
            "names the helper and the signature mismatch: {text}"
        );
        assert!(!out.exists());
    });
}

#[test]
fn save_reply_over_the_size_cap_is_rejected() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        let c = builder(dir.path(), &["a"])
            .max_blob_bytes(1000)
            .bind()
            .unwrap();
        let a = Fake::new("a", vec![0; 1001]);
        drop(a.spawn(sock(dir.path(), "a")));
        let err = c.save_to_path(&out).await.unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge { id, size: 1001, limit: 1000, .. } if id == "a"),
            "{err}"
        );
        assert!(!out.exists());
        assert_still_serves(&c, &[&a]).await;
    });
}

#[test]
fn absent_optional_helper_is_skipped_and_reported() {
    run(async {
        let dir = tmpdir();
        let out = dir.path().join("out.vmstate");
        let c = builder(dir.path(), &["a", "b"])
            .optional("b")
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        drop(Fake::new("a", vec![1]).spawn(sock(dir.path(), "a")));
        let report = c.save_to_path(&out).await.unwrap();
        assert_eq!(report.helpers.len(), 1);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].id, "b");
        // The stream loads with b still absent.
        let loaded = c.load_from_path(&out, None).await.unwrap();
        assert_eq!(loaded.helpers.len(), 1);
        assert_eq!(loaded.skipped[0].id, "b");
    });
}

#[test]
fn reconnecting_helper_replaces_its_old_connection() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let first = Fake::new("a", b"first".to_vec());
        let first_task = first.spawn(sock(dir.path(), "a"));
        connected(&c).await;
        let second = Fake::new("a", b"second".to_vec());
        let _second_task = second.spawn(sock(dir.path(), "a"));
        // The old connection is closed by the coordinator once the new one
        // is accepted, so the first helper's serve returns.
        first_task.await.unwrap();
        let out = dir.path().join("out.vmstate");
        c.save_to_path(&out).await.unwrap();
        assert_eq!((first.saves(), second.saves()), (0, 1));
        let records = dbus_vmstate::stream::native::read_all(
            std::fs::File::open(&out).unwrap(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(records[0].data, b"second");
    });
}

#[test]
fn truncated_stream_completes_no_load() {
    run(async {
        let dir = tmpdir();
        let stream = good_stream(dir.path()).await;
        let (c, a, b) = two_helpers(dir.path(), |b| b, Duration::from_secs(10)).await;
        give_old([&a, &b]);
        // Cut at many places, including just before the end record.
        let cuts = [
            0,
            1,
            7,
            20,
            33,
            100,
            4000,
            stream.len() - 24,
            stream.len() - 1,
        ];
        for cut in cuts {
            let err = c
                .load(std::io::Cursor::new(stream[..cut].to_vec()), None)
                .await
                .unwrap_err();
            assert!(
                err.is_stream() || matches!(err, Error::Io { .. }),
                "cut {cut}: {err}"
            );
        }
        assert_all_old([&a, &b], "a bad stream");
        assert_still_serves(&c, &[&a, &b]).await;
    });
}

#[test]
fn flipped_bit_stream_completes_no_load() {
    run(async {
        let dir = tmpdir();
        let stream = good_stream(dir.path()).await;
        let (c, a, b) = two_helpers(dir.path(), |b| b, Duration::from_secs(10)).await;
        give_old([&a, &b]);
        for pos in [9, 30, 200, 4100, stream.len() - 30, stream.len() - 2] {
            let mut bad = stream.clone();
            bad[pos] ^= 0x10;
            let err = c.load(std::io::Cursor::new(bad), None).await.unwrap_err();
            assert!(err.is_stream(), "byte {pos}: {err}");
        }
        assert_all_old([&a, &b], "a bad stream");
        assert_still_serves(&c, &[&a, &b]).await;
    });
}

#[test]
fn stream_with_unknown_or_missing_helper_completes_no_load() {
    run(async {
        let dir = tmpdir();
        let (c, a, b) = two_helpers(dir.path(), |b| b, Duration::from_secs(10)).await;
        give_old([&a, &b]);
        use dbus_vmstate::stream::{native, Record};
        let unknown = native::encode(&[
            Record::new("a", vec![1]),
            Record::new("b", vec![2]),
            Record::new("zz", vec![3]),
        ])
        .unwrap();
        let err = c
            .load(std::io::Cursor::new(unknown), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::UnknownInStream { id } if id == "zz"),
            "{err}"
        );
        let missing = native::encode(&[Record::new("a", vec![1])]).unwrap();
        let err = c
            .load(std::io::Cursor::new(missing), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::MissingInStream { id } if id == "b"),
            "{err}"
        );
        assert_all_old([&a, &b], "a bad stream");
        assert_still_serves(&c, &[&a, &b]).await;
    });
}

/// Collects everything written into the other end of a socket pair.
fn drain_pair() -> (
    std::os::unix::net::UnixStream,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut out).unwrap();
        out
    });
    (w, reader)
}

#[test]
fn failed_save_into_a_pipe_leaves_no_complete_stream() {
    run(async {
        let dir = tmpdir();
        let (c, a, b) =
            two_helpers(dir.path(), |b| b.fail_save("nope"), Duration::from_secs(10)).await;
        let (w, reader) = drain_pair();
        c.save(w).await.unwrap_err();
        let bytes = rt::spawn_blocking(move || reader.join().unwrap()).await;
        let err = dbus_vmstate::stream::native::read_all(&bytes[..], Default::default())
            .expect_err("a failed save must not leave a complete stream");
        assert!(err.is_truncated(), "{err}");
        assert_still_serves(&c, &[&a, &b]).await;
    });
}

#[test]
fn dropped_save_releases_its_output_unfinished() {
    run(async {
        let dir = tmpdir();
        let (c, _, b) = two_helpers(dir.path(), |b| b.hang_save(), Duration::from_secs(30)).await;
        let (w, reader) = drain_pair();
        // The caller gives up on the save (e.g. its own deadline) once the
        // hung helper holds it open.
        let save = Box::pin(c.save(w));
        let hung = Box::pin(until("b's Save to start", || b.saves() == 1));
        match futures::future::select(save, hung).await {
            futures::future::Either::Left((result, _)) => {
                panic!("the hung helper keeps the save open: {result:?}")
            }
            futures::future::Either::Right(((), save)) => drop(save),
        }
        // The output is released (EOF) without waiting for the hung helper,
        // and holds no complete stream.
        let bytes = rt::timeout(
            Duration::from_secs(10),
            rt::spawn_blocking(move || reader.join().unwrap()),
        )
        .await
        .expect("output released");
        let err = dbus_vmstate::stream::native::read_all(&bytes[..], Default::default())
            .expect_err("a dropped save must not leave a complete stream");
        assert!(err.is_truncated(), "{err}");
    });
}
