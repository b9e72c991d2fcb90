//! Faults and QEMU streams through the real processes: `serve`, its
//! clients and `helper` processes.

use std::time::{Duration, Instant};

use crate::util::process::*;
use crate::util::tmpdir;

/// The payload real QEMU 7.2 wrote loads into two file helpers through
/// `load --format qemu`, and through detection without the flag.
#[test]
fn qemu_written_payload_loads_through_the_cli() {
    let vector = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/qemu-7.2-two-helpers.payload"
    );
    for format in [Some("qemu"), None] {
        let tmp = tmpdir();
        let root = tmp.path();
        let dir = root.join("s");
        let (a, b) = (root.join("idA.state"), root.join("idB.state"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let serve = Serve::start(&dir, &["--id-list", "idA,idB"]);
        let _ha = Helper::file(&dir, "idA", &a);
        let _hb = Helper::file(&dir, "idB", &b);
        let mut args = vec![
            "load".to_string(),
            "--control".into(),
            serve.control_arg(),
            "--input".into(),
            vector.into(),
        ];
        if let Some(f) = format {
            args.extend(["--format".to_string(), f.to_string()]);
        }
        let out = run_bin(args);
        assert_exit(&out, 0);
        assert_eq!(std::fs::read(&a).unwrap(), b"I'am\0idA!\0", "{format:?}");
        assert_eq!(std::fs::read(&b).unwrap(), b"I'am\0idB!\0", "{format:?}");
    }
}

/// A helper process killed in the middle of `Save` fails the save at once
/// (not after the call timeout), naming the helper; no file is written and
/// serve keeps serving.
#[test]
fn helper_process_killed_during_save_fails_the_save() {
    let tmp = tmpdir();
    let root = tmp.path();
    let dir = root.join("s");
    let serve = Serve::start(&dir, &["--id-list", "db", "--timeout", "25"]);
    let marker = root.join("save-started");
    let save_cmd = blocking_save_cmd(&marker);
    let mut helper = Helper::start(&dir, "db", &["--save-cmd", &save_cmd]);
    let output = root.join("out.vmstate");
    let save = bin()
        .args(["save", "--control", &serve.control_arg(), "--output"])
        .arg(&output)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the helper's Save to start", || marker.exists());
    let killed_at = Instant::now();
    helper.0.kill().unwrap();
    let out = wait_output(save);
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "the save must fail when the helper dies, not at the call timeout"
    );
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains("helper \"db\"") && err.contains("Save"),
        "{err}"
    );
    assert!(!err.contains("timed out"), "{err}");
    assert!(!output.exists());
    assert!(
        entries(root).iter().all(|e| !e.contains("vmstate")),
        "{:?}",
        entries(root)
    );

    // serve is still there, and a fresh helper saves fine.
    let state = root.join("db.state");
    std::fs::write(&state, b"after").unwrap();
    let _fresh = Helper::file(&dir, "db", &state);
    let out = run_bin([
        "save",
        "--control",
        &serve.control_arg(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    assert!(output.exists());
}
