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

/// [`migration`]: the section inside a whole migration stream.
mod migration_stream {
    use super::super::migration::{locate, splice, Section};
    use super::*;

    /// A whole migration stream real QEMU 7.2 wrote (tests/data/README.md):
    /// its `dbus-vmstate` section holds [`QEMU_7_2_TWO_HELPERS`].
    const QEMU_7_2_MIGRATION: &[u8] =
        include_bytes!("../../../tests/data/qemu-7.2-two-helpers.migration");

    /// Where the committed file's section starts, and its payload.
    const SECTION_AT: usize = 0x79;
    const PAYLOAD: Range<usize> = 0xa4..0xe4;

    use std::ops::Range;

    fn err(stream: &[u8]) -> Error {
        locate(stream).expect_err("the locator refuses it")
    }

    /// A header and one section holding `payload`, footer and all.
    fn section(section_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x04];
        out.extend_from_slice(&section_id.to_be_bytes());
        out.push(25);
        out.extend_from_slice(b"dbus-vmstate/dbus-vmstate");
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0x7e);
        out.extend_from_slice(&section_id.to_be_bytes());
        out
    }

    #[test]
    fn finds_the_section_in_real_qemus_stream() {
        let found = locate(QEMU_7_2_MIGRATION).unwrap();
        assert_eq!(found.offset, SECTION_AT as u64);
        assert_eq!((found.section_id, found.instance_id), (1, 0));
        assert_eq!(found.payload, PAYLOAD);
        assert_eq!(
            &QEMU_7_2_MIGRATION[found.payload.clone()],
            QEMU_7_2_TWO_HELPERS
        );
        assert_eq!(
            found.decoded,
            decode(QEMU_7_2_TWO_HELPERS, limits()).unwrap()
        );
    }

    #[test]
    fn splice_changes_only_the_size_and_the_payload() {
        let found = locate(QEMU_7_2_MIGRATION).unwrap();
        for size in [0, 1, 4095, 4096, 4097] {
            let records = vec![Record::new("idA", vec![0xa5; size])];
            let payload = encode(&records).unwrap();
            let mut spliced = Vec::new();
            splice(&mut spliced, QEMU_7_2_MIGRATION, &found, &payload).unwrap();
            let again = locate(&spliced).unwrap();
            assert_eq!(again.decoded.records, records);
            assert_eq!(again.decoded.trailing_bytes, 0);
            let size_at = PAYLOAD.start - 4;
            assert_eq!(spliced[..size_at], QEMU_7_2_MIGRATION[..size_at]);
            assert_eq!(
                spliced[size_at..size_at + 4],
                (payload.len() as u32).to_be_bytes()
            );
            let rest = &spliced[PAYLOAD.start + payload.len()..];
            assert_eq!(rest, &QEMU_7_2_MIGRATION[PAYLOAD.end..]);
        }
    }

    #[test]
    fn splice_refuses_a_section_of_another_stream() {
        let found = locate(QEMU_7_2_MIGRATION).unwrap();
        let other = Section {
            payload: found.payload.start..found.payload.end + 1,
            ..found.clone()
        };
        let e = splice(Vec::new(), QEMU_7_2_MIGRATION, &other, b"").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        let e = splice(Vec::new(), &QEMU_7_2_MIGRATION[..100], &found, b"").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }

    #[test]
    fn rejects_what_is_no_migration_stream() {
        for (bytes, reason) in [
            (&b""[..], "shorter than its magic"),
            (b"QEVM\0\0", "shorter than its header"),
            (b"QEVM\0\0\0\x02", "unsupported file version"),
            (QEMU_7_2_TWO_HELPERS, "bad magic"),
        ] {
            let e = err(bytes);
            assert!(matches!(e, Error::NotMigration { .. }), "{e}");
            assert!(e.to_string().contains(reason), "{e}");
        }
    }

    #[test]
    fn rejects_a_stream_without_the_section() {
        let mut stream = QEMU_7_2_MIGRATION[..SECTION_AT].to_vec();
        stream.extend_from_slice(&QEMU_7_2_MIGRATION[PAYLOAD.end + 5..]);
        assert!(matches!(err(&stream), Error::NoSection));
        // The idstr alone, not in a full section's header, is no section.
        let mut stream = b"QEVM\0\0\0\x03".to_vec();
        stream.extend_from_slice(b"\x19dbus-vmstate/dbus-vmstate");
        assert!(matches!(err(&stream), Error::NoSection));
    }

    #[test]
    fn rejects_two_sections_naming_both() {
        let mut stream = QEMU_7_2_MIGRATION[..PAYLOAD.end + 5].to_vec();
        let second = stream.len();
        stream.extend_from_slice(&section(9, &encode(&[]).unwrap()));
        stream.extend_from_slice(&QEMU_7_2_MIGRATION[PAYLOAD.end + 5..]);
        let e = err(&stream);
        assert!(
            matches!(e, Error::AmbiguousSection { first, second: s }
                if first == SECTION_AT as u64 && s == second as u64),
            "{e}"
        );
        assert!(e.to_string().contains("two dbus-vmstate sections"), "{e}");
    }

    #[test]
    fn a_header_match_without_its_footer_is_ignored_beside_a_real_section() {
        // A guest's RAM may hold the header bytes; they have no footer.
        let mut stream = QEMU_7_2_MIGRATION[..SECTION_AT].to_vec();
        stream.extend_from_slice(&QEMU_7_2_MIGRATION[SECTION_AT..PAYLOAD.start + 8]);
        let at = stream.len();
        stream.extend_from_slice(&QEMU_7_2_MIGRATION[SECTION_AT..]);
        let found = locate(&stream).unwrap();
        assert_eq!(found.offset, at as u64);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for len in 0..QEMU_7_2_MIGRATION.len() {
            let stream = &QEMU_7_2_MIGRATION[..len];
            match len {
                // Cut after the footer: the section is whole.
                l if l >= PAYLOAD.end + 5 => assert!(locate(stream).is_ok(), "{len}"),
                // Cut after the whole idstr: the section is recognised.
                l if l >= SECTION_AT + 31 => {
                    let e = err(stream);
                    assert!(e.is_truncated(), "cut at {len}: {e}");
                    assert_eq!(e.offset(), Some(len as u64), "{e}");
                }
                // Cut before it: no section is seen at all.
                _ => assert!(!err(stream).is_truncated(), "{len}"),
            }
        }
    }

    #[test]
    fn rejects_a_missing_or_wrong_footer() {
        for (at, byte) in [(PAYLOAD.end, 0x00), (PAYLOAD.end + 4, 0x02)] {
            let mut stream = QEMU_7_2_MIGRATION.to_vec();
            stream[at] = byte;
            let e = err(&stream);
            assert!(matches!(e, Error::Corrupt { offset, .. } if offset == SECTION_AT as u64));
            assert!(e.to_string().contains("not followed by its footer"), "{e}");
        }
    }

    #[test]
    fn rejects_another_vmsd_version() {
        let mut stream = QEMU_7_2_MIGRATION.to_vec();
        stream[PAYLOAD.start - 5] = 1;
        let e = err(&stream);
        assert!(e.to_string().contains("version 1, expected 0"), "{e}");
    }

    #[test]
    fn rejects_a_payload_that_does_not_decode_naming_the_helper() {
        let bad = [entry(b"idA", b"x"), entry(b"idA", b"y")];
        let mut stream = b"QEVM\0\0\0\x03".to_vec();
        stream.extend_from_slice(&section(3, &payload(&bad)));
        let e = err(&stream);
        assert!(matches!(e, Error::Section { offset: 8, .. }), "{e}");
        assert_eq!(e.helper_id(), Some("idA"));
        let cause = std::error::Error::source(&e).expect("a cause");
        assert!(cause.to_string().contains("duplicate helper id"), "{cause}");
    }

    #[test]
    fn arbitrary_bytes_after_the_header_never_panic() {
        let mut seed = 0x2545_f491_u32;
        for len in 0..200 {
            let mut stream = b"QEVM\0\0\0\x03".to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                stream.push(seed as u8);
            }
            // The idstr in the middle makes the locator look closer.
            stream.splice(8..8, section(seed, b"\0\0\0\x09")[..len.min(40)].to_vec());
            let _ = locate(&stream);
        }
    }
}
