//! Hostile or broken peers: bad Ids, clients that never finish the D-Bus
//! handshake, other users. Each is turned away without disturbing the
//! helpers that behave.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;
use dbus_vmstate::coordinator::Coordinator;
use dbus_vmstate::{iface, Error};

/// A helper on raw zbus that reports whatever Id it is given.
async fn connect_any_id(socket: &Path, id: &str) -> zbus::Connection {
    Raw::new(id)
        .with_data(b"impostor".to_vec())
        .connect(socket)
        .await
}

#[test]
fn helpers_with_invalid_ids_are_rejected() {
    let long = "x".repeat(256);
    for (bad, reason) in [
        ("", "is invalid: invalid helper id: empty"),
        (
            long.as_str(),
            "is invalid: invalid helper id: longer than 255 bytes",
        ),
        // A D-Bus string cannot hold a NUL: the reply itself is refused.
        ("a\0b", "reading its Id failed: invalid value: character"),
        ("A", "claims Id \"A\""),
    ] {
        run(async {
            let dir = tmpdir();
            let c = builder(dir.path(), &["a"])
                .connect_timeout(SHORT)
                .bind()
                .unwrap();
            let conn = connect_any_id(&sock(dir.path(), "a"), bad).await;
            // The coordinator hangs up on it.
            within("the coordinator to hang up", conn.closed()).await;
            let err = c.save(Vec::new()).await.unwrap_err();
            assert!(
                matches!(&err, Error::NotConnected { id, .. } if id == "a"),
                "{err}"
            );
            assert!(err.to_string().contains(reason), "Id {bad:?}: {err}");
            // The reason is recorded in the status too.
            let status = &c.status()[0];
            assert!(!status.connected, "{status:?}");
            assert!(
                status
                    .last_rejection
                    .as_deref()
                    .is_some_and(|r| r.contains(reason)),
                "Id {bad:?}: {status:?}"
            );
            // A helper with a valid Id is accepted afterwards.
            let a = Fake::new("a", Vec::new());
            drop(a.spawn(sock(dir.path(), "a")));
            connected(&c).await;
            assert_still_serves(&c, &[&a]).await;
        });
    }
}

/// Reads until EOF or error; true if the peer hung up within `limit`.
fn hung_up_within(stream: &mut UnixStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timed out: still open
        }
    }
}

#[test]
fn client_that_never_authenticates_is_dropped_after_the_deadline() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"])
            .handshake_timeout(Duration::from_millis(300))
            .bind()
            .unwrap();
        let path = sock(dir.path(), "a");
        let dropped = rt::spawn_blocking(move || {
            let started = Instant::now();
            let mut silent = UnixStream::connect(&path).unwrap();
            // Held open (one socket) until the deadline...
            let early = hung_up_within(&mut silent, Duration::from_millis(100));
            // ...and dropped after it.
            let late = hung_up_within(&mut silent, Duration::from_secs(10));
            (early, late, started.elapsed())
        })
        .await;
        assert_eq!(
            (dropped.0, dropped.1),
            (false, true),
            "open before the deadline, dropped after it"
        );
        assert!(dropped.2 >= Duration::from_millis(300), "{:?}", dropped.2);
        // The client can see the hang-up before the coordinator records
        // why.
        handshake_rejected_then_serves(&c, dir.path()).await;
    });
}

#[test]
fn client_stalling_mid_handshake_is_dropped_after_the_deadline() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"])
            .handshake_timeout(Duration::from_millis(300))
            .bind()
            .unwrap();
        let path = sock(dir.path(), "a");
        let dropped = rt::spawn_blocking(move || {
            let started = Instant::now();
            let mut s = UnixStream::connect(&path).unwrap();
            // The credentials byte and the start of EXTERNAL auth, then
            // nothing more.
            s.write_all(b"\0AUTH EXTERNAL 30\r\n").unwrap();
            // The coordinator answers the AUTH line (DATA, or OK), so read
            // on until it hangs up.
            let late = hung_up_within(&mut s, Duration::from_secs(10));
            (late, started.elapsed())
        })
        .await;
        assert!(dropped.0, "stalled client must be disconnected");
        assert!(
            dropped.1 >= Duration::from_millis(300),
            "dropped at the deadline, not before: {:?}",
            dropped.1
        );
        handshake_rejected_then_serves(&c, dir.path()).await;
    });
}

#[test]
fn stalled_clients_do_not_hold_up_a_real_helper() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"])
            .handshake_timeout(Duration::from_secs(30))
            .bind()
            .unwrap();
        let path = sock(dir.path(), "a");
        // 32 clients connect and say nothing, each costing one socket.
        let mut stalled: Vec<UnixStream> = (0..32)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let a = Fake::new("a", b"real".to_vec());
        let _task = a.spawn(&path);
        let (out, report) = c.save(Vec::new()).await.unwrap();
        assert_eq!(report.helpers.len(), 1);
        assert!(!out.is_empty());
        // They are still pending: the save did not wait for them.
        for s in &mut stalled {
            assert!(!hung_up_within(s, Duration::from_millis(1)));
        }
    });
}

#[test]
fn second_connection_on_a_socket_replaces_the_first() {
    // The documented rule: the newest connection that passes the checks
    // (uid, Id) becomes the helper; the older one is closed.
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let path = sock(dir.path(), "a");
        // Both connections come from this process (one pid), so they are
        // told apart by the state each serves.
        let first = Raw::new("a")
            .with_data(b"first".to_vec())
            .connect(&path)
            .await;
        connected(&c).await;
        let second = Raw::new("a")
            .with_data(b"second".to_vec())
            .connect(&path)
            .await;
        within("the first connection to close", first.closed()).await;
        assert!(!second.is_closed());
        assert!(c.status()[0].connected);
        let (out, _) = c.save(Vec::new()).await.unwrap();
        let records = dbus_vmstate::stream::native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(records[0].data, b"second", "the newest connection is saved");
        // A rejected newcomer (wrong Id) does not displace the helper.
        let intruder = connect_any_id(&path, "b").await;
        within("the intruder to be closed", intruder.closed()).await;
        assert!(!second.is_closed());
        let (out, _) = c.save(Vec::new()).await.unwrap();
        let records = dbus_vmstate::stream::native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(records[0].data, b"second", "the intruder displaced nobody");
    });
}

#[test]
fn replaced_connection_is_closed_once_its_running_call_finishes() {
    // The rule's second half: a Save running on the old connection when a
    // newer one is accepted still finishes (with the old helper's state),
    // and only then is the old connection closed.
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let path = sock(dir.path(), "a");
        let first = Fake::new("a", b"first".to_vec()).save_does(Step::Held);
        let mut first_task = first.spawn(&path);
        connected(&c).await;
        let save = c.save(Vec::new());
        let replace = async {
            until("the first helper's Save to start", || first.saves() == 1).await;
            let second = Raw::new("a").with_data(b"second".to_vec());
            let second_conn = second.connect(&path).await;
            // The coordinator accepts it once it has read its Id.
            until("the second connection's Id to be read", || {
                second.id_reads() >= 1
            })
            .await;
            assert!(c.status()[0].connected);
            // The old connection stays open while its Save runs.
            assert!(
                futures::poll!(&mut first_task).is_pending(),
                "the old connection was closed with a call running on it"
            );
            first.release();
            (second, second_conn)
        };
        let (saved, (second, _second_conn)) = futures::join!(save, replace);
        let (out, _) = saved.expect("the running Save finishes");
        let records = dbus_vmstate::stream::native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(records[0].data, b"first");
        // Then the old connection is closed: its helper's serve returns.
        within("the old connection to close", first_task)
            .await
            .unwrap();
        let (out, _) = c.save(Vec::new()).await.unwrap();
        let records = dbus_vmstate::stream::native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(
            records[0].data, b"second",
            "the newer connection serves now"
        );
        assert_eq!((first.saves(), second.calls()), (1, 1));
    });
}

/// The uid the cross-user tests run helpers as.
const NOBODY: u32 = 65534;

/// A world-readable copy of the binary and a state file, in a directory
/// `nobody` can enter, so the helper can run as another user wherever the
/// checkout lives.
fn nobody_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tmpdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let exe = dir.path().join("dbus-vmstate");
    std::fs::copy(env!("CARGO_BIN_EXE_dbus-vmstate"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::write(&state, b"nobody's state").unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, exe, state)
}

fn helper_as_nobody(exe: &Path, socket: &Path, state: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new(exe)
        .args(["helper", "--connect-timeout", "3", "--id", "a", "--socket"])
        .arg(socket)
        .arg("--state-file")
        .arg(state)
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn other_user_cannot_reach_a_0600_socket() {
    if !require(Requirement::Root) {
        return;
    }
    run(async {
        let (dir, exe, state) = nobody_setup();
        let c = builder(dir.path(), &["a"])
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        let child = helper_as_nobody(&exe, &sock(dir.path(), "a"), &state);
        let out = rt::spawn_blocking(move || child.wait_with_output().unwrap()).await;
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ermission denied"), "{stderr}");
        assert!(c.save(Vec::new()).await.is_err());
    });
}

#[test]
fn other_user_is_refused_by_peer_uid_even_on_an_open_socket() {
    if !require(Requirement::Root) {
        return;
    }
    run(async {
        let (dir, exe, state) = nobody_setup();
        let c = builder(dir.path(), &["a"])
            .connect_timeout(Duration::from_secs(5))
            .bind()
            .unwrap();
        // A misconfigured socket anyone can connect to: the uid check is
        // the second line of defence.
        let path = sock(dir.path(), "a");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut child = helper_as_nobody(&exe, &path, &state);
        let err = c.save(Vec::new()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("peer uid {NOBODY} is not allowed")),
            "{err}"
        );
        let _ = child.kill();
        let _ = child.wait();
    });
}

#[test]
fn socket_owner_lets_exactly_that_user_in() {
    if !require(Requirement::Root) {
        return;
    }
    run(async {
        let (dir, exe, state) = nobody_setup();
        let c = builder(dir.path(), &["a"])
            .socket_owner(NOBODY, Some(NOBODY))
            .bind()
            .unwrap();
        let path = sock(dir.path(), "a");
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));
        let child = helper_as_nobody(&exe, &path, &state);
        let (out, _) = c.save(Vec::new()).await.unwrap();
        let records = dbus_vmstate::stream::native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(records[0].data, b"nobody's state");
        assert_eq!(c.status()[0].uid, Some(NOBODY));
        c.shutdown().await;
        let out = rt::spawn_blocking(move || child.wait_with_output().unwrap()).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!path.exists(), "socket removed on shutdown");
    });
}

#[test]
fn anonymous_authentication_is_refused() {
    run(async {
        let dir = tmpdir();
        // The handshake deadline is far beyond the read timeout: a hang-up
        // within it is the refusal, not the deadline.
        let c = builder(dir.path(), &["a"])
            .handshake_timeout(Duration::from_secs(60))
            .bind()
            .unwrap();
        let path = sock(dir.path(), "a");
        let reply = rt::spawn_blocking(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // "anonymous" as trace data, hex-encoded.
            s.write_all(b"\0AUTH ANONYMOUS 616e6f6e796d6f7573\r\n")
                .unwrap();
            // Read until the first line or a hang-up; a read timeout (the
            // coordinator saying nothing) fails the test.
            let mut reply = Vec::new();
            let mut buf = [0u8; 256];
            while !reply.ends_with(b"\r\n") {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("no answer to AUTH ANONYMOUS: {e}"),
                }
            }
            String::from_utf8_lossy(&reply).into_owned()
        })
        .await;
        // Refused: a REJECTED line that offers EXTERNAL (not ANONYMOUS),
        // or a hang-up with nothing said.
        assert!(
            reply.is_empty()
                || (reply.starts_with("REJECTED")
                    && reply.contains("EXTERNAL")
                    && !reply.contains("ANONYMOUS")),
            "ANONYMOUS must be refused: {reply:?}"
        );
        // The refused handshake is in status, and EXTERNAL is still
        // accepted on that socket.
        handshake_rejected_then_serves(&c, dir.path()).await;
    });
}

#[test]
fn a_helper_cannot_reach_another_helper_through_the_coordinator() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a", "b"]).bind().unwrap();
        let b = Fake::new("b", b"b's secret".to_vec());
        drop(b.spawn(sock(dir.path(), "b")));
        let a = connect_any_id(&sock(dir.path(), "a"), "a").await;
        connected(&c).await;
        // Helper a asks its peer (the coordinator) for org.qemu.VMState1
        // state, addressed as on a bus and as on a peer connection.
        for destination in [Some("org.qemu.VMState1"), None] {
            let call = a.call_method(
                destination,
                iface::OBJECT_PATH,
                Some(iface::INTERFACE),
                "Save",
                &(),
            );
            let reply = within("a reply", call).await;
            assert!(
                reply.is_err(),
                "the coordinator serves no helper state: {reply:?}"
            );
        }
        assert_eq!(b.saves(), 0, "nothing is routed to b");
    });
}

#[test]
fn helper_that_disconnects_between_calls_and_reconnects_is_served() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let path = sock(dir.path(), "a");
        let first = connect_any_id(&path, "a").await;
        connected(&c).await;
        c.save(Vec::new()).await.unwrap();
        first.close().await.unwrap();
        // The coordinator notices the hang-up.
        until("the coordinator to notice the hang-up", || {
            !c.status()[0].connected
        })
        .await;
        // A save now waits for it to come back: polled once, it is under
        // way and cannot finish without the helper.
        let mut save = std::pin::pin!(c.save(Vec::new()));
        assert!(futures::poll!(save.as_mut()).is_pending());
        let _conn = connect_any_id(&path, "a").await;
        let (out, report) = save.await.unwrap();
        assert_eq!(report.helpers.len(), 1);
        let records = dbus_vmstate::stream::native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(records[0].data, b"impostor");
    });
}

/// The coordinator recorded a handshake failure for helper "a", is not
/// connected to the stalled client, and then serves a real helper.
async fn handshake_rejected_then_serves(c: &Coordinator, dir: &Path) {
    until("the rejection to be recorded", || {
        c.status()[0].last_rejection.is_some()
    })
    .await;
    let status = &c.status()[0];
    assert!(!status.connected);
    assert!(
        status
            .last_rejection
            .as_deref()
            .unwrap()
            .contains("handshake"),
        "{status:?}"
    );
    let a = Fake::new("a", Vec::new());
    drop(a.spawn(sock(dir, "a")));
    connected(c).await;
    assert_still_serves(c, &[&a]).await;
}
