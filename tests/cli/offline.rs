//! `inspect` and `convert` on good and bad streams, as the real binary.

use std::path::{Path, PathBuf};

use crate::util::process::*;
use crate::util::{pattern, tmpdir};
use dbus_vmstate::stream::{native, qemu, Limits, Record};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

const NATIVE_V1: &str = "native-v1-two-helpers.vmstate";
const QEMU_7_2: &str = "qemu-7.2-two-helpers.payload";

fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn inspect_lists_a_native_stream() {
    let out = run_bin(["inspect", arg(&data(NATIVE_V1))]);
    assert_exit(&out, 0);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("native stream, version 1, 3 helpers"),
        "{shown}"
    );
    assert!(shown.contains("checksums verified"), "{shown}");
    for id in ["idA", "idB", "empty"] {
        assert!(
            shown.lines().any(|l| l.trim_start().starts_with(id)),
            "{id}: {shown}"
        );
    }

    let out = run_bin(["inspect", "--json", arg(&data(NATIVE_V1))]);
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "native");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["total_bytes"], 20);
    assert_eq!(doc["stream_bytes"], 243);
    assert_eq!(doc["checksums_verified"], true);
    let ids: Vec<_> = doc["helpers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("idA".to_string(), 10),
            ("idB".to_string(), 10),
            ("empty".to_string(), 0)
        ]
    );
    let crc = crc32c::crc32c(b"I'am\0idA!\0");
    assert_eq!(doc["helpers"][0]["crc32c"], format!("{crc:08x}"));
}

#[test]
fn inspect_lists_a_qemu_payload_from_stdin() {
    let file = std::fs::File::open(data(QEMU_7_2)).unwrap();
    let child = bin()
        .args(["inspect", "--json", "-"])
        .stdin(file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "qemu");
    assert_eq!(doc["trailing_bytes"], 18, "QEMU's own padding");
    assert_eq!(doc["checksums_verified"], false);
    assert_eq!(doc["helpers"][1]["id"], "idB");
}

#[test]
fn inspect_rejects_bad_streams_with_exit_1() {
    let tmp = tmpdir();
    let good = std::fs::read(data(NATIVE_V1)).unwrap();
    let mut flipped = good.clone();
    flipped[60] ^= 0x04;
    let mut newer = good.clone();
    newer[8] = 3; // version 3, with a valid header checksum
    let crc = crc32c::crc32c(&newer[..16]);
    newer[16..20].copy_from_slice(&crc.to_le_bytes());
    // Each reason with its byte offset (the golden stream's first record
    // starts at byte 39); the path is printed too, so the needle must not be
    // the case's name.
    let len = good.len();
    let cases: [(&str, Vec<u8>, String); 6] = [
        (
            "truncated",
            good[..len - 1].to_vec(),
            format!("stream truncated at byte {}", len - 1),
        ),
        (
            "flipped",
            flipped,
            "checksum mismatch in record at byte 39".into(),
        ),
        (
            "newer",
            newer,
            "unsupported stream format version 3 (this reader supports versions 1 to 2)".into(),
        ),
        (
            "trailing",
            [good.clone(), b"x".to_vec()].concat(),
            format!("trailing data after the end of the stream at byte {len}"),
        ),
        (
            "empty",
            Vec::new(),
            "not a state stream: the input is empty".into(),
        ),
        (
            "migration",
            std::fs::read(data("qemu-7.2-two-helpers.migration")).unwrap(),
            "a qemu migration file, not a state stream (`dbus-vmstate convert --to native".into(),
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out = run_bin(["inspect", arg(&path)]);
        assert_exit(&out, 1);
        let err = text(&out.stderr).to_lowercase();
        assert!(
            err.contains(&path.display().to_string().to_lowercase()) && err.contains(&needle),
            "{name}: {err}"
        );
    }
}

#[test]
fn inspect_of_a_missing_file_is_exit_2() {
    let out = run_bin(["inspect", "/nonexistent/x.vmstate"]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("cannot open /nonexistent/x.vmstate"));
    let out = run_bin(["inspect"]);
    assert_exit(&out, 2);
}

#[test]
fn convert_round_trips_between_formats() {
    let tmp = tmpdir();
    let payload = tmp.path().join("x.payload");
    let back = tmp.path().join("x.vmstate");
    let out = run_bin([
        "convert",
        "--to",
        "qemu",
        arg(&data(NATIVE_V1)),
        arg(&payload),
    ]);
    assert_exit(&out, 0);
    let records = qemu::decode(&std::fs::read(&payload).unwrap(), Limits::default())
        .unwrap()
        .records;
    let golden = native::read_all(
        std::fs::File::open(data(NATIVE_V1)).unwrap(),
        Limits::default(),
    )
    .unwrap();
    assert_eq!(records, golden);

    let out = run_bin(["convert", "--to", "native", arg(&payload), arg(&back)]);
    assert_exit(&out, 0);
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(data(NATIVE_V1)).unwrap(),
        "byte for byte"
    );

    // Real QEMU's payload, padding and all, to native on stdout.
    let out = run_bin(["convert", "--to", "native", arg(&data(QEMU_7_2)), "-"]);
    assert_exit(&out, 0);
    let records = native::read_all(&out.stdout[..], Limits::default()).unwrap();
    assert_eq!(records[0], Record::new("idA", b"I'am\0idA!\0".to_vec()));
    assert_eq!(records.len(), 2);
}

#[test]
fn convert_refuses_what_it_cannot_write_and_leaves_no_file() {
    let tmp = tmpdir();
    let out_path = tmp.path().join("out");
    std::fs::write(&out_path, b"keep").unwrap();

    // QEMU caps each helper at 1 MiB.
    let big = tmp.path().join("big.vmstate");
    std::fs::write(
        &big,
        native::encode(&[Record::new("huge", pattern((1 << 20) + 1, 0))]).unwrap(),
    )
    .unwrap();
    let out = run_bin(["convert", "--to", "qemu", arg(&big), arg(&out_path)]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("\"huge\""),
        "{}",
        text(&out.stderr)
    );

    // A corrupt input.
    let bad = tmp.path().join("bad.vmstate");
    let mut bytes = std::fs::read(data(NATIVE_V1)).unwrap();
    bytes.truncate(100);
    std::fs::write(&bad, bytes).unwrap();
    let out = run_bin(["convert", "--to", "qemu", arg(&bad), arg(&out_path)]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("rejected"),
        "{}",
        text(&out.stderr)
    );

    assert_eq!(std::fs::read(&out_path).unwrap(), b"keep");
    assert_eq!(entries(tmp.path()), ["bad.vmstate", "big.vmstate", "out"]);

    let out = run_bin(["convert", "--to", "tar", arg(&bad), arg(&out_path)]);
    assert_exit(&out, 2);
}

/// A whole migration file real QEMU 7.2 wrote (tests/data/README.md).
const QEMU_7_2_MIGRATION: &str = "qemu-7.2-two-helpers.migration";

/// The two helpers' states in [`QEMU_7_2_MIGRATION`].
fn qemu_7_2_records() -> Vec<Record> {
    vec![
        Record::new("idA", b"I'am\0idA!\0".to_vec()),
        Record::new("idB", b"I'am\0idB!\0".to_vec()),
    ]
}

#[test]
fn convert_takes_the_payload_out_of_a_qemu_migration_file() {
    let tmp = tmpdir();
    let native_out = tmp.path().join("helpers.vmstate");
    let migration = data(QEMU_7_2_MIGRATION);
    // Detected by its magic, and named with --from.
    for from in [&[][..], &["--from", "qemu-migration"][..]] {
        let mut args = vec!["convert", "--to", "native"];
        args.extend_from_slice(from);
        args.extend([arg(&migration), arg(&native_out)]);
        let out = run_bin(args);
        assert_exit(&out, 0);
        assert!(
            text(&out.stdout).contains("2 helpers from qemu-migration to native"),
            "{}",
            text(&out.stdout)
        );
        let records =
            native::read_all(std::fs::File::open(&native_out).unwrap(), Limits::default()).unwrap();
        assert_eq!(records, qemu_7_2_records());
    }
    // As QEMU's payload: the same entries as the committed payload.
    let out = run_bin([
        "convert",
        "--to",
        "qemu",
        arg(&data(QEMU_7_2_MIGRATION)),
        "-",
    ]);
    assert_exit(&out, 0);
    let golden = std::fs::read(data(QEMU_7_2)).unwrap();
    assert_eq!(
        out.stdout,
        golden[..46],
        "the payload without QEMU's padding"
    );
}

#[test]
fn convert_splices_a_payload_into_a_qemu_migration_file() {
    let tmp = tmpdir();
    let new = vec![
        Record::new("idA", pattern(4097, 7)),
        Record::new("idB", Vec::new()),
    ];
    let input = tmp.path().join("new.vmstate");
    std::fs::write(&input, native::encode(&new).unwrap()).unwrap();
    let spliced = tmp.path().join("new.migration");
    let base = data(QEMU_7_2_MIGRATION);
    let out = run_bin([
        "convert",
        "--to",
        "qemu-migration",
        "--base",
        arg(&base),
        arg(&input),
        arg(&spliced),
    ]);
    assert_exit(&out, 0);

    let back = tmp.path().join("back.vmstate");
    let out = run_bin(["convert", "--to", "native", arg(&spliced), arg(&back)]);
    assert_exit(&out, 0);
    let records = native::read_all(std::fs::File::open(&back).unwrap(), Limits::default()).unwrap();
    assert_eq!(records, new);

    // Only data_size and the payload differ: the 64-byte payload starts at
    // byte 0xa4 of the original, after its size.
    let (old, got) = (
        std::fs::read(&base).unwrap(),
        std::fs::read(&spliced).unwrap(),
    );
    let payload = qemu::encode(&new).unwrap();
    assert_eq!(got[..0xa0], old[..0xa0]);
    assert_eq!(got[0xa0..0xa4], (payload.len() as u32).to_be_bytes());
    assert_eq!(got[0xa4..0xa4 + payload.len()], payload[..]);
    assert_eq!(got[0xa4 + payload.len()..], old[0xa4 + 64..]);
}

#[test]
fn convert_refuses_migration_files_without_one_section_and_leaves_no_file() {
    let tmp = tmpdir();
    let out_path = tmp.path().join("out");
    let original = std::fs::read(data(QEMU_7_2_MIGRATION)).unwrap();
    // The section is bytes 0x79..0xe9 (header, size, payload, footer).
    let section = &original[0x79..0xe9];
    let none = [&original[..0x79], &original[0xe9..]].concat();
    let two = [&original[..0xe9], section, &original[0xe9..]].concat();
    let cut = original[..0xb0].to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("none", none, "no dbus-vmstate section"),
        (
            "two",
            two,
            "two dbus-vmstate sections in the QEMU migration stream, at bytes 121 and 233",
        ),
        (
            "cut",
            cut,
            "truncated at byte 176: expected dbus-vmstate payload",
        ),
        ("payload", original[0xa4..].to_vec(), "bad magic"),
    ];
    for (name, bytes, reason) in cases {
        let file = tmp.path().join(format!("{name}.migration"));
        std::fs::write(&file, bytes).unwrap();
        let extract = run_bin([
            "convert",
            "--to",
            "native",
            "--from",
            "qemu-migration",
            arg(&file),
            arg(&out_path),
        ]);
        let splice = run_bin([
            "convert",
            "--to",
            "qemu-migration",
            "--base",
            arg(&file),
            arg(&data(NATIVE_V1)),
            arg(&out_path),
        ]);
        for out in [extract, splice] {
            assert_exit(&out, 1);
            let err = text(&out.stderr);
            assert!(
                err.contains("no dbus-vmstate payload can be taken"),
                "{name}: {err}"
            );
            assert!(err.contains(reason), "{name}: {err}");
        }
        assert!(!out_path.exists(), "{name}: no output file");
    }

    // --base belongs to --to qemu-migration, which needs it.
    let base = data(QEMU_7_2_MIGRATION);
    let out = run_bin([
        "convert",
        "--to",
        "native",
        "--base",
        arg(&base),
        arg(&base),
        "-",
    ]);
    assert_exit(&out, 2);
    let out = run_bin([
        "convert",
        "--to",
        "qemu-migration",
        arg(&base),
        arg(&out_path),
    ]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("--base"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(entries(tmp.path()).len(), 4, "only the four inputs");
}
