//! The coordinator's side of the SASL handshake, byte for byte, in the
//! styles of the D-Bus libraries helpers are written on (as each of them
//! was seen to send it with strace).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::util::{builder, euid, rt, run, sock, tmpdir, until, Fake};

/// How long the test waits for any reply from the coordinator.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid as EXTERNAL sends it: its decimal digits, hex-encoded.
fn hex_uid() -> String {
    euid()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects to a coordinator's socket for helper "a".
fn connect(dir: &std::path::Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(sock(dir, "a")).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let reader = BufReader::new(s.try_clone().unwrap());
    (s, reader)
}

fn line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l)
        .expect("a reply line from the coordinator");
    assert!(l.ends_with("\r\n"), "reply not terminated by CRLF: {l:?}");
    l.truncate(l.len() - 2);
    l
}

/// Checks `OK <guid>`: a GUID of 32 hex digits, as every library expects.
fn assert_ok_guid(l: &str) {
    let guid = l
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("expected OK, got {l:?}"));
    assert_eq!(guid.len(), 32, "GUID {guid:?} is not 32 hex digits");
    assert!(guid.bytes().all(|b| b.is_ascii_hexdigit()), "GUID {guid:?}");
}

/// After BEGIN the connection speaks D-Bus: the coordinator's first
/// message is its method call reading the helper's Id.
fn assert_dbus_call_follows(r: &mut BufReader<UnixStream>) {
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed)
        .expect("a D-Bus message after BEGIN");
    assert!(
        matches!(fixed[0], b'l' | b'B'),
        "endianness byte {:#x}",
        fixed[0]
    );
    assert_eq!(fixed[1], 1, "message type (1 = method call)");
    assert_eq!(fixed[3], 1, "protocol version");
}

fn with_coordinator(f: impl FnOnce(&std::path::Path) + Send + 'static) {
    run(async move {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let path = dir.path().to_path_buf();
        rt::spawn_blocking(move || f(&path)).await;
        c.shutdown().await;
    });
}

/// GDBus first sends a bare AUTH to learn the mechanisms, then EXTERNAL
/// with the uid, then NEGOTIATE_UNIX_FD and BEGIN, one line at a time.
#[test]
fn gdbus_style_bare_auth_then_external() {
    with_coordinator(|dir| {
        let (mut w, mut r) = connect(dir);
        w.write_all(b"\0AUTH\r\n").unwrap();
        assert_eq!(line(&mut r), "REJECTED EXTERNAL");
        w.write_all(format!("AUTH EXTERNAL {}\r\n", hex_uid()).as_bytes())
            .unwrap();
        assert_ok_guid(&line(&mut r));
        w.write_all(b"NEGOTIATE_UNIX_FD\r\n").unwrap();
        assert_eq!(line(&mut r), "AGREE_UNIX_FD");
        w.write_all(b"BEGIN\r\n").unwrap();
        assert_dbus_call_follows(&mut r);
    });
}

/// libdbus sends EXTERNAL with the uid at once.
#[test]
fn libdbus_style_external_with_uid() {
    with_coordinator(|dir| {
        let (mut w, mut r) = connect(dir);
        w.write_all(format!("\0AUTH EXTERNAL {}\r\n", hex_uid()).as_bytes())
            .unwrap();
        assert_ok_guid(&line(&mut r));
        w.write_all(b"NEGOTIATE_UNIX_FD\r\n").unwrap();
        assert_eq!(line(&mut r), "AGREE_UNIX_FD");
        w.write_all(b"BEGIN\r\n").unwrap();
        assert_dbus_call_follows(&mut r);
    });
}

/// sd-bus pipelines the whole exchange in one write, with EXTERNAL's
/// empty DATA ("use my socket credentials").
#[test]
fn sdbus_style_pipelined_in_one_write() {
    with_coordinator(|dir| {
        let (mut w, mut r) = connect(dir);
        w.write_all(b"\0AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
            .unwrap();
        assert_eq!(line(&mut r), "DATA");
        assert_ok_guid(&line(&mut r));
        assert_eq!(line(&mut r), "AGREE_UNIX_FD");
        assert_dbus_call_follows(&mut r);
    });
}

/// What zbus's own handshake does not survive or answer is contained to
/// that one connection: a bare "\n" line (which crashes zbus 6.2.1's
/// handshake code) and a mechanism other than EXTERNAL (which it does not
/// reject with REJECTED, as the specification asks, but answers by closing
/// the connection). The coordinator records why, and the next connection
/// is accepted.
#[test]
fn malformed_handshakes_close_only_their_connection() {
    let attempts: [&'static [u8]; 3] = [
        b"\n",
        b"\0AUTH EXTERNAL 30\r\n\n",
        b"\0AUTH DBUS_COOKIE_SHA1 30\r\n",
    ];
    for attempt in attempts {
        run(async move {
            let dir = tmpdir();
            let c = builder(dir.path(), &["a"]).bind().unwrap();
            let path = dir.path().to_path_buf();
            let p = path.clone();
            let closed = rt::spawn_blocking(move || {
                let (mut w, mut r) = connect(&p);
                w.write_all(attempt).unwrap();
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).map(|_| rest)
            })
            .await;
            let rest = closed.expect("the coordinator closes the connection");
            assert!(
                rest.is_empty() || rest.starts_with(b"OK "),
                "unexpected reply to {attempt:?}: {rest:?}"
            );
            // The rejection is recorded right after the socket closes.
            let mut why = String::new();
            until("the rejection to be recorded", || {
                why = c.status()[0].last_rejection.take().unwrap_or_default();
                !why.is_empty()
            })
            .await;
            assert!(why.contains("handshake failed"), "{attempt:?}: {why:?}");

            // A well-formed helper still gets in.
            let task = Fake::new("a", vec![1, 2, 3]).spawn(sock(&path, "a"));
            let (_, report) = c.save(Vec::new()).await.unwrap();
            assert_eq!(report.helpers[0].transfer.bytes, 3);
            c.shutdown().await;
            task.await.unwrap();
        });
    }
}
