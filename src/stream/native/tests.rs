use std::io::{self, Read, Write};

use super::*;
use crate::stream::{Error, Limits, Record};

/// Deterministic, non-repeating-looking test data.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// Incompressible test data (xorshift64).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn small_records() -> Vec<Record> {
    vec![
        Record::new("idA", b"I'am\0idA!\0".to_vec()),
        Record::new("idB", b"xyz".to_vec()),
        Record::new("empty", Vec::new()),
    ]
}

fn small_stream() -> Vec<u8> {
    encode(&small_records()).unwrap()
}

fn limits() -> Limits {
    Limits::default()
}

/// Builds streams by hand, valid or not, with correct record CRCs.
struct Craft(Vec<u8>);

impl Craft {
    fn new() -> Self {
        Craft(encode_header(Features::default()).to_vec())
    }

    fn with_header(version: u32, flags: u32) -> Self {
        let mut h = encode_header(Features::default());
        h[8..12].copy_from_slice(&version.to_le_bytes());
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&h[..16]);
        h[16..].copy_from_slice(&crc.to_le_bytes());
        Craft(h.to_vec())
    }

    fn raw(mut self, header: [u8; RECORD_HEADER_BYTES], payload: &[u8]) -> Self {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), payload);
        self.0.extend_from_slice(&header);
        self.0.extend_from_slice(payload);
        self.0.extend_from_slice(&crc.to_le_bytes());
        self
    }

    fn rec(self, kind: u8, helper: u32, payload: &[u8]) -> Self {
        let mut h = RecordHeader::new(Kind::Begin, helper, payload.len() as u32);
        h.kind = kind;
        self.raw(h.encode(), payload)
    }

    fn begin(self, helper: u32, id: &str) -> Self {
        self.rec(1, helper, id.as_bytes())
    }

    fn chunk(self, helper: u32, data: &[u8]) -> Self {
        self.rec(2, helper, data)
    }

    fn end(self, helper: u32, bytes: u64, crc: u32) -> Self {
        self.rec(3, helper, &u64_u32(bytes, crc))
    }

    fn end_of(self, helper: u32, data: &[u8]) -> Self {
        self.end(helper, data.len() as u64, crc32c::crc32c(data))
    }

    fn stream_end(self, count: u32, total: u64) -> Self {
        self.rec(0xFF, STREAM_END_HELPER, &u32_u64(count, total))
    }

    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

fn read_err(bytes: &[u8], limits: Limits) -> Error {
    match read_all(bytes, limits) {
        Ok(records) => panic!("accepted: {records:?}"),
        Err(e) => e,
    }
}

#[test]
fn crafted_valid_stream_matches_writer() {
    let a = b"I'am\0idA!\0";
    let crafted = Craft::new()
        .begin(0, "idA")
        .chunk(0, a)
        .end_of(0, a)
        .begin(1, "idB")
        .chunk(1, b"xyz")
        .end_of(1, b"xyz")
        .begin(2, "empty")
        .end_of(2, b"")
        .stream_end(3, 13)
        .bytes();
    assert_eq!(crafted, small_stream());
}

#[test]
fn round_trip_boundary_sizes() {
    for len in [
        0,
        1,
        4095,
        4096,
        4097,
        CHUNK_BYTES - 1,
        CHUNK_BYTES,
        CHUNK_BYTES + 1,
        2 * CHUNK_BYTES + 3,
    ] {
        let records = vec![Record::new("h", blob(len, 7))];
        let bytes = encode(&records).unwrap();
        assert_eq!(read_all(&bytes[..], limits()).unwrap(), records, "{len}");
        let summary = inspect(&bytes[..], limits()).unwrap();
        assert_eq!(summary.helpers[0].bytes, len as u64);
        assert_eq!(summary.helpers[0].chunks, len.div_ceil(CHUNK_BYTES) as u64);
        assert_eq!(summary.stream_bytes, bytes.len() as u64);
    }
}

#[test]
fn round_trip_several_helpers_and_no_helpers() {
    let records = vec![
        Record::new("a", blob(4097, 1)),
        Record::new("b", Vec::new()),
        Record::new("c", blob(CHUNK_BYTES + 1, 2)),
        Record::new("d".repeat(255), blob(1, 3)),
    ];
    let bytes = encode(&records).unwrap();
    assert_eq!(read_all(&bytes[..], limits()).unwrap(), records);
    let none = encode(&[]).unwrap();
    assert_eq!(none.len(), HEADER_BYTES + 12 + 12 + 4);
    assert_eq!(read_all(&none[..], limits()).unwrap(), vec![]);
}

#[test]
fn interleaved_chunks_round_trip() {
    let (a, b) = (blob(CHUNK_BYTES + 200, 1), blob(5000, 2));
    let mut w = Writer::new(Vec::new()).unwrap();
    let ha = w.begin("a").unwrap();
    let hb = w.begin("b").unwrap();
    let hc = w.begin("c").unwrap();
    assert_eq!((ha, hb, hc), (0, 1, 2));
    w.write_chunk(ha, &a[..100]).unwrap();
    w.write_chunk(hb, &b[..1]).unwrap();
    w.write_chunk(hc, &[]).unwrap();
    w.end(hc).unwrap();
    w.write_chunk(ha, &a[100..]).unwrap();
    w.write_chunk(hb, &b[1..]).unwrap();
    w.end(hb).unwrap();
    w.end(ha).unwrap();
    let written = w.bytes_written();
    let bytes = w.finish().unwrap();
    assert_eq!(written + 28, bytes.len() as u64);

    let mut r = Reader::new(&bytes[..], limits()).unwrap();
    let mut order = Vec::new();
    while let Some(e) = r.next_event().unwrap() {
        order.push(match e {
            Event::Begin { helper, id } => format!("B{helper}{id}"),
            Event::Chunk { helper, data } => format!("C{helper}:{}", data.len()),
            Event::End { helper, bytes } => format!("E{helper}:{bytes}"),
        });
    }
    let expect = "B0a B1b B2c C0:100 C1:1 E2:0 C0:1048576 C0:100 C1:4999 E1:5000 E0:1048776";
    assert_eq!(order.join(" "), expect);
    assert_eq!(r.id_of(1), Some("b"));
    assert_eq!(r.id_of(3), None);
    assert_eq!(r.offset(), bytes.len() as u64);
    assert!(r.next_event().unwrap().is_none());

    let records = read_all(&bytes[..], limits()).unwrap();
    assert_eq!(records[0], Record::new("a", a));
    assert_eq!(records[1], Record::new("b", b));
    assert_eq!(records[2], Record::new("c", Vec::new()));
}

#[test]
fn inspect_reports_each_helper() {
    let bytes = small_stream();
    let s = inspect(&bytes[..], limits()).unwrap();
    assert_eq!(s.version, 1);
    assert_eq!(s.total_bytes, 13);
    assert_eq!(s.stream_bytes, bytes.len() as u64);
    let ids: Vec<_> = s.helpers.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["idA", "idB", "empty"]);
    assert_eq!(s.helpers[0].crc32c, crc32c::crc32c(b"I'am\0idA!\0"));
    assert_eq!((s.helpers[2].bytes, s.helpers[2].chunks), (0, 0));
}

#[test]
fn rejects_bad_magic() {
    let mut bytes = small_stream();
    bytes[1] = b'v';
    assert!(matches!(read_err(&bytes, limits()), Error::BadMagic));
    assert!(matches!(read_err(b"\0\0\0\x02", limits()), Error::BadMagic));
}

#[test]
fn rejects_newer_version() {
    let bytes = Craft::with_header(3, 0).stream_end(0, 0).bytes();
    let e = read_err(&bytes, limits());
    assert!(matches!(
        e,
        Error::UnsupportedVersion {
            found: 3,
            supported: 2
        }
    ));
    assert_eq!(check_version(1, 0).unwrap(), Features::default());
    assert!(check_version(0, 0).is_err());
    // Version 2 has no stream without a feature, and no other flag.
    assert!(matches!(
        check_version(2, 0),
        Err(Error::UnsupportedFlags { flags: 0 })
    ));
    assert!(matches!(
        check_version(2, 4),
        Err(Error::UnsupportedFlags { flags: 4 })
    ));
    assert!(matches!(
        check_version(1, 1),
        Err(Error::UnsupportedFlags { flags: 1 })
    ));
    for flags in 1..=3 {
        let f = check_version(2, flags).unwrap();
        assert_eq!((f.flags(), f.version()), (flags, 2));
    }
    assert_eq!(Features::default().version(), 1);
}

#[test]
fn every_encoding_round_trips_and_reports_itself() {
    let key = crate::stream::Key::from_bytes([7; 32]);
    let mut records = small_records();
    records.push(Record::new("text", b"conntrack line\n".repeat(300_000)));
    records.push(Record::new("random", noise(3 * CHUNK_BYTES + 17)));
    for (compress, encrypt) in [(false, false), (true, false), (false, true), (true, true)] {
        let w = WriteOptions {
            compress,
            key: encrypt.then(|| key.clone()),
            ..WriteOptions::default()
        };
        let bytes = encode_with(&records, &w).unwrap();
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        assert_eq!(version, if compress || encrypt { 2 } else { 1 });
        let r = ReadOptions {
            key: encrypt.then(|| key.clone()),
            allow_unencrypted: false,
        };
        assert_eq!(read_all_with(&bytes[..], limits(), &r).unwrap(), records);
        let summary = inspect_with(&bytes[..], limits(), &r).unwrap();
        assert_eq!(summary.compressed, compress);
        assert_eq!(summary.key_id, encrypt.then(|| key.id()));
        assert_eq!(summary.stream_bytes, bytes.len() as u64);
        let text = &summary.helpers[3];
        if compress {
            assert!(text.stored_bytes * 20 < text.bytes, "{text:?}");
            assert_eq!(text.compressed_chunks, text.chunks);
            let random = &summary.helpers[4];
            assert_eq!(random.compressed_chunks, 0, "{random:?}");
        } else {
            assert!(text.stored_bytes >= text.bytes);
        }
        let survey = survey(&bytes[..], limits()).unwrap();
        assert_eq!(survey.helpers.len(), records.len());
        assert_eq!(survey.key_id, summary.key_id);
        assert_eq!(survey.helpers[3].stored_bytes, text.stored_bytes);
    }
}

#[test]
fn rejects_non_zero_flags() {
    let bytes = Craft::with_header(1, 4).stream_end(0, 0).bytes();
    assert!(matches!(
        read_err(&bytes, limits()),
        Error::UnsupportedFlags { flags: 4 }
    ));
}

#[test]
fn rejects_header_checksum() {
    let mut bytes = small_stream();
    bytes[17] ^= 1;
    assert!(matches!(
        read_err(&bytes, limits()),
        Error::Checksum { offset: 0, .. }
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_stream();
    for len in 0..bytes.len() {
        let e = read_err(&bytes[..len], limits());
        assert!(e.is_truncated(), "prefix {len}: {e}");
        assert_eq!(e.offset(), Some(len as u64), "prefix {len}");
        assert!(inspect(&bytes[..len], limits()).is_err());
    }
}

#[test]
fn every_bit_flip_is_an_error() {
    let bytes = small_stream();
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(read_all(&bad[..], limits()).is_err(), "bit {bit}");
        assert!(inspect(&bad[..], limits()).is_err(), "bit {bit}");
    }
}

#[test]
fn rejects_trailing_data() {
    let mut bytes = small_stream();
    let len = bytes.len() as u64;
    bytes.push(0);
    assert!(matches!(
        read_err(&bytes, limits()),
        Error::TrailingData { offset } if offset == len
    ));
}

#[test]
fn rejects_missing_stream_end() {
    let bytes = Craft::new().begin(0, "a").end_of(0, b"").bytes();
    let e = read_err(&bytes, limits());
    assert!(matches!(e, Error::Truncated { expected, .. } if expected.contains("STREAM_END")));
}

/// Hands out `bytes`, then fails every read: proves the reader did not
/// try to read (or allocate for) what a header announced.
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
fn rejects_chunk_over_cap_before_reading_it() {
    let head = RecordHeader::new(Kind::Chunk, 0, u32::MAX).encode();
    let mut bytes = Craft::new().begin(0, "a").bytes();
    bytes.extend_from_slice(&head);
    let mut r = Reader::new(Exactly(&bytes), limits()).unwrap();
    assert!(matches!(r.next_event(), Ok(Some(Event::Begin { .. }))));
    let e = r.next_event().unwrap_err();
    assert!(
        matches!(e, Error::OverLimit { what: "chunk payload", found, .. } if found == u64::from(u32::MAX)),
        "{e}"
    );
}

#[test]
fn rejects_blob_over_limit_before_reading_it() {
    let small = Limits {
        max_blob_bytes: 100,
        ..limits()
    };
    let head = RecordHeader::new(Kind::Chunk, 0, 60).encode();
    let mut bytes = Craft::new().begin(0, "idA").chunk(0, &[1; 50]).bytes();
    bytes.extend_from_slice(&head);
    let mut r = Reader::new(Exactly(&bytes), small).unwrap();
    r.next_event().unwrap();
    r.next_event().unwrap();
    let e = r.next_event().unwrap_err();
    assert!(matches!(
        e,
        Error::OverLimit {
            found: 110,
            limit: 100,
            ..
        }
    ));
    assert_eq!(e.helper_id(), Some("idA"));
    assert!(
        e.to_string()
            .starts_with("helper \"idA\": blob is too large"),
        "{e}"
    );

    let exact = encode(&[Record::new("a", vec![0; 100])]).unwrap();
    assert!(read_all(&exact[..], small).is_ok());
}

#[test]
fn rejects_duplicate_id() {
    let bytes = Craft::new()
        .begin(0, "a")
        .end_of(0, b"")
        .begin(1, "a")
        .end_of(1, b"")
        .stream_end(2, 0)
        .bytes();
    assert!(matches!(read_err(&bytes, limits()), Error::DuplicateId { id } if id == "a"));
}

#[test]
fn rejects_too_many_helpers() {
    let records: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| Record::new(*id, vec![1]))
        .collect();
    let bytes = encode(&records).unwrap();
    let two = Limits {
        max_helpers: 2,
        ..limits()
    };
    assert!(matches!(
        read_err(&bytes, two),
        Error::TooManyHelpers { found: 3, limit: 2 }
    ));
}

#[test]
fn rejects_unknown_kind() {
    let bytes = Craft::new().rec(4, 0, b"x").stream_end(0, 0).bytes();
    let e = read_err(&bytes, limits());
    assert!(matches!(e, Error::Corrupt { offset: 20, .. }), "{e}");
}

#[test]
fn rejects_non_zero_reserved_fields() {
    for (at, value) in [(1, 1u8), (2, 1), (3, 0x80)] {
        let mut h = RecordHeader::new(Kind::Begin, 0, 1).encode();
        h[at] = value;
        let bytes = Craft::new().raw(h, b"a").bytes();
        let e = read_err(&bytes, limits());
        assert!(
            matches!(&e, Error::Corrupt { reason, .. } if reason.contains("reserved")),
            "{e}"
        );
    }
}

#[test]
fn rejects_begin_out_of_order_and_bad_ids() {
    let bytes = Craft::new().begin(1, "a").bytes();
    assert!(matches!(read_err(&bytes, limits()), Error::Corrupt { .. }));
    for id in [&b"a\0b"[..], &[0xFF, 0xFE]] {
        let bytes = Craft::new().rec(1, 0, id).bytes();
        assert!(matches!(
            read_err(&bytes, limits()),
            Error::InvalidId { .. }
        ));
    }
    let bytes = Craft::new().rec(1, 0, b"").bytes();
    assert!(matches!(read_err(&bytes, limits()), Error::Corrupt { .. }));
    let bytes = Craft::new().rec(1, 0, &[b'a'; 256]).bytes();
    assert!(matches!(read_err(&bytes, limits()), Error::Corrupt { .. }));
}

#[test]
fn rejects_records_for_unknown_or_ended_helpers() {
    let unknown = Craft::new().chunk(0, b"x").bytes();
    let e = read_err(&unknown, limits());
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("unknown")),
        "{e}"
    );

    let ended = Craft::new()
        .begin(0, "a")
        .end_of(0, b"")
        .chunk(0, b"x")
        .bytes();
    let e = read_err(&ended, limits());
    assert_eq!(e.helper_id(), Some("a"));

    let twice = Craft::new()
        .begin(0, "a")
        .end_of(0, b"")
        .end_of(0, b"")
        .bytes();
    assert_eq!(read_err(&twice, limits()).helper_id(), Some("a"));

    let empty_chunk = Craft::new().begin(0, "a").chunk(0, b"").bytes();
    assert!(matches!(
        read_err(&empty_chunk, limits()),
        Error::Corrupt { .. }
    ));
}

#[test]
fn rejects_end_length_mismatch() {
    let bytes = Craft::new()
        .begin(0, "idA")
        .chunk(0, b"abc")
        .end(0, 4, crc32c::crc32c(b"abc"))
        .stream_end(1, 3)
        .bytes();
    let e = read_err(&bytes, limits());
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert_eq!(e.helper_id(), Some("idA"));
    assert!(e.to_string().contains("helper \"idA\""), "{e}");
}

#[test]
fn rejects_blob_checksum_mismatch() {
    let bytes = Craft::new()
        .begin(0, "idA")
        .chunk(0, b"abc")
        .end(0, 3, crc32c::crc32c(b"abd"))
        .stream_end(1, 3)
        .bytes();
    let e = read_err(&bytes, limits());
    assert!(matches!(e, Error::Checksum { what: "blob", .. }), "{e}");
    assert_eq!(e.helper_id(), Some("idA"));
}

#[test]
fn rejects_helper_not_ended() {
    let bytes = Craft::new()
        .begin(0, "open")
        .chunk(0, b"abc")
        .stream_end(1, 3)
        .bytes();
    let e = read_err(&bytes, limits());
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert_eq!(e.helper_id(), Some("open"));
}

#[test]
fn rejects_wrong_stream_end() {
    let base = || Craft::new().begin(0, "a").chunk(0, b"ab").end_of(0, b"ab");
    for bytes in [
        base().stream_end(2, 2).bytes(),
        base().stream_end(1, 3).bytes(),
        base().rec(0xFF, 0, &u32_u64(1, 2)).bytes(),
        base().rec(0xFF, STREAM_END_HELPER, &[0; 11]).bytes(),
    ] {
        assert!(matches!(read_err(&bytes, limits()), Error::Corrupt { .. }));
    }
    assert!(read_all(&base().stream_end(1, 2).bytes()[..], limits()).is_ok());
}

#[test]
fn reader_is_poisoned_after_an_error_and_done_after_the_end() {
    let mut bytes = small_stream();
    let mut r = Reader::new(&bytes[..], limits()).unwrap();
    while r.next_event().unwrap().is_some() {}
    assert!(r.next_event().unwrap().is_none());
    assert!(format!("{r:?}").contains(&format!("offset: {}", bytes.len())));

    bytes[33] ^= 0x10;
    let mut r = Reader::new(&bytes[..], limits()).unwrap();
    assert!(matches!(
        r.next_event(),
        Err(Error::Checksum { offset: 20, .. })
    ));
    assert!(matches!(r.next_event(), Err(Error::Poisoned)));
}

#[test]
fn writer_rejects_misuse_without_writing() {
    let mut w = Writer::new(Vec::new()).unwrap();
    let a = w.begin("a").unwrap();
    let before = w.bytes_written();
    assert!(matches!(w.begin("a"), Err(Error::DuplicateId { .. })));
    assert!(matches!(w.begin(""), Err(Error::InvalidId { .. })));
    assert!(matches!(w.begin("x\0"), Err(Error::InvalidId { .. })));
    assert!(matches!(
        w.begin(&"x".repeat(256)),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(
        w.write_chunk(7, b"x"),
        Err(Error::NotOpen { helper: 7 })
    ));
    assert!(matches!(w.end(1), Err(Error::NotOpen { helper: 1 })));
    w.write_chunk(a, &[]).unwrap();
    assert_eq!(w.bytes_written(), before);
    assert_eq!(w.get_ref().len() as u64, before);
    w.end(a).unwrap();
    assert!(matches!(w.write_chunk(a, b"x"), Err(Error::NotOpen { .. })));
    assert!(matches!(w.end(a), Err(Error::NotOpen { .. })));

    let mut w = Writer::new(Vec::new()).unwrap();
    w.begin("left-open").unwrap();
    let e = w.finish().unwrap_err();
    assert_eq!(e.helper_id(), Some("left-open"));
}

/// Accepts `budget` bytes, then fails.
struct Failing {
    budget: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_is_poisoned_after_an_io_error() {
    assert!(matches!(
        Writer::new(Failing { budget: 5 }),
        Err(Error::Io(_))
    ));
    let mut w = Writer::new(Failing { budget: 40 }).unwrap();
    let a = w.begin("a").unwrap();
    assert!(matches!(w.write_chunk(a, &[0; 100]), Err(Error::Io(_))));
    assert!(matches!(w.end(a), Err(Error::Poisoned)));
    assert!(matches!(w.begin("b"), Err(Error::Poisoned)));
    assert!(matches!(w.finish(), Err(Error::Poisoned)));
}

/// A compressed stream with a helper's state of `text` and `random`
/// chunks, written interleaved with another's, by a writer with
/// `threads` compression threads.
fn compressed_by(threads: usize, key: Option<&crate::stream::Key>) -> Vec<u8> {
    let options = WriteOptions {
        compress: true,
        key: key.cloned(),
        compress_threads: threads,
    };
    let mut w = Writer::with_options(Vec::new(), &options).unwrap();
    let a = w.begin("text").unwrap();
    let b = w.begin("mixed").unwrap();
    let text =
        b"tcp 6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2\n".repeat(40_000);
    let random = noise(2 * CHUNK_BYTES + 5);
    w.write_chunk(a, &text).unwrap();
    w.write_chunk(b, &random).unwrap();
    let c = w.begin("small").unwrap();
    w.write_chunk(c, b"tiny").unwrap();
    w.end(c).unwrap();
    w.write_chunk(b, &text[..CHUNK_BYTES / 3]).unwrap();
    w.write_chunk(a, &random[..100]).unwrap();
    w.end(b).unwrap();
    w.end(a).unwrap();
    w.finish().unwrap()
}

#[test]
fn compression_threads_write_the_same_stream() {
    let one = compressed_by(1, None);
    for threads in [2, 3, 8] {
        assert!(compressed_by(threads, None) == one, "{threads} threads");
    }
    let records = read_all(&one[..], limits()).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["text", "mixed", "small"]);
    let summary = inspect(&one[..], limits()).unwrap();
    // Text chunks shrink; the random ones, and the small one, stay raw.
    let text = &summary.helpers[0];
    assert_eq!((text.chunks, text.compressed_chunks), (4, 3));
    let mixed = &summary.helpers[1];
    assert_eq!((mixed.chunks, mixed.compressed_chunks), (4, 1));
    assert_eq!(summary.helpers[2].compressed_chunks, 0);

    // Encrypted, the records are sealed in the same order.
    let key = crate::stream::Key::from_bytes([9; 32]);
    let sealed = compressed_by(4, Some(&key));
    let r = ReadOptions {
        key: Some(key),
        allow_unencrypted: false,
    };
    assert_eq!(read_all_with(&sealed[..], limits(), &r).unwrap(), records);
}

#[test]
fn compressing_writer_reports_a_failed_output() {
    let options = WriteOptions {
        compress: true,
        key: None,
        compress_threads: 2,
    };
    let text = b"conntrack line\n".repeat(200_000);
    // The header fits, the first records do not: the failure comes from
    // a later call at the latest, and then every call is refused.
    let mut w = Writer::with_options(Failing { budget: 100 }, &options).unwrap();
    let a = w.begin("a").unwrap();
    let failed = w
        .write_chunk(a, &text)
        .and_then(|()| w.end(a))
        .and_then(|()| w.flush_pending());
    assert!(matches!(failed, Err(Error::Io(_))), "{failed:?}");
    assert!(matches!(w.begin("b"), Err(Error::Poisoned)));
    assert!(matches!(w.finish(), Err(Error::Poisoned)));
}
