//! The real binary, run as a user would.

use crate::util::process::{bin, run_bin, text, wait, wait_output};
use crate::util::*;
use dbus_vmstate::stream::{native, Record};

#[test]
fn demo_migrates_and_verifies() {
    let out = run_bin(["demo", "--helpers", "3", "--size", "4097"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for id in ["helper-1", "helper-2", "helper-3"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id} in:\n{stdout}"));
        assert!(row.contains(" 4097 "), "{row}");
    }
    assert!(stdout.contains("verified: all 3 helpers"), "{stdout}");
}

#[test]
fn demo_with_empty_state() {
    let out = run_bin(["demo", "--helpers", "1", "--size", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn demo_keeps_its_files_in_a_given_directory() {
    let dir = tmpdir();
    let out = run_bin([
        "demo",
        "--helpers",
        "2",
        "--size",
        "64K",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let records = native::read_all(
        std::fs::File::open(dir.path().join("helpers.vmstate")).unwrap(),
        Default::default(),
    )
    .unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.data.len() == 64 << 10));
    // The coordinators removed their sockets.
    assert_eq!(
        std::fs::read_dir(dir.path().join("src")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("dst")).unwrap().count(),
        0
    );
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    for (args, needle) in [
        (&["demo", "--helpers", "0"][..], "--helpers"),
        (&["demo", "--size", "12X"][..], "unknown size unit"),
        (&["demo", "--timeout=-3"][..], "--timeout"),
        (&["helper", "--id", "a"][..], "--socket"),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let out = run_bin(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn help_shows_examples() {
    for cmd in ["demo", "helper"] {
        let out = run_bin([cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Example"), "{cmd} --help");
    }
}

#[test]
fn helper_serves_and_replaces_a_state_file() {
    run(async {
        let dir = tmpdir();
        let state_file = dir.path().join("a.state");
        std::fs::write(&state_file, b"file state v1").unwrap();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let mut child = bin()
            .args(["helper", "--socket"])
            .arg(sock(dir.path(), "a"))
            .args(["--id", "a", "--state-file"])
            .arg(&state_file)
            .spawn()
            .unwrap();

        let (out, _) = c.save(Vec::new()).await.unwrap();
        let records = native::read_all(&out[..], Default::default()).unwrap();
        assert_eq!(records, vec![Record::new("a", b"file state v1".to_vec())]);

        let new = native::encode(&[Record::new("a", b"restored".to_vec())]).unwrap();
        c.load(std::io::Cursor::new(new), None).await.unwrap();
        assert_eq!(std::fs::read(&state_file).unwrap(), b"restored");
        // Only the state file and the socket: no temporary file left over.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        c.shutdown().await;
        let status = rt::spawn_blocking(move || wait(&mut child)).await;
        assert!(
            status.success(),
            "helper exits 0 when the coordinator closes"
        );
    });
}

#[test]
fn helper_with_missing_state_file_fails_save_naming_the_file() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let mut child = bin()
            .args(["helper", "--socket"])
            .arg(sock(dir.path(), "a"))
            .args(["--id", "a", "--state-file", "/nonexistent/a.state"])
            .spawn()
            .unwrap();
        let err = c.save(Vec::new()).await.unwrap_err();
        let msg = dbus_vmstate::error::chain(&err);
        assert!(
            msg.contains("helper \"a\"") && msg.contains("/nonexistent/a.state"),
            "{msg}"
        );
        c.shutdown().await;
        wait(&mut child);
    });
}

#[test]
fn helper_without_coordinator_gives_up_after_its_timeout() {
    let dir = tmpdir();
    let child = bin()
        .args(["helper", "--socket"])
        .arg(sock(dir.path(), "a"))
        .args(["--id", "a", "--state-file", "x", "--connect-timeout", "0.2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot connect to"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_plain_uses_qemus_interface_only() {
    let out = run_bin(["demo", "--helpers", "2", "--size", "70000", "--plain"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("helper-"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r.contains(" plain ")), "{stdout}");
    // Without the flag the same helpers stream.
    let out = run_bin(["demo", "--helpers", "1", "--size", "70000"]);
    assert!(
        text(&out.stdout).contains(" stream "),
        "{}",
        text(&out.stdout)
    );
}
