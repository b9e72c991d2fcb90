//! Golden files: every stream format version has a committed file that
//! decodes to known records, and the spec's hexdump matches it.
//!
//! Regenerate the native golden file (only when the format version
//! changes, as a new file) with
//! `cargo test --test library -- --ignored stream_golden::regenerate_golden`.

use std::path::PathBuf;

use dbus_vmstate::stream::{self, native, qemu, Format, Limits, Record};

const NATIVE_V1: &str = "native-v1-two-helpers.vmstate";
const QEMU_7_2: &str = "qemu-7.2-two-helpers.payload";

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read_data(name: &str) -> Vec<u8> {
    std::fs::read(data_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The records of the native golden file: the QEMU vector's two helpers
/// plus one with an empty blob.
fn golden_records() -> Vec<Record> {
    vec![
        Record::new("idA", b"I'am\0idA!\0".to_vec()),
        Record::new("idB", b"I'am\0idB!\0".to_vec()),
        Record::new("empty", Vec::new()),
    ]
}

#[test]
#[ignore = "rewrites tests/data; run only to create a new golden file"]
fn regenerate_golden() {
    let bytes = native::encode(&golden_records()).unwrap();
    std::fs::write(data_path(NATIVE_V1), bytes).unwrap();
}

#[test]
fn native_v1_golden_decodes_and_reencodes() {
    let bytes = read_data(NATIVE_V1);
    let records = native::read_all(&bytes[..], Limits::default()).unwrap();
    assert_eq!(records, golden_records());
    assert_eq!(native::encode(&records).unwrap(), bytes);
    assert_eq!(Format::detect(&bytes), Some(Format::Native));

    let summary = native::inspect(&bytes[..], Limits::default()).unwrap();
    assert_eq!(summary.version, 1);
    assert_eq!(summary.total_bytes, 20);
    assert_eq!(summary.stream_bytes, bytes.len() as u64);
    let chunks: Vec<_> = summary.helpers.iter().map(|h| h.chunks).collect();
    assert_eq!(chunks, [1, 1, 0]);
}

#[test]
fn qemu_7_2_vector_decodes_and_reencodes_canonically() {
    let bytes = read_data(QEMU_7_2);
    assert_eq!(bytes.len(), 64);
    let decoded = qemu::decode(&bytes, Limits::default()).unwrap();
    assert_eq!(decoded.records, golden_records()[..2]);
    assert_eq!(decoded.trailing_bytes, 18);
    assert_eq!(qemu::encode(&decoded.records).unwrap(), &bytes[..46]);

    let (format, records) = stream::read_records(&bytes[..], Limits::default()).unwrap();
    assert_eq!((format, records), (Format::Qemu, decoded.records));
}

/// The hexdump walk-through in protocol/stream-format.md is the golden
/// file, byte for byte, so the spec cannot drift from the code.
#[test]
fn spec_hexdump_matches_golden_file() {
    let spec = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol/stream-format.md"),
    )
    .unwrap();
    let start = spec.find("<!-- golden:begin -->").expect("begin marker");
    let end = spec.find("<!-- golden:end -->").expect("end marker");
    let mut dumped = Vec::new();
    for line in spec[start..end].lines() {
        let hex = line.split('|').next().unwrap_or("").trim();
        let mut tokens = hex.split_whitespace();
        let Some(offset) = tokens.next() else {
            continue;
        };
        let Ok(offset) = usize::from_str_radix(offset, 16) else {
            continue;
        };
        assert_eq!(offset, dumped.len(), "offset column at line {line:?}");
        for t in tokens {
            dumped.push(u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("{line:?}")));
        }
    }
    assert_eq!(dumped, read_data(NATIVE_V1));
}
