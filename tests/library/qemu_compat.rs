//! Compatibility with QEMU's `dbus-vmstate` at the library level: streams
//! converted to QEMU's section payload and back keep every byte, QEMU's
//! limits are checked when writing its format, and the payload real QEMU
//! 7.2 wrote loads into peer-to-peer helpers.

use std::path::PathBuf;

use crate::util::*;
use dbus_vmstate::stream::{self, native, qemu, Format, Limits, Record};

/// The payload of the `dbus-vmstate` section QEMU 7.2 wrote for helpers
/// `idA` and `idB` (tests/data/README.md): 46 bytes of entries, then 18
/// bytes of QEMU's zero padding.
fn qemu_vector() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-two-helpers.payload")
}

const VECTOR_ENTRY_BYTES: usize = 46;

fn vector_records() -> Vec<Record> {
    vec![
        Record::new("idA", b"I'am\0idA!\0".to_vec()),
        Record::new("idB", b"I'am\0idB!\0".to_vec()),
    ]
}

/// Records at QEMU's limits and around them: an empty blob, one byte, a
/// page and one, exactly 1 MiB; Ids of 1 byte, 255 bytes and non-ASCII
/// UTF-8.
fn qemu_sized_records() -> Vec<Record> {
    vec![
        Record::new("a", Vec::new()),
        Record::new("x".repeat(255), vec![0x42]),
        Record::new("hélper-ü", pattern(4097, 3)),
        Record::new("full", pattern(qemu::MAX_QEMU_BLOB_BYTES, 9)),
    ]
}

fn convert(bytes: &[u8], to: Format) -> (Format, Vec<u8>) {
    let (from, records) = stream::read_records(bytes, Limits::default()).unwrap();
    let mut out = Vec::new();
    stream::write_records(&mut out, to, &records).unwrap();
    (from, out)
}

#[test]
fn native_to_qemu_and_back_keeps_every_byte() {
    let records = qemu_sized_records();
    let native_bytes = native::encode(&records).unwrap();

    let (from, qemu_bytes) = convert(&native_bytes, Format::Qemu);
    assert_eq!(from, Format::Native);
    assert_eq!(Format::detect(&qemu_bytes), Some(Format::Qemu));
    let decoded = qemu::decode(&qemu_bytes, Limits::default()).unwrap();
    assert_eq!(decoded.records, records);
    assert_eq!(decoded.trailing_bytes, 0);

    let (from, back) = convert(&qemu_bytes, Format::Native);
    assert_eq!(from, Format::Qemu);
    assert!(
        back == native_bytes,
        "native -> qemu -> native changed bytes"
    );
}

#[test]
fn qemu_to_native_and_back_gives_qemu_canonical_payload() {
    let vector = std::fs::read(qemu_vector()).unwrap();
    let (from, native_bytes) = convert(&vector, Format::Native);
    assert_eq!(from, Format::Qemu);
    assert_eq!(
        native::read_all(&native_bytes[..], Limits::default()).unwrap(),
        vector_records()
    );

    let (from, qemu_bytes) = convert(&native_bytes, Format::Qemu);
    assert_eq!(from, Format::Native);
    // QEMU's padding is not part of the state: the entries come back byte
    // for byte, without it.
    assert_eq!(qemu_bytes, vector[..VECTOR_ENTRY_BYTES]);
    assert!(vector[VECTOR_ENTRY_BYTES..].iter().all(|&b| b == 0));
}

#[test]
fn writing_qemu_format_rejects_a_helper_over_1_mib_by_name() {
    let mut records = qemu_sized_records();
    records.insert(
        1,
        Record::new("slirp", pattern(qemu::MAX_QEMU_BLOB_BYTES + 1, 1)),
    );
    let mut out = Vec::new();
    let err = stream::write_records(&mut out, Format::Qemu, &records).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, stream::Error::OverLimit { ref id, .. } if id.as_deref() == Some("slirp")),
        "{err:?}"
    );
    assert!(text.contains(r#"helper "slirp""#), "{text}");
    assert!(text.contains("for QEMU"), "{text}");
    assert!(
        text.contains("1048577") && text.contains("1048576"),
        "{text}"
    );
    assert!(
        out.is_empty(),
        "nothing may be written when a helper is too large"
    );
    // The same records are fine in the native format.
    stream::write_records(Vec::new(), Format::Native, &records).unwrap();
}

#[test]
fn writing_qemu_format_rejects_ids_outside_1_to_255_bytes() {
    for (id, reason) in [
        ("y".repeat(256), "longer than 255 bytes"),
        (String::new(), "empty"),
    ] {
        let records = vec![Record::new("ok", vec![1]), Record::new(id.clone(), vec![2])];
        let mut out = Vec::new();
        let err = stream::write_records(&mut out, Format::Qemu, &records).unwrap_err();
        assert!(
            err.to_string().contains(reason),
            "{} bytes: {err}",
            id.len()
        );
        assert!(out.is_empty());
    }
}

/// A helper whose state is over QEMU's limit saves fine into the native
/// format, and converting that stream for QEMU fails naming it.
#[test]
fn saved_stream_too_large_for_qemu_names_the_helper() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["tpm", "slirp"]).bind().unwrap();
        let tpm = Fake::new("tpm", pattern(qemu::MAX_QEMU_BLOB_BYTES + 4096, 7));
        let slirp = Fake::new("slirp", pattern(1000, 8));
        let tasks = [
            tpm.spawn(sock(dir.path(), "tpm")),
            slirp.spawn(sock(dir.path(), "slirp")),
        ];
        let (saved, _) = c.save(Vec::new()).await.unwrap();
        let (_, records) = stream::read_records(&saved[..], Limits::default()).unwrap();
        let err = stream::write_records(Vec::new(), Format::Qemu, &records).unwrap_err();
        assert_eq!(err.helper_id(), Some("tpm"), "{err}");
        assert!(err.to_string().contains(r#"helper "tpm""#), "{err}");
        c.shutdown().await;
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// A coordinator's native stream, converted to QEMU's payload, loads into
/// fresh helpers with every byte, with the format given and detected.
#[test]
fn saved_stream_converted_to_qemu_loads_back() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["big", "empty"]).bind().unwrap();
        let big = Fake::new("big", pattern(qemu::MAX_QEMU_BLOB_BYTES, 5));
        let empty = Fake::new("empty", Vec::new());
        let tasks = [
            big.spawn(sock(dir.path(), "big")),
            empty.spawn(sock(dir.path(), "empty")),
        ];
        let (saved, _) = c.save(Vec::new()).await.unwrap();
        let (_, qemu_bytes) = convert(&saved, Format::Qemu);
        for format in [Some(Format::Qemu), None] {
            big.set_data(vec![1; 3]);
            empty.set_data(vec![1; 3]);
            let report = c
                .load(std::io::Cursor::new(qemu_bytes.clone()), format)
                .await
                .unwrap();
            assert_eq!(report.format, Format::Qemu);
            assert!(
                big.data() == pattern(qemu::MAX_QEMU_BLOB_BYTES, 5),
                "{format:?}"
            );
            assert!(empty.data().is_empty(), "{format:?}");
        }
        c.shutdown().await;
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// The payload real QEMU 7.2 wrote (with its padding) loads into
/// peer-to-peer helpers, with the format given and detected.
#[test]
fn qemu_written_payload_loads_into_p2p_helpers() {
    for format in [Some(Format::Qemu), None] {
        run(async move {
            let dir = tmpdir();
            let c = builder(dir.path(), &["idA", "idB"]).bind().unwrap();
            let a = Fake::new("idA", Vec::new());
            let b = Fake::new("idB", Vec::new());
            let tasks = [
                a.spawn(sock(dir.path(), "idA")),
                b.spawn(sock(dir.path(), "idB")),
            ];
            let report = c.load_from_path(qemu_vector(), format).await.unwrap();
            assert_eq!(report.format, Format::Qemu);
            assert_eq!(report.helpers.len(), 2);
            assert_eq!(a.data(), b"I'am\0idA!\0");
            assert_eq!(b.data(), b"I'am\0idB!\0");
            assert_eq!((a.loads(), b.loads()), (1, 1));
            c.shutdown().await;
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
}

/// Given as native, the QEMU payload is rejected before any `Load`.
#[test]
fn qemu_payload_read_as_native_calls_no_load() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["idA", "idB"]).bind().unwrap();
        let a = Fake::new("idA", vec![7]);
        let b = Fake::new("idB", vec![7]);
        let tasks = [
            a.spawn(sock(dir.path(), "idA")),
            b.spawn(sock(dir.path(), "idB")),
        ];
        connected(&c).await;
        let err = c
            .load_from_path(qemu_vector(), Some(Format::Native))
            .await
            .unwrap_err();
        assert!(err.is_stream(), "{err}");
        assert_eq!((a.loads(), b.loads()), (0, 0));
        assert_eq!((a.data(), b.data()), (vec![7], vec![7]));
        c.shutdown().await;
        for t in tasks {
            t.await.unwrap();
        }
    });
}
