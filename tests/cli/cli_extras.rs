//! What people expect of a command line: help with examples, shell
//! completions, a manual page, a progress line only on a terminal.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use crate::util::process::*;
use crate::util::{pattern, tmpdir};

const COMMANDS: [&str; 10] = [
    "serve",
    "save",
    "load",
    "status",
    "inspect",
    "convert",
    "helper",
    "demo",
    "completions",
    "man",
];

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in COMMANDS {
        let out = run_bin([cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{cmd}");
        let help = text(&out.stdout);
        assert!(help.contains("Example"), "{cmd} --help:\n{help}");
        assert!(help.contains("dbus-vmstate "), "{cmd} --help:\n{help}");
    }
    let top = text(&run_bin(["--help"]).stdout);
    for cmd in COMMANDS {
        assert!(top.contains(cmd), "{cmd} missing from --help:\n{top}");
    }
    assert!(
        top.contains("Exit codes: 0 ok, 1 migration failed"),
        "{top}"
    );
    assert!(!top.contains("demo-helper"), "hidden command shown:\n{top}");
}

#[test]
fn completions_cover_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_bin(["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        for word in ["serve", "socket-dir", "id-list", "output", "inspect"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = run_bin(["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_page_is_generated_from_the_definition() {
    let out = run_bin(["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH dbus-vmstate 1"), "{page}");
    assert!(
        page.contains("serve") && page.contains("Exit codes"),
        "{page}"
    );

    let dir = tmpdir();
    let out = run_bin(["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let pages = entries(dir.path());
    for cmd in ["save", "serve", "inspect"] {
        let name = format!("dbus-vmstate-{cmd}.1");
        assert!(pages.contains(&name), "{name} not in {pages:?}");
    }
    let save = std::fs::read_to_string(dir.path().join("dbus-vmstate-save.1")).unwrap();
    assert!(save.contains("output"), "{save}");
}

/// A pseudo-terminal: (master, slave).
#[allow(unsafe_code)] // posix_openpt and friends have no safe wrapper in std
fn pty() -> (File, File) {
    // SAFETY: plain libc calls on descriptors this function owns; ptsname_r
    // writes into a buffer of the size given.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_str()
            .unwrap()
            .to_string();
        let master = File::from(OwnedFd::from_raw_fd(master));
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .unwrap();
        (master, slave)
    }
}

/// Runs the binary with stderr on a terminal; returns (exit code, what
/// the terminal showed).
fn run_on_tty(args: &[&str]) -> (Option<i32>, String) {
    let (mut master, slave) = pty();
    let mut child = bin()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(slave)
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        // Reading the master fails with EIO once no process holds the
        // slave any more.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.extend_from_slice(&buf[..n]);
        }
        shown
    });
    let status = wait(&mut child);
    (status.code(), text(&reader.join().unwrap()))
}

#[test]
fn progress_is_shown_on_a_terminal_only() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let state = pattern(12 << 20, 9);
    std::fs::write(root.join("big.state"), &state).unwrap();
    let serve = Serve::start(&dir, &["--id-list", "big"]);
    let _h = Helper::file(&dir, "big", &root.join("big.state"));
    let control = serve.control_arg();
    let stream = root.join("big.vmstate");
    let stream = stream.to_str().unwrap();

    let (code, shown) = run_on_tty(&["save", "--control", &control, "--output", stream]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("saving ") && shown.contains("MiB"),
        "{shown:?}"
    );
    assert!(
        shown.ends_with("\r\x1b[K"),
        "the line is erased at the end: {shown:?}"
    );

    let (code, shown) = run_on_tty(&["load", "--control", &control, "--input", stream]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("loading [") && shown.contains('%'),
        "{shown:?}"
    );
    assert_eq!(std::fs::read(root.join("big.state")).unwrap(), state);

    let (code, shown) = run_on_tty(&["-q", "save", "--control", &control, "--output", stream]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.is_empty(), "-q shows nothing: {shown:?}");

    let out = run_bin(["save", "--control", &control, "--output", stream]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn streams_are_never_written_to_or_read_from_a_terminal() {
    let tmp = tmpdir();
    let dir = tmp.path().join("s");
    let serve = Serve::start(&dir, &["--id-list", "a"]);
    let (_master, slave) = pty();
    let child = bin()
        .args(["save", "--control", &serve.control_arg(), "--output", "-"])
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("terminal"),
        "{}",
        text(&out.stderr)
    );
    let child = bin()
        .args(["load", "--control", &serve.control_arg(), "--input", "-"])
        .stdin(slave)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("terminal"),
        "{}",
        text(&out.stderr)
    );
}

/// `--output` naming a FIFO or `/dev/null` writes into it: renaming a new
/// file over it would replace the device or FIFO with a regular file.
#[test]
fn save_into_a_fifo_or_a_device_writes_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let state = pattern(3 << 20, 4);
    std::fs::write(root.join("a.state"), &state).unwrap();
    let serve = Serve::start(&dir, &["--id-list", "a"]);
    let _h = Helper::file(&dir, "a", &root.join("a.state"));
    let control = serve.control_arg();

    let fifo = root.join("stream.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let fifo_arg = fifo.to_str().unwrap();
    let out = run_bin(["-q", "save", "--control", &control, "--output", fifo_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bytes = reader.join().unwrap();
    let records = dbus_vmstate::stream::native::read_all(&bytes[..], Default::default()).unwrap();
    assert_eq!(records.len(), 1);
    assert!(records[0].data == state, "the stream through the FIFO");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    let out = run_bin(["-q", "save", "--control", &control, "--output", "/dev/null"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let null = std::fs::metadata("/dev/null").unwrap();
    assert!(null.file_type().is_char_device(), "/dev/null was replaced");
}
