//! `keygen`, and compressed and encrypted streams through `serve`, `save`,
//! `load`, `inspect` and `convert` as real processes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::process::*;
use crate::util::tmpdir;
use dbus_vmstate::stream::{native, Key, Limits};

fn run(args: &[&str]) -> std::process::Output {
    run_bin(args)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Conntrack-like text: compresses well.
fn text_state(lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| {
            format!(
                "tcp      6 {} ESTABLISHED src=10.0.{}.{} dst=192.168.1.{} sport={} dport=443 [ASSURED] mark=0 use=1\n",
                400_000 + i % 31_000,
                i % 250,
                (i * 7) % 250,
                i % 200,
                20_000 + (i * 13) % 40_000
            )
            .into_bytes()
        })
        .collect()
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_only_its_id() {
    let dir = tmpdir();
    let file = dir.path().join("k");
    let out = run(&["keygen", path(&file)]);
    assert_exit(&out, 0);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = Key::from_file(&file).unwrap();
    let printed = text(&out.stdout);
    assert!(printed.contains(&key.id().to_string()), "{printed}");
    let hex = std::fs::read_to_string(&file).unwrap();
    assert!(
        !printed.contains(hex.trim()),
        "the key itself is printed: {printed}"
    );
    // Never over an existing file.
    let again = run(&["keygen", path(&file)]);
    assert_exit(&again, 2);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), hex);
}

#[test]
fn an_encrypted_compressed_save_loads_only_with_its_key_and_nothing_of_a_tampered_copy() {
    let root = tmpdir();
    let (src_dir, dst_dir) = (root.path().join("src"), root.path().join("dst"));
    let state = root.path().join("text.state");
    let conntrack = text_state(20_000);
    std::fs::write(&state, &conntrack).unwrap();
    let key = root.path().join("k");
    assert_exit(&run(&["keygen", path(&key)]), 0);

    let src = Serve::start(&src_dir, &["--id-list", "text"]);
    let _h = Helper::file(&src_dir, "text", &state);
    let stream = root.path().join("s.vmstate");
    let out = run(&[
        "save",
        "--control",
        &src.control_arg(),
        "--output",
        path(&stream),
        "--compress",
        "--key-file",
        path(&key),
    ]);
    assert_exit(&out, 0);
    let bytes = std::fs::read(&stream).unwrap();
    assert!(
        bytes.len() * 4 < conntrack.len(),
        "{} bytes of stream for {} of text",
        bytes.len(),
        conntrack.len()
    );
    // No Id and no state byte in the clear.
    assert!(!bytes.windows(4).any(|w| w == b"text"));
    assert!(!bytes.windows(11).any(|w| w == b"ESTABLISHED"));

    // Without the key, inspect lists the framing and says what it cannot verify.
    let plain = run(&["inspect", path(&stream)]);
    assert_exit(&plain, 0);
    let said = text(&plain.stdout);
    assert!(
        said.contains("version 2, compressed, encrypted with key"),
        "{said}"
    );
    assert!(said.contains("cannot be read"), "{said}");
    let keyed = run(&["inspect", "--key-file", path(&key), path(&stream)]);
    assert_exit(&keyed, 0);
    let said = text(&keyed.stdout);
    assert!(
        said.contains("authentication verified") && said.contains("text"),
        "{said}"
    );

    let dst = Serve::start(&dst_dir, &["--id-list", "text"]);
    let new_state = root.path().join("new.state");
    std::fs::write(&new_state, b"old").unwrap();
    let _d = Helper::file(&dst_dir, "text", &new_state);
    let control = dst.control();
    let load = |input: &Path, extra: &[&str]| {
        let mut args = vec!["load", "--control", path(&control), "--input"];
        args.push(path(input));
        args.extend_from_slice(extra);
        run(&args)
    };

    // No key: refused, naming why.
    let out = load(&stream, &[]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("its key file is needed"),
        "{}",
        text(&out.stderr)
    );
    // Another key: refused as a wrong key, not a checksum error.
    let other = root.path().join("other");
    assert_exit(&run(&["keygen", path(&other)]), 0);
    let out = load(&stream, &["--key-file", path(&other)]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("not with the key given"),
        "{}",
        text(&out.stderr)
    );
    // One byte changed anywhere after the header: refused.
    for at in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 5] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        let tampered = root.path().join("t.vmstate");
        std::fs::write(&tampered, &bad).unwrap();
        let out = load(&tampered, &["--key-file", path(&key)]);
        assert_exit(&out, 1);
    }
    assert_eq!(std::fs::read(&new_state).unwrap(), b"old");
    // A key file others may read: refused before anything is sent.
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = load(&stream, &["--key-file", path(&other)]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );

    let out = load(&stream, &["--key-file", path(&key)]);
    assert_exit(&out, 0);
    assert_eq!(std::fs::read(&new_state).unwrap(), conntrack);

    // With a key, an unencrypted stream is refused unless allowed.
    let v1 = root.path().join("v1.vmstate");
    assert_exit(
        &run(&[
            "save",
            "--control",
            &src.control_arg(),
            "--output",
            path(&v1),
        ]),
        0,
    );
    let out = load(&v1, &["--key-file", path(&key)]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("not encrypted"),
        "{}",
        text(&out.stderr)
    );
    assert_exit(
        &load(&v1, &["--key-file", path(&key), "--allow-unencrypted"]),
        0,
    );
}

#[test]
fn convert_decrypts_and_re_encodes() {
    let dir = tmpdir();
    let key = dir.path().join("k");
    assert_exit(&run(&["keygen", path(&key)]), 0);
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/native-v1-two-helpers.vmstate");
    let sealed = dir.path().join("sealed");
    let out = run(&[
        "convert",
        "--to",
        "native",
        "--compress",
        "--output-key-file",
        path(&key),
        path(&golden),
        path(&sealed),
    ]);
    assert_exit(&out, 0);
    let back = dir.path().join("back");
    let out = run(&[
        "convert",
        "--to",
        "native",
        "--key-file",
        path(&key),
        path(&sealed),
        path(&back),
    ]);
    assert_exit(&out, 0);
    // Version 1 again, byte for byte the golden file.
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&golden).unwrap()
    );
    let records = native::read_all(&std::fs::read(&back).unwrap()[..], Limits::default()).unwrap();
    assert_eq!(records.len(), 3);
    // --compress makes no sense for a QEMU payload.
    let out = run(&[
        "convert",
        "--to",
        "qemu",
        "--compress",
        path(&golden),
        path(&back),
    ]);
    assert_exit(&out, 2);
}
