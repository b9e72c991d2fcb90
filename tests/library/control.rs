//! The control interface through the library: `control::Server` around a
//! coordinator, `control::Client` calling it, in one process.

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;
use dbus_vmstate::control::{self, Client, ErrorKind, LoadOptions, SaveOptions, Server};
use dbus_vmstate::stream::{native, qemu, Format, Limits, Record};

fn control_path(dir: &Path) -> std::path::PathBuf {
    dir.join("control.sock")
}

fn start(dir: &Path, ids: &[&str]) -> Server {
    let c = builder(dir, ids).bind().unwrap();
    Server::bind(c, control_path(dir)).unwrap()
}

/// Reads everything from the other end of a socket pair in a thread.
fn drain(mut r: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    })
}

/// Feeds `bytes` into a socket pair in a thread and closes it.
fn feed(bytes: Vec<u8>) -> UnixStream {
    let (r, mut w) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    r
}

fn sorted(mut records: Vec<Record>) -> Vec<Record> {
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records
}

#[test]
fn save_into_a_file_then_load_from_a_socket() {
    run(async {
        let dir = tmpdir();
        let server = start(dir.path(), &["a", "b"]);
        let a = Fake::new("a", pattern(4097, 1));
        let b = Fake::new("b", Vec::new());
        let ha = a.spawn(sock(dir.path(), "a"));
        let hb = b.spawn(sock(dir.path(), "b"));
        let client = Client::connect(control_path(dir.path())).await.unwrap();

        let mut file = tempfile::tempfile_in(dir.path()).unwrap();
        let report = client.save(&file, &SaveOptions::default()).await.unwrap();
        assert_eq!(report.format, Format::Native);
        assert_eq!(report.helpers.len(), 2);
        let mut bytes = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(report.stream_bytes, Some(bytes.len() as u64));
        let records = native::read_all(&bytes[..], Limits::default()).unwrap();
        assert_eq!(
            sorted(records),
            [
                Record::new("a", pattern(4097, 1)),
                Record::new("b", Vec::new())
            ]
        );

        let status = client.status().await.unwrap();
        assert_eq!(status.len(), 2);
        assert!(status.iter().all(|s| s.connected));
        assert_eq!(status[0].pid, Some(std::process::id()));
        assert_eq!(status[0].last_save.as_ref().map(|t| t.bytes), Some(4097));

        a.set_data(b"changed".to_vec());
        let report = client
            .load(&feed(bytes), &LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(report.format, Format::Native);
        assert_eq!(report.stream_bytes, None);
        assert_eq!(a.data(), pattern(4097, 1));
        assert_eq!(
            client.status().await.unwrap()[0]
                .last_load
                .as_ref()
                .map(|t| t.bytes),
            Some(4097)
        );

        client.close().await;
        server.shutdown().await;
        ha.await.unwrap();
        hb.await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    });
}

#[test]
fn qemu_format_out_and_detected_in() {
    run(async {
        let dir = tmpdir();
        let server = start(dir.path(), &["idA"]);
        let a = Fake::new("idA", b"I'am\0idA!\0".to_vec());
        let _h = a.spawn(sock(dir.path(), "idA"));
        let client = Client::connect(control_path(dir.path())).await.unwrap();
        let (r, w) = UnixStream::pair().unwrap();
        let reader = drain(r);
        let report = client
            .save(&w, &SaveOptions::default().format(Format::Qemu))
            .await
            .unwrap();
        drop(w);
        let bytes = reader.join().unwrap();
        assert_eq!(report.format, Format::Qemu);
        assert_eq!(report.stream_bytes, Some(bytes.len() as u64));
        assert_eq!(
            qemu::decode(&bytes, Limits::default()).unwrap().records,
            [Record::new("idA", b"I'am\0idA!\0".to_vec())]
        );

        a.set_data(Vec::new());
        let report = client
            .load(&feed(bytes), &LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(report.format, Format::Qemu);
        assert_eq!(a.data(), b"I'am\0idA!\0");
        client.close().await;
        server.shutdown().await;
    });
}

#[test]
fn errors_are_named_and_name_the_helper() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a", "b"])
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        let server = Server::bind(c, control_path(dir.path())).unwrap();
        let a = Fake::new("a", b"a".to_vec()).fail_save("disk on fire");
        let _h = a.spawn(sock(dir.path(), "a"));
        let client = Client::connect(control_path(dir.path())).await.unwrap();

        // b never connects.
        let sink = tempfile::tempfile_in(dir.path()).unwrap();
        let e = client
            .save(&sink, &SaveOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::NotConnected), "{e}");
        assert!(e.to_string().contains("helper \"b\""), "{e}");
        assert!(e.is_migration_failure());
        assert_eq!(a.saves(), 0, "no Save while a required helper is missing");

        let b = Fake::new("b", b"b".to_vec());
        let _hb = b.spawn(sock(dir.path(), "b"));
        let e = client
            .save(
                &sink,
                &SaveOptions::default().connect_timeout(Duration::from_secs(10)),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::HelperFailed), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("helper \"a\"") && msg.contains("disk on fire"),
            "{msg}"
        );
        assert!(msg.contains(control::ERROR_HELPER_FAILED), "{msg}");

        // A corrupt stream: nothing loaded. (Read from a pipe, streaming
        // helpers are called as their states arrive; none completes.)
        give_old([&a, &b]);
        let mut bytes = native::encode(&[
            Record::new("a", b"x".to_vec()),
            Record::new("b", b"y".to_vec()),
        ])
        .unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 0x80;
        let e = client
            .load(&feed(bytes), &LoadOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::StreamRejected), "{e}");
        assert_all_old([&a, &b], "a corrupt stream");

        // A stream for a helper this coordinator does not know.
        let bytes = native::encode(&[
            Record::new("a", b"x".to_vec()),
            Record::new("b", b"y".to_vec()),
            Record::new("stranger", b"z".to_vec()),
        ])
        .unwrap();
        let e = client
            .load(&feed(bytes), &LoadOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::StreamRejected), "{e}");
        assert!(e.to_string().contains("\"stranger\""), "{e}");
        assert_all_old([&a, &b], "a stream with an unknown Id");
        client.close().await;
        server.shutdown().await;
    });
}

#[test]
fn bad_arguments_are_invalid_args_before_any_helper_call() {
    run(async {
        let dir = tmpdir();
        let server = start(dir.path(), &["a"]);
        let a = Fake::new("a", b"a".to_vec());
        let _h = a.spawn(sock(dir.path(), "a"));
        let client = Client::connect(control_path(dir.path())).await.unwrap();

        // A descriptor open in the wrong direction.
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let read_only = std::fs::File::open(&path).unwrap();
        let e = client
            .save(&read_only, &SaveOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::InvalidArgs), "{e}");
        assert!(e.to_string().contains("not open for writing"), "{e}");
        assert!(!e.is_migration_failure());
        let write_only = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let e = client
            .load(&write_only, &LoadOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not open for reading"), "{e}");
        assert_eq!((a.saves(), a.loads()), (0, 0));

        // Unknown option keys and values, sent by hand.
        let stream = UnixStream::connect(control_path(dir.path())).unwrap();
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
            .unwrap();
        let sink = tempfile::tempfile_in(dir.path()).unwrap();
        for (key, value) in [
            ("frobnicate", zbus::Variant::from(true)),
            ("format", zbus::Variant::from("tar")),
        ] {
            let options = HashMap::from([(key, value)]);
            let e = conn
                .call_method(
                    None::<&str>,
                    control::OBJECT_PATH,
                    Some(control::INTERFACE),
                    "Save",
                    &(zbus::Fd::from(&sink), options),
                )
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(text.contains("InvalidArgs"), "{key}: {text}");
        }
        assert_eq!(a.saves(), 0);
        conn.close().await.unwrap();
        client.close().await;
        server.shutdown().await;
    });
}

/// One save or load at a time; shutting down cancels the one in progress
/// and cuts its stream off before the end record, so no reader takes the
/// partial stream for a complete one.
#[test]
fn busy_then_shutdown_cuts_the_stream_off() {
    run(async {
        let dir = tmpdir();
        let server = start(dir.path(), &["fast", "stuck"]);
        let fast = Fake::new("fast", pattern(1 << 20, 5));
        let stuck = Fake::new("stuck", Vec::new()).hang_save();
        let _hf = fast.spawn(sock(dir.path(), "fast"));
        let _hs = stuck.spawn(sock(dir.path(), "stuck"));
        let path = control_path(dir.path());

        let (mut r, w) = UnixStream::pair().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let reader = std::thread::spawn({
            let received = received.clone();
            move || {
                let mut out = Vec::new();
                let mut buf = [0u8; 64 << 10];
                loop {
                    match r.read(&mut buf).unwrap() {
                        0 => break out,
                        n => {
                            out.extend_from_slice(&buf[..n]);
                            received.fetch_add(n, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
        let first = rt::spawn({
            let path = path.clone();
            async move {
                let client = Client::connect(&path).await.unwrap();
                let result = client.save(&w, &SaveOptions::default()).await;
                drop(w);
                result
            }
        });
        // Wait until the fast helper's state has reached the stream while
        // the stuck helper holds the save open.
        until(
            "fast's state in the stream and stuck's Save under way",
            || stuck.saves() == 1 && received.load(Ordering::SeqCst) >= 1 << 20,
        )
        .await;

        let client = Client::connect(&path).await.unwrap();
        let sink = tempfile::tempfile_in(dir.path()).unwrap();
        let e = client
            .save(&sink, &SaveOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::Busy), "{e}");
        assert!(!e.is_migration_failure());
        // Status still answers meanwhile.
        assert_eq!(client.status().await.unwrap().len(), 2);
        drop(client);

        server.shutdown().await;
        let e = first.await.unwrap_err();
        assert!(e.is_migration_failure(), "{e}");
        let bytes = reader.join().unwrap();
        assert!(
            bytes.len() >= 1 << 20,
            "the fast helper's state was written"
        );
        match native::read_all(&bytes[..], Limits::default()) {
            Err(e) => assert!(e.is_truncated(), "{e}"),
            Ok(records) => panic!(
                "a cancelled save left a complete stream of {:?}",
                records.iter().map(|r| &r.id).collect::<Vec<_>>()
            ),
        }
        assert_eq!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".sock")
                })
                .count(),
            0
        );
    });
}

#[test]
fn server_from_a_listener_leaves_its_file() {
    run(async {
        let dir = tmpdir();
        let path = control_path(dir.path());
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = builder(dir.path(), &["b"])
            .bind_with([(
                "a".to_string(),
                std::os::unix::net::UnixListener::bind(dir.path().join("stray.sock")).unwrap(),
            )])
            .unwrap_err();
        assert!(e.to_string().contains("not in the helper list"), "{e}");
        assert!(
            !sock(dir.path(), "b").exists(),
            "nothing bound on a bad configuration"
        );
        let c = builder(dir.path(), &["a"])
            .bind_with([(
                "a".to_string(),
                std::os::unix::net::UnixListener::bind(dir.path().join("passed-a.sock")).unwrap(),
            )])
            .unwrap();
        assert_eq!(
            c.helpers().next().unwrap().socket,
            dir.path().join("passed-a.sock")
        );
        assert!(
            !sock(dir.path(), "a").exists(),
            "a passed socket is not bound again"
        );
        let server = Server::from_listener(c, listener).unwrap();
        assert_eq!(server.path(), Some(path.as_path()));
        let a = Fake::new("a", b"via passed socket".to_vec());
        let _h = a.spawn(dir.path().join("passed-a.sock"));
        let client = Client::connect(&path).await.unwrap();
        let (r, w) = UnixStream::pair().unwrap();
        let reader = drain(r);
        client.save(&w, &SaveOptions::default()).await.unwrap();
        drop(w);
        let records = native::read_all(&reader.join().unwrap()[..], Limits::default()).unwrap();
        assert_eq!(records, [Record::new("a", b"via passed socket".to_vec())]);
        client.close().await;
        server.shutdown().await;
        assert!(path.exists() && dir.path().join("passed-a.sock").exists());
        std::fs::remove_file(dir.path().join("stray.sock")).unwrap();
    });
}
