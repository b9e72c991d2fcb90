//! `serve`'s life cycle as a process: signals, socket activation, service
//! manager notification, refusals, client usage errors.

use std::path::Path;
use std::process::Stdio;

use crate::util::process::*;
use crate::util::{pattern, run, tmpdir};
use dbus_vmstate::stream::{native, Limits, Record};

#[test]
fn sigterm_and_sigint_remove_every_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let tmp = tmpdir();
        let root = tmp.path();
        let dir = root.join("s");
        std::fs::write(root.join("a.state"), b"a").unwrap();
        let serve = Serve::start(&dir, &["--id-list", "a,b"]);
        assert_eq!(entries(&dir), ["a.sock", "b.sock", "control.sock"]);
        let helper = Helper::file(&dir, "a", &root.join("a.state"));
        wait_until("helper a to connect", || {
            serve.log().contains("helper connected")
        });
        let status = serve.stop(sig);
        assert_eq!(status.code(), Some(0), "signal {sig}");
        assert_eq!(entries(&dir), Vec::<String>::new(), "signal {sig}");
        assert!(
            helper.wait().success(),
            "the helper sees the coordinator close"
        );
    }
}

/// SIGTERM while a save runs: the save fails, and leaves no file.
#[test]
fn sigterm_during_a_save_leaves_no_file() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    std::fs::write(root.join("fast.state"), pattern(100_000, 1)).unwrap();
    let serve = Serve::start(&dir, &["--id-list", "fast,slow"]);
    let _f = Helper::file(&dir, "fast", &root.join("fast.state"));
    let marker = root.join("started");
    let slow_cmd = blocking_save_cmd(&marker);
    let _s = Helper::start(&dir, "slow", &["--save-cmd", &slow_cmd]);
    let out_dir = root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("x.vmstate");
    let saver = bin()
        .args(["save", "--control", &serve.control_arg(), "--output"])
        .arg(&target)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the slow save to start", || marker.exists());
    let status = serve.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let out = wait_output(saver);
    assert_exit(&out, 1);
    assert!(!target.exists());
    assert_eq!(entries(&out_dir), Vec::<String>::new());
    assert_eq!(entries(&dir), Vec::<String>::new());
}

/// Interrupting the `save` client removes its temporary file.
#[test]
fn interrupted_save_client_removes_its_temporary_file() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let serve = Serve::start(&dir, &["--id-list", "slow"]);
    let marker = root.join("started");
    let slow_cmd = blocking_save_cmd(&marker);
    let _s = Helper::start(&dir, "slow", &["--save-cmd", &slow_cmd]);
    let out_dir = root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut saver = bin()
        .args(["save", "--control", &serve.control_arg(), "--output"])
        .arg(out_dir.join("x.vmstate"))
        .spawn()
        .unwrap();
    wait_until("the slow save to start", || marker.exists());
    assert_eq!(
        entries(&out_dir).len(),
        1,
        "the temporary file exists meanwhile"
    );
    signal(saver.id(), libc::SIGINT);
    let status = wait(&mut saver);
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert_eq!(entries(&out_dir), Vec::<String>::new());
}

/// systemd socket activation: listening sockets passed as fds 3, 4 and 5,
/// named by LISTEN_FDNAMES (the control socket, a helper's, QEMU's), used
/// instead of binding; left in place on exit.
#[test]
#[allow(unsafe_code)] // pre_exec, to place the passed sockets at fds 3 to 5
fn socket_activation_uses_passed_sockets() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::CommandExt;

    let tmp = tmpdir();
    let root = tmp.path();
    let systemd_dir = root.join("sd");
    std::fs::create_dir(&systemd_dir).unwrap();
    let a_path = systemd_dir.join("helper-a.sock");
    let control_path = systemd_dir.join("ctl.sock");
    let a = UnixListener::bind(&a_path).unwrap();
    let control = UnixListener::bind(&control_path).unwrap();
    let qemu_path = systemd_dir.join("vm0-qemu.sock");
    let qemu = UnixListener::bind(&qemu_path).unwrap();
    let fds = [control.as_raw_fd(), a.as_raw_fd(), qemu.as_raw_fd()];

    // LISTEN_PID must be serve's own pid: the shell sets it to its pid,
    // then execs serve in its place.
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_dbus-vmstate"))
        .env("LISTEN_FDS", "3")
        .env("LISTEN_FDNAMES", "control:a:qemu");
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let dir = root.join("s");
    let serve = Serve::start_with(cmd, &dir, &["--id-list", "a,b"]);
    assert!(
        serve
            .ready
            .contains(&format!("control {}", control_path.display())),
        "{}",
        serve.ready
    );
    assert!(
        serve.ready.contains(&format!("a={}", a_path.display())),
        "{}",
        serve.ready
    );
    assert!(
        serve
            .ready
            .contains(&format!("qemu {}", qemu_path.display())),
        "{}",
        serve.ready
    );
    // Helper b was not passed: serve bound it in the socket directory.
    assert_eq!(entries(&dir), ["b.sock"]);

    std::fs::write(root.join("a.state"), b"activated").unwrap();
    std::fs::write(root.join("b.state"), b"bound").unwrap();
    let _ha = bin()
        .args(["helper", "--id", "a", "--socket"])
        .arg(&a_path)
        .arg("--state-file")
        .arg(root.join("a.state"))
        .spawn()
        .map(Helper)
        .unwrap();
    let _hb = Helper::file(&dir, "b", &root.join("b.state"));
    let stream = root.join("x.vmstate");
    let out = run_bin([
        "save",
        "--control",
        control_path.to_str().unwrap(),
        "--output",
        stream.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let mut records =
        native::read_all(std::fs::File::open(&stream).unwrap(), Limits::default()).unwrap();
    records.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(records[0], Record::new("a", b"activated".to_vec()));
    // QEMU's passed socket answers as a bus: a bus client's Hello is
    // answered, and ListQueuedOwners lists both helpers.
    let listed = run(async {
        let stream = std::os::unix::net::UnixStream::connect(&qemu_path).unwrap();
        let qemu = zbus::connection::Builder::unix_stream(stream)
            .build()
            .await
            .expect("the passed QEMU socket answers Hello");
        let reply = qemu
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "ListQueuedOwners",
                &("org.qemu.VMState1",),
            )
            .await
            .expect("ListQueuedOwners");
        reply.body().deserialize::<Vec<String>>().unwrap()
    });
    assert_eq!(listed.len(), 2, "{listed:?}");

    assert_eq!(serve.stop(libc::SIGTERM).code(), Some(0));
    assert_eq!(
        entries(&dir),
        Vec::<String>::new(),
        "its own socket is removed"
    );
    assert!(
        a_path.exists() && control_path.exists() && qemu_path.exists(),
        "passed sockets stay"
    );
}

#[test]
#[allow(unsafe_code)] // pre_exec, to place the passed socket at fd 3
fn socket_activation_rejects_an_unknown_name() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::CommandExt;

    let tmp = tmpdir();
    let listener = UnixListener::bind(tmp.path().join("x.sock")).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_dbus-vmstate"))
        .args(["serve", "--socket-dir"])
        .arg(tmp.path().join("s"))
        .args(["--id-list", "a"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "vm0-vmstate.socket")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl and dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
            if high < 0 || libc::dup2(high, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = wait_output(cmd.spawn().unwrap());
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("\"vm0-vmstate.socket\"") && err.contains("FileDescriptorName"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no ready line");
}

/// Type=notify services: READY=1 once the sockets are bound.
#[test]
fn notifies_the_service_manager_when_ready() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tmpdir();
    let notify_path = tmp.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut cmd = bin();
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let serve = Serve::start_with(cmd, &tmp.path().join("s"), &["--id-list", "a"]);
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let _ = serve.stop(libc::SIGTERM);
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn a_second_serve_on_the_same_sockets_is_refused() {
    let tmp = tmpdir();
    let dir = tmp.path().join("s");
    let _first = Serve::start(&dir, &["--id-list", "a"]);
    let out = run_bin([
        "serve",
        "--socket-dir",
        dir.to_str().unwrap(),
        "--id-list",
        "a",
    ]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    assert!(dir.join("a.sock").exists() && dir.join("control.sock").exists());
}

#[test]
fn client_errors_exit_2_with_a_clear_message() {
    let tmp = tmpdir();
    let root = tmp.path();
    let missing = root.join("nothing.sock");
    let missing = missing.to_str().unwrap();
    let out_file = root.join("out.vmstate");
    let out_file = out_file.to_str().unwrap();
    let sock_dir = root.join("s");
    let sock_dir = sock_dir.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["status", "--control", missing],
            "cannot connect to the control socket",
        ),
        (
            vec!["save", "--control", missing, "--output", out_file],
            "cannot connect",
        ),
        (
            vec!["load", "--control", missing, "--input", "/nonexistent/x"],
            "cannot open /nonexistent/x",
        ),
        (vec!["save", "--control", missing], "--output"),
        (
            vec![
                "save",
                "--control",
                missing,
                "--output",
                "x",
                "--format",
                "tar",
            ],
            "tar",
        ),
        (
            vec![
                "load",
                "--control",
                missing,
                "--input",
                "x",
                "--timeout",
                "0",
            ],
            "--timeout",
        ),
        (vec!["serve", "--socket-dir", sock_dir], "--id-list"),
        (
            vec![
                "serve",
                "--socket-dir",
                sock_dir,
                "--id-list",
                "a",
                "--optional",
                "b",
            ],
            "optional helper \"b\"",
        ),
        (
            vec!["serve", "--socket-dir", sock_dir, "--id-list", "a,a"],
            "listed twice",
        ),
        (
            vec!["serve", "--socket-dir", sock_dir, "--id-list", "a,../b"],
            "\"../b\"",
        ),
        (
            vec!["helper", "--socket", missing, "--id", "a"],
            "--state-file",
        ),
        (
            vec![
                "helper",
                "--socket",
                missing,
                "--id",
                "a",
                "--state-file",
                "f",
                "--save-cmd",
                "c",
            ],
            "cannot be used with",
        ),
    ] {
        let out = run_bin(&args);
        assert_exit(&out, 2);
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!Path::new(out_file).exists());
}

/// `--qemu-socket`: bound 0600 beside the others, named in the ready line,
/// removed on exit; a path that is a helper's socket is refused.
#[test]
fn the_qemu_socket_is_bound_private_and_removed_on_exit() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tmpdir();
    let dir = tmp.path().join("s");
    let qemu = tmp.path().join("qemu.sock");
    let serve = Serve::start(
        &dir,
        &["--id-list", "a", "--qemu-socket", qemu.to_str().unwrap()],
    );
    assert!(
        serve
            .ready
            .trim_end()
            .ends_with(&format!("qemu {}", qemu.display())),
        "{}",
        serve.ready
    );
    let mode = std::fs::metadata(&qemu).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let out = run_bin(["status", "--control", serve.control().to_str().unwrap()]);
    assert_exit(&out, 0);
    let status = text(&out.stdout);
    assert!(
        status.contains(&format!("qemu: {} not connected", qemu.display())),
        "{status}"
    );
    assert_eq!(serve.stop(libc::SIGTERM).code(), Some(0));
    assert!(!qemu.exists(), "QEMU's socket left behind");

    let clash = dir.join("a.sock");
    let out = run_bin([
        "serve",
        "--socket-dir",
        dir.to_str().unwrap(),
        "--id-list",
        "a",
        "--qemu-socket",
        clash.to_str().unwrap(),
    ]);
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(
        err.contains("QEMU's socket") && err.contains("helper \"a\""),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no ready line");
}
