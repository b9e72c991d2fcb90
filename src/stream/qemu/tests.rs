use std::io::{self, Read};

use super::*;

/// The `dbus-vmstate` section payload real QEMU 7.2 wrote for two helpers
/// (tests/data/README.md): 46 bytes of entries, then 18 bytes of padding.
const QEMU_7_2_TWO_HELPERS: &[u8] =
    include_bytes!("../../../tests/data/qemu-7.2-two-helpers.payload");

fn limits() -> Limits {
    Limits::default()
}

fn entry(id: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (id.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(id);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn payload(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = (entries.len() as u32).to_be_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(e);
    }
    out
}

fn decode_err(bytes: &[u8], limits: Limits) -> Error {
    match decode(bytes, limits) {
        Ok(d) => panic!("accepted: {d:?}"),
        Err(e) => e,
    }
}

#[test]
fn decodes_real_qemu_payload() {
    let d = decode(QEMU_7_2_TWO_HELPERS, limits()).unwrap();
    assert_eq!(
        d.records,
        vec![
            Record::new("idA", b"I'am\0idA!\0".to_vec()),
            Record::new("idB", b"I'am\0idB!\0".to_vec()),
        ]
    );
    assert_eq!(d.trailing_bytes, 18);
    assert_eq!(encode(&d.records).unwrap(), &QEMU_7_2_TWO_HELPERS[..46]);
}

#[test]
fn round_trip_boundary_sizes() {
    for len in [0, 1, 4095, 4096, 4097, MAX_QEMU_BLOB_BYTES] {
        let records = vec![
            Record::new("a", vec![0xA5; len]),
            Record::new("b".repeat(255), vec![7; len / 2]),
        ];
        let bytes = encode(&records).unwrap();
        assert_eq!(bytes.len(), 4 + 8 + 1 + len + 8 + 255 + len / 2);
        let d = decode(&bytes, limits()).unwrap();
        assert_eq!((d.records, d.trailing_bytes), (records, 0));
    }
    let d = decode(&0u32.to_be_bytes(), limits()).unwrap();
    assert!(d.records.is_empty());
}

#[test]
fn accepts_any_trailing_bytes_without_keeping_them() {
    let mut bytes = payload(&[entry(b"a", b"1")]);
    bytes.extend(std::iter::repeat_n(0xEE, 3 * DISCARD_BUF_BYTES + 5));
    let d = decode(&bytes, limits()).unwrap();
    assert_eq!(d.trailing_bytes, 3 * DISCARD_BUF_BYTES as u64 + 5);
    assert_eq!(d.records, vec![Record::new("a", b"1".to_vec())]);
}

#[test]
fn rejects_bad_id_lengths() {
    let zero = payload(&[entry(b"", b"x")]);
    assert!(matches!(
        decode_err(&zero, limits()),
        Error::InvalidId { reason: "empty" }
    ));
    let long = payload(&[entry(&[b'a'; 256], b"x")]);
    assert!(matches!(
        decode_err(&long, limits()),
        Error::InvalidId { .. }
    ));
    let nul = payload(&[entry(b"a\0", b"x")]);
    assert!(matches!(
        decode_err(&nul, limits()),
        Error::InvalidId { .. }
    ));
    let ok = payload(&[entry(&[b'a'; 255], b"x")]);
    assert!(decode(&ok, limits()).is_ok());
}

/// Hands out `bytes`, then fails every read.
struct Exactly<'a>(&'a [u8]);

impl Read for Exactly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::Error::other("read past the crafted bytes"));
        }
        self.0.read(buf)
    }
}

#[test]
fn rejects_data_over_limit_before_reading_it() {
    let mut bytes = payload(&[entry(b"idA", b"")]);
    let at = bytes.len() - 4;
    bytes[at..].copy_from_slice(&(MAX_QEMU_BLOB_BYTES as u32 + 1).to_be_bytes());
    let e = read(Exactly(&bytes), limits()).unwrap_err();
    assert!(matches!(e, Error::OverLimit { limit, .. } if limit == MAX_QEMU_BLOB_BYTES as u64));
    assert_eq!(e.helper_id(), Some("idA"));

    bytes[at..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        read(Exactly(&bytes), limits()),
        Err(Error::OverLimit { .. })
    ));

    let small = Limits {
        max_blob_bytes: 9,
        ..limits()
    };
    let ten = payload(&[entry(b"idA", &[0; 10])]);
    assert!(matches!(
        decode_err(&ten, small),
        Error::OverLimit { limit: 9, .. }
    ));
}

#[test]
fn rejects_too_many_helpers_before_reading_them() {
    let bytes = u32::MAX.to_be_bytes();
    assert!(matches!(
        read(Exactly(&bytes), limits()),
        Err(Error::TooManyHelpers { .. })
    ));
}

#[test]
fn every_truncation_inside_the_entries_is_an_error() {
    for len in 0..46 {
        let e = decode_err(&QEMU_7_2_TWO_HELPERS[..len], limits());
        assert!(e.is_truncated(), "prefix {len}: {e}");
        assert_eq!(e.offset(), Some(len as u64));
    }
}

#[test]
fn rejects_duplicate_id() {
    let bytes = payload(&[entry(b"a", b"1"), entry(b"a", b"2")]);
    assert!(matches!(decode_err(&bytes, limits()), Error::DuplicateId { id } if id == "a"));
}

#[test]
fn writer_refuses_blob_over_qemu_limit_naming_the_helper() {
    let records = vec![
        Record::new("ok", vec![0; MAX_QEMU_BLOB_BYTES]),
        Record::new("big", vec![0; MAX_QEMU_BLOB_BYTES + 1]),
    ];
    let mut out = Vec::new();
    let e = write(&mut out, &records).unwrap_err();
    assert!(out.is_empty(), "nothing may be written");
    assert!(matches!(
        e,
        Error::OverLimit {
            what: "helper state for QEMU",
            ..
        }
    ));
    assert_eq!(e.helper_id(), Some("big"));
    assert_eq!(
        e.to_string(),
        "helper \"big\": helper state for QEMU is too large: \
         1048577 bytes is over the limit of 1048576 bytes"
    );
}

#[test]
fn writer_refuses_bad_ids() {
    let dup = [Record::new("a", vec![]), Record::new("a", vec![])];
    assert!(matches!(encode(&dup), Err(Error::DuplicateId { .. })));
    for id in ["", "a\0", &"x".repeat(256)] {
        assert!(matches!(
            encode(&[Record::new(id, vec![])]),
            Err(Error::InvalidId { .. })
        ));
    }
}
