//! Golden files: every stream format version has a committed file that
//! decodes to known records, and the spec's hexdump matches it.
//!
//! Regenerate the native golden file (only when the format version
//! changes, as a new file) with
//! `cargo test --test library -- --ignored stream_golden::regenerate_golden`
//! (version 2: `stream_golden::regenerate_golden_v2`).

use std::path::PathBuf;

use crate::util::{require, Requirement, PYTHON};
use dbus_vmstate::stream::native::{ReadOptions, WriteOptions};
use dbus_vmstate::stream::{self, native, qemu, Format, Key, Limits, Record};

const NATIVE_V1: &str = "native-v1-two-helpers.vmstate";
const QEMU_7_2: &str = "qemu-7.2-two-helpers.payload";
const NATIVE_V2_COMPRESSED: &str = "native-v2-compressed.vmstate";
const NATIVE_V2_ENCRYPTED: &str = "native-v2-encrypted.vmstate";
const NATIVE_V2_BOTH: &str = "native-v2-compressed-encrypted.vmstate";
const NATIVE_V2_KEY: &str = "native-v2-test.key";

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

/// The records of the version 2 golden files: those of the version 1 file
/// and a helper `text` with 200 KiB of conntrack-like lines, so that
/// compression has something to do and the blob spans one chunk.
fn golden_v2_records() -> Vec<Record> {
    let mut text = Vec::new();
    let mut i: u32 = 0;
    while text.len() < 200 << 10 {
        let line = format!(
            "ipv4 2 tcp 6 {ttl} ESTABLISHED src=10.0.{a}.{b} dst=192.168.{c}.{d} \
             sport={sport} dport=443 packets={p} bytes={bytes} [ASSURED] mark=0 use=1\n",
            ttl = 432_000 - i % 1000,
            a = i % 7,
            b = (i * 13) % 251,
            c = i % 3,
            d = (i * 7) % 199,
            sport = 32_768 + (i * 37) % 28_000,
            p = i % 97,
            bytes = (i * 1499) % 100_000,
        );
        text.extend_from_slice(line.as_bytes());
        i += 1;
    }
    text.truncate(200 << 10);
    let mut records = golden_records();
    records.push(Record::new("text", text));
    records
}

/// The committed test key (never use it for anything else).
fn golden_key() -> Key {
    let bytes = read_data(NATIVE_V2_KEY);
    assert_eq!(bytes.len(), 65, "64 hex digits and a newline");
    Key::parse(&bytes).expect("the test key parses")
}

fn v2_options(compress: bool, encrypt: bool) -> WriteOptions {
    WriteOptions {
        compress,
        key: encrypt.then(golden_key),
        ..WriteOptions::default()
    }
}

#[test]
#[ignore = "rewrites tests/data; run only to create the version 2 golden files"]
fn regenerate_golden_v2() {
    // The key only when it is missing: the encrypted files depend on it.
    if !data_path(NATIVE_V2_KEY).exists() {
        Key::generate()
            .unwrap()
            .write_new(data_path(NATIVE_V2_KEY))
            .unwrap();
    }
    for (name, compress, encrypt) in [
        (NATIVE_V2_COMPRESSED, true, false),
        (NATIVE_V2_ENCRYPTED, false, true),
        (NATIVE_V2_BOTH, true, true),
    ] {
        let bytes =
            native::encode_with(&golden_v2_records(), &v2_options(compress, encrypt)).unwrap();
        std::fs::write(data_path(name), bytes).unwrap();
    }
}

#[test]
fn native_v2_golden_files_decode() {
    let key = golden_key();
    let records = golden_v2_records();
    for (name, compress, encrypt) in [
        (NATIVE_V2_COMPRESSED, true, false),
        (NATIVE_V2_ENCRYPTED, false, true),
        (NATIVE_V2_BOTH, true, true),
    ] {
        let bytes = read_data(name);
        assert_eq!(&bytes[..8], &native::MAGIC, "{name}");
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            2,
            "{name}"
        );
        let flags = v2_options(compress, encrypt).features().flags();
        assert_eq!(
            u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
            flags,
            "{name}"
        );
        assert_eq!(Format::detect(&bytes), Some(Format::Native));

        let options = ReadOptions {
            key: encrypt.then(|| key.clone()),
            allow_unencrypted: false,
        };
        let decoded = native::read_all_with(&bytes[..], Limits::default(), &options).unwrap();
        assert_eq!(decoded, records, "{name}");

        let summary = native::inspect_with(&bytes[..], Limits::default(), &options).unwrap();
        assert_eq!(summary.version, 2);
        assert_eq!(summary.compressed, compress);
        assert_eq!(summary.key_id, encrypt.then(|| key.id()));
        assert_eq!(summary.stream_bytes, bytes.len() as u64);
        let small: Vec<_> = summary.helpers[..3]
            .iter()
            .map(|h| h.compressed_chunks)
            .collect();
        assert_eq!(small, [0, 0, 0], "{name}: tiny blobs are stored as is");
        let text = &summary.helpers[3];
        assert_eq!((text.id.as_str(), text.bytes), ("text", 200 << 10));
        if compress {
            assert!(text.compressed_chunks == 1, "{name}: {text:?}");
            assert!(text.stored_bytes < text.bytes / 3, "{name}: {text:?}");
        } else {
            assert_eq!(text.compressed_chunks, 0, "{name}");
        }

        // Without a key: the encrypted ones name the key they need; the
        // survey reads the framing of all of them without one.
        let plain = native::read_all(&bytes[..], Limits::default());
        if encrypt {
            match plain.unwrap_err() {
                stream::Error::KeyRequired { key_id } => assert_eq!(key_id, key.id(), "{name}"),
                err => panic!("{name}: {err:?}"),
            }
            // A key given for an unencrypted file is refused, so the
            // compressed-only file must be read without one.
        } else {
            assert_eq!(plain.unwrap(), records, "{name}");
            let keyed = native::read_all_with(
                &bytes[..],
                Limits::default(),
                &ReadOptions::with_key(key.clone()),
            );
            assert!(matches!(keyed, Err(stream::Error::NotEncrypted)), "{name}");
        }
        let survey = native::survey(&bytes[..], Limits::default()).unwrap();
        assert_eq!(survey.version, 2, "{name}");
        assert_eq!(survey.features.compressed, compress, "{name}");
        assert_eq!(survey.features.encrypted, encrypt, "{name}");
        assert_eq!(survey.key_id, encrypt.then(|| key.id()), "{name}");
        assert_eq!(survey.helpers.len(), records.len(), "{name}");
        assert_eq!(survey.stream_bytes, bytes.len() as u64, "{name}");
        // BEGIN, END per helper, a CHUNK per non-empty blob, STREAM_END.
        assert_eq!(survey.records, 4 + 4 + 3 + 1, "{name}");
    }
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

/// `tests/interop/v2_decoder.py`, a decoder written from the format
/// description alone, reads the version 2 golden files to the same
/// helpers, and rejects a changed one.
#[test]
fn independent_python_decoder_reads_the_v2_golden_files() {
    if !require(Requirement::PythonCrypto) {
        return;
    }
    let python = PYTHON;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/v2_decoder.py");
    let run = |stream: &std::path::Path| {
        std::process::Command::new(python)
            .arg(&script)
            .arg(stream)
            .arg(data_path(NATIVE_V2_KEY))
            .output()
            .unwrap()
    };
    let expected: String = golden_v2_records()
        .iter()
        .map(|r| {
            let digest = ring::digest::digest(&ring::digest::SHA256, &r.data);
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("{}\t{}\t{hex}\n", r.id, r.data.len())
        })
        .collect();
    for name in [NATIVE_V2_COMPRESSED, NATIVE_V2_ENCRYPTED, NATIVE_V2_BOTH] {
        let out = run(&data_path(name));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "{name}");
    }

    // The decoder is not a pass-through: a changed ciphertext byte (its
    // record CRC fixed) fails its authentication too.
    let mut bytes = read_data(NATIVE_V2_BOTH);
    let first = native::HEADER_BYTES + native::KEY_BLOCK_BYTES;
    let len = u32::from_le_bytes(bytes[first + 8..first + 12].try_into().unwrap()) as usize;
    bytes[first + 12] ^= 1;
    let crc = crc32c::crc32c(&bytes[first..first + 12 + len]);
    bytes[first + 12 + len..first + 16 + len].copy_from_slice(&crc.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.vmstate");
    std::fs::write(&changed, &bytes).unwrap();
    assert!(matches!(
        native::read_all_with(
            &bytes[..],
            Limits::default(),
            &ReadOptions::with_key(golden_key())
        ),
        Err(stream::Error::Authentication { .. })
    ));
    let out = run(&changed);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidTag"));
}
