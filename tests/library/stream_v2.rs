//! Version 2 of the native format through the public API: round trips of
//! every feature combination, tampering with encrypted streams (with the
//! CRCs left wrong and with them recomputed, so that only the AEAD can
//! catch it), keys and key files, and corrupt compressed chunks.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use dbus_vmstate::stream::native::{self, ReadOptions, WriteOptions, Writer};
use dbus_vmstate::stream::{Error, Key, KeyError, Limits, Record};

/// Record kinds (protocol/stream-format.md).
const BEGIN: u8 = 1;
const CHUNK: u8 = 2;
const ENCODING_ZSTD: u8 = 1;

pub(crate) fn test_key(seed: u8) -> Key {
    Key::from_bytes([seed; 32])
}

pub(crate) fn options(compress: bool, key: Option<&Key>) -> WriteOptions {
    WriteOptions {
        compress,
        key: key.cloned(),
        ..WriteOptions::default()
    }
}

fn read_with(bytes: &[u8], key: Option<&Key>) -> Result<Vec<Record>, Error> {
    let opts = ReadOptions {
        key: key.cloned(),
        allow_unencrypted: false,
    };
    native::read_all_with(bytes, Limits::default(), &opts)
}

/// Compressible, deterministic bytes (repeating text with a counter).
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i} src=10.0.{}.{} state=ok\n", i % 7, i % 251).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Incompressible, deterministic bytes (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sample_records() -> Vec<Record> {
    vec![
        Record::new("empty", Vec::new()),
        Record::new("small", b"hello, world".to_vec()),
        Record::new("text", text(native::CHUNK_BYTES * 2 + 12345)),
        Record::new("noise", noise(native::CHUNK_BYTES + 7, 42)),
    ]
}

/// A stream split into its prefix (header, and key block if any) and its
/// records (12-byte header, stored payload); CRCs are dropped and
/// recomputed by [`Framed::assemble`].
#[derive(Clone)]
pub(crate) struct Framed {
    pub prefix: Vec<u8>,
    pub records: Vec<([u8; 12], Vec<u8>)>,
}

impl Framed {
    pub fn parse(bytes: &[u8]) -> Framed {
        let flags = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        let mut pos = native::HEADER_BYTES;
        if flags & native::FLAG_ENCRYPTED != 0 {
            pos += native::KEY_BLOCK_BYTES;
        }
        let prefix = bytes[..pos].to_vec();
        let mut records = Vec::new();
        while pos < bytes.len() {
            let header: [u8; 12] = bytes[pos..pos + 12].try_into().unwrap();
            let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
            let payload = bytes[pos + 12..pos + 12 + len].to_vec();
            let crc = u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
            assert_eq!(
                crc,
                crc32c::crc32c(&bytes[pos..pos + 12 + len]),
                "input CRC"
            );
            records.push((header, payload));
            pos += 16 + len;
        }
        assert_eq!(pos, bytes.len());
        Framed { prefix, records }
    }

    /// Sets a record's payload and its header's length field.
    pub fn set_payload(&mut self, i: usize, payload: Vec<u8>) {
        self.records[i].0[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        self.records[i].1 = payload;
    }

    pub fn assemble(&self) -> Vec<u8> {
        let mut out = self.prefix.clone();
        for (header, payload) in &self.records {
            let start = out.len();
            out.extend_from_slice(header);
            out.extend_from_slice(payload);
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Rewrites the header's flags and fixes the header CRC.
    pub fn set_flags(&mut self, flags: u32) {
        self.prefix[12..16].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&self.prefix[..16]);
        self.prefix[16..20].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn round_trip_every_combination() {
    let key = test_key(1);
    let records = sample_records();
    for (compress, key) in [
        (false, None),
        (true, None),
        (false, Some(&key)),
        (true, Some(&key)),
    ] {
        let opts = options(compress, key);
        let bytes = native::encode_with(&records, &opts).unwrap();
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        let expected_version = if compress || key.is_some() { 2 } else { 1 };
        assert_eq!(
            version,
            expected_version,
            "compress {compress} key {}",
            key.is_some()
        );
        let back = read_with(&bytes, key).unwrap();
        assert_eq!(back, records, "compress {compress} key {}", key.is_some());

        let read_opts = ReadOptions {
            key: key.cloned(),
            allow_unencrypted: false,
        };
        let summary = native::inspect_with(&bytes[..], Limits::default(), &read_opts).unwrap();
        assert_eq!(summary.version, expected_version);
        assert_eq!(summary.compressed, compress);
        assert_eq!(summary.key_id, key.map(Key::id));
        assert_eq!(summary.helpers.len(), records.len());
        let text = &summary.helpers[2];
        assert_eq!(text.id, "text");
        assert_eq!(text.bytes, records[2].data.len() as u64);
        assert_eq!(text.chunks, 3);
        if compress {
            assert_eq!(text.compressed_chunks, 3);
            assert!(text.stored_bytes < text.bytes / 4, "{text:?}");
        } else {
            assert_eq!(text.compressed_chunks, 0);
        }

        let survey = native::survey(&bytes[..], Limits::default()).unwrap();
        assert_eq!(survey.version, expected_version);
        assert_eq!(survey.key_id, key.map(Key::id));
        assert_eq!(survey.helpers.len(), records.len());
        assert_eq!(survey.stream_bytes, bytes.len() as u64);
    }
    // The plain encoding is exactly version 1's.
    assert_eq!(
        native::encode_with(&records, &WriteOptions::default()).unwrap(),
        native::encode(&records).unwrap()
    );
}

#[test]
fn interleaved_chunks_round_trip_every_combination() {
    let key = test_key(2);
    let a_parts = [text(1000), noise(5000, 1), text(70_000)];
    let b_parts = [noise(300, 2), Vec::new(), text(9)];
    for (compress, key) in [
        (false, None),
        (true, None),
        (false, Some(&key)),
        (true, Some(&key)),
    ] {
        let mut w = Writer::with_options(Vec::new(), &options(compress, key)).unwrap();
        let a = w.begin("a").unwrap();
        let b = w.begin("b").unwrap();
        for (pa, pb) in a_parts.iter().zip(&b_parts) {
            w.write_chunk(a, pa).unwrap();
            w.write_chunk(b, pb).unwrap();
        }
        w.end(b).unwrap();
        w.end(a).unwrap();
        let bytes = w.finish().unwrap();
        let back = read_with(&bytes, key).unwrap();
        assert_eq!(
            back,
            vec![
                Record::new("a", a_parts.concat()),
                Record::new("b", b_parts.concat())
            ]
        );
    }
}

fn small_encrypted(key: &Key, compress: bool) -> Vec<u8> {
    let records = vec![
        Record::new("a", b"alpha alpha alpha".to_vec()),
        Record::new("b", b"beta".to_vec()),
    ];
    native::encode_with(&records, &options(compress, Some(key))).unwrap()
}

#[test]
fn every_byte_flip_of_an_encrypted_stream_is_rejected() {
    let key = test_key(3);
    for compress in [false, true] {
        let bytes = small_encrypted(&key, compress);
        let records_start = native::HEADER_BYTES + native::KEY_BLOCK_BYTES;
        // Where the record headers are: some of their fields (kind,
        // length) are checked before the CRC, so a flip there may be
        // Corrupt.
        let mut structural = Vec::new();
        let mut at = records_start;
        for (_, payload) in Framed::parse(&bytes).records {
            structural.extend(at..at + 12);
            at += 16 + payload.len();
        }
        for pos in 0..bytes.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[pos] ^= mask;
                let err = read_with(&bad, Some(&key)).expect_err(&format!("flip at {pos}"));
                if pos < records_start {
                    assert!(
                        matches!(
                            err,
                            Error::BadMagic
                                | Error::UnsupportedVersion { .. }
                                | Error::UnsupportedFlags { .. }
                                | Error::Checksum { .. }
                        ),
                        "flip at {pos}: {err:?}"
                    );
                } else if structural.contains(&pos) && matches!(err, Error::Corrupt { .. }) {
                    // Checked before the CRC.
                } else {
                    // A record's length field may also make the record
                    // run past the end.
                    assert!(
                        matches!(
                            err,
                            Error::Checksum { .. }
                                | Error::Authentication { .. }
                                | Error::Truncated { .. }
                                | Error::OverLimit { .. }
                        ),
                        "flip at {pos}: {err:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_payload_flip_with_fixed_crc_fails_authentication() {
    let key = test_key(4);
    for compress in [false, true] {
        let framed = Framed::parse(&small_encrypted(&key, compress));
        for i in 0..framed.records.len() {
            for j in 0..framed.records[i].1.len() {
                let mut bad = framed.clone();
                bad.records[i].1[j] ^= 0x10;
                let err = read_with(&bad.assemble(), Some(&key)).unwrap_err();
                assert!(
                    matches!(err, Error::Authentication { .. }),
                    "{i}/{j}: {err:?}"
                );
            }
            // And any change to the record header, which is the AAD (kind,
            // encoding, reserved and helper fields).
            for j in 0..8 {
                let mut bad = framed.clone();
                bad.records[i].0[j] ^= 0x01;
                let err = read_with(&bad.assemble(), Some(&key)).unwrap_err();
                assert!(
                    matches!(err, Error::Authentication { .. } | Error::Corrupt { .. }),
                    "record {i} header byte {j}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn reassembled_stream_without_changes_reads() {
    // The re-framing helper itself must not break a stream, or the tests
    // below would pass for the wrong reason.
    let key = test_key(5);
    let bytes = small_encrypted(&key, true);
    assert_eq!(Framed::parse(&bytes).assemble(), bytes);
    assert_eq!(read_with(&bytes, Some(&key)).unwrap().len(), 2);
}

#[test]
fn dropped_duplicated_and_swapped_records_fail_authentication() {
    let key = test_key(6);
    let framed = Framed::parse(&small_encrypted(&key, false));
    let n = framed.records.len();
    assert!(n >= 6, "{n} records");
    for i in 0..n {
        let mut dropped = framed.clone();
        dropped.records.remove(i);
        let err = read_with(&dropped.assemble(), Some(&key)).unwrap_err();
        if i == n - 1 {
            assert!(matches!(err, Error::Truncated { .. }), "drop last: {err:?}");
        } else {
            assert!(
                matches!(err, Error::Authentication { .. }),
                "drop {i}: {err:?}"
            );
        }

        let mut dup = framed.clone();
        let r = dup.records[i].clone();
        dup.records.insert(i + 1, r);
        let err = read_with(&dup.assemble(), Some(&key)).unwrap_err();
        if i == n - 1 {
            // A complete stream followed by bytes.
            assert!(
                matches!(err, Error::TrailingData { .. }),
                "dup last: {err:?}"
            );
        } else {
            assert!(
                matches!(err, Error::Authentication { .. }),
                "dup {i}: {err:?}"
            );
        }

        if i + 1 < n {
            let mut swapped = framed.clone();
            swapped.records.swap(i, i + 1);
            let err = read_with(&swapped.assemble(), Some(&key)).unwrap_err();
            assert!(
                matches!(err, Error::Authentication { .. }),
                "swap {i}: {err:?}"
            );
        }
    }
}

#[test]
fn truncation_after_any_record_is_truncated() {
    let key = test_key(7);
    for compress in [false, true] {
        let framed = Framed::parse(&small_encrypted(&key, compress));
        for keep in 0..framed.records.len() {
            let mut cut = framed.clone();
            cut.records.truncate(keep);
            let err = read_with(&cut.assemble(), Some(&key)).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. }),
                "keep {keep}: {err:?}"
            );
        }
        // And inside the key block or header.
        let bytes = framed.assemble();
        for len in [0, 10, native::HEADER_BYTES, native::HEADER_BYTES + 30] {
            let err = read_with(&bytes[..len], Some(&key)).unwrap_err();
            assert!(matches!(err, Error::Truncated { .. }), "len {len}: {err:?}");
        }
    }
}

#[test]
fn record_spliced_from_another_stream_fails_authentication() {
    let key = test_key(8);
    // Same records, same key, another salt: the per-stream keys differ.
    let one = Framed::parse(&small_encrypted(&key, false));
    let two = Framed::parse(&small_encrypted(&key, false));
    assert_ne!(one.prefix, two.prefix, "salts must differ");
    assert_eq!(one.records.len(), two.records.len());
    for i in 0..one.records.len() {
        let mut spliced = one.clone();
        spliced.records[i] = two.records[i].clone();
        let err = read_with(&spliced.assemble(), Some(&key)).unwrap_err();
        assert!(
            matches!(err, Error::Authentication { .. }),
            "splice {i}: {err:?}"
        );
    }
    // And the whole body of one under the prefix of the other.
    let mut body_swap = one.clone();
    body_swap.prefix = two.prefix.clone();
    let err = read_with(&body_swap.assemble(), Some(&key)).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
}

#[test]
fn changed_header_flags_with_fixed_crc_fail() {
    let key = test_key(9);
    let records = vec![Record::new("t", text(50_000))];
    let both = native::encode_with(&records, &options(true, Some(&key))).unwrap();
    let mut framed = Framed::parse(&both);
    framed.set_flags(native::FLAG_ENCRYPTED);
    let err = read_with(&framed.assemble(), Some(&key)).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");

    // Setting COMPRESSED on a stream written without it, likewise.
    let enc = native::encode_with(&records, &options(false, Some(&key))).unwrap();
    let mut framed = Framed::parse(&enc);
    framed.set_flags(native::FLAG_ENCRYPTED | native::FLAG_COMPRESSED);
    let err = read_with(&framed.assemble(), Some(&key)).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
}

#[test]
fn key_mismatches() {
    let key = test_key(10);
    let other = test_key(11);
    assert_ne!(key.id(), other.id());
    let bytes = small_encrypted(&key, true);

    match read_with(&bytes, Some(&other)).unwrap_err() {
        Error::WrongKey { stream, given } => {
            assert_eq!(stream, key.id());
            assert_eq!(given, other.id());
        }
        err => panic!("{err:?}"),
    }
    match read_with(&bytes, None).unwrap_err() {
        Error::KeyRequired { key_id } => assert_eq!(key_id, key.id()),
        err => panic!("{err:?}"),
    }

    let records = vec![Record::new("p", b"plain".to_vec())];
    for compress in [false, true] {
        let plain = native::encode_with(&records, &options(compress, None)).unwrap();
        let err = read_with(&plain, Some(&key)).unwrap_err();
        assert!(matches!(err, Error::NotEncrypted), "{err:?}");
        let lenient = ReadOptions {
            key: Some(key.clone()),
            allow_unencrypted: true,
        };
        let back = native::read_all_with(&plain[..], Limits::default(), &lenient).unwrap();
        assert_eq!(back, records);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_file(
    dir: &tempfile::TempDir,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn key_files() {
    let dir = tempfile::tempdir().unwrap();
    let raw = [0x5Au8; 32];
    let expected = Key::from_bytes(raw).id();

    let p = write_file(&dir, "open", format!("{}\n", hex(&raw)).as_bytes(), 0o644);
    match Key::from_file(&p).unwrap_err() {
        KeyError::Permissions { mode, .. } => assert_eq!(mode, 0o644),
        err => panic!("{err:?}"),
    }

    for (name, contents) in [
        ("short", hex(&raw).as_bytes()[..62].to_vec()),
        ("long", format!("{}00\n", hex(&raw)).into_bytes()),
        ("bad-digit", format!("{}g\n", &hex(&raw)[..63]).into_bytes()),
        ("raw-31", vec![1u8; 31]),
        ("empty", Vec::new()),
    ] {
        let p = write_file(&dir, name, &contents, 0o600);
        match Key::from_file(&p).unwrap_err() {
            KeyError::Format { len, .. } => assert_eq!(len, contents.len() as u64, "{name}"),
            err => panic!("{name}: {err:?}"),
        }
    }

    let p = write_file(&dir, "raw", &raw, 0o600);
    assert_eq!(Key::from_file(&p).unwrap().id(), expected);
    let p = write_file(&dir, "hex", format!("{}\n", hex(&raw)).as_bytes(), 0o400);
    assert_eq!(Key::from_file(&p).unwrap().id(), expected);
    let p = write_file(
        &dir,
        "hex-crlf",
        format!("{}\r\n", hex(&raw)).as_bytes(),
        0o600,
    );
    assert_eq!(Key::from_file(&p).unwrap().id(), expected);

    let missing = dir.path().join("missing");
    assert!(matches!(
        Key::from_file(&missing).unwrap_err(),
        KeyError::Io { .. }
    ));

    // write_new: mode 0600, reads back, never overwrites.
    let generated = Key::generate().unwrap();
    let p = dir.path().join("new.key");
    generated.write_new(&p).unwrap();
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 65);
    assert_eq!(Key::from_file(&p).unwrap().id(), generated.id());
    assert!(matches!(
        generated.write_new(&p).unwrap_err(),
        KeyError::Io { .. }
    ));
}

#[test]
fn key_from_a_pipe_skips_the_mode_check() {
    // A pipe's mode (usually 0600 or 0666 depending on the system) is not
    // a file's: a key passed on a pipe is read without a mode check.
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    let raw = [0xC3u8; 32];
    let mut w = std::fs::File::from(writer);
    w.write_all(format!("{}\n", hex(&raw)).as_bytes()).unwrap();
    drop(w);
    let r = std::fs::File::from(reader);
    let key = Key::from_open_file(r, "/dev/fd/3").unwrap();
    assert_eq!(key.id(), Key::from_bytes(raw).id());

    // Through a /dev/fd path too, with a world-readable fd type.
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    let mut w = std::fs::File::from(writer);
    w.write_all(&raw).unwrap();
    drop(w);
    use std::os::fd::AsRawFd;
    let path = format!("/dev/fd/{}", reader.as_raw_fd());
    let key = Key::from_file(&path).unwrap();
    assert_eq!(key.id(), Key::from_bytes(raw).id());
    drop(reader);
}

/// A compressed, unencrypted stream of one helper whose one chunk is the
/// record at index 1.
fn compressed_one_chunk(data: &[u8]) -> Framed {
    let bytes =
        native::encode_with(&[Record::new("z", data.to_vec())], &options(true, None)).unwrap();
    let framed = Framed::parse(&bytes);
    assert_eq!(framed.records[0].0[0], BEGIN);
    assert_eq!(framed.records[1].0[0], CHUNK);
    assert_eq!(framed.records[1].0[1], ENCODING_ZSTD);
    framed
}

fn zstd_payload(decoded_len: u32, frame: &[u8]) -> Vec<u8> {
    let mut p = decoded_len.to_le_bytes().to_vec();
    p.extend_from_slice(frame);
    p
}

#[test]
fn compressed_chunk_corruptions() {
    let data = text(100_000);
    let framed = compressed_one_chunk(&data);
    let frame = framed.records[1].1[4..].to_vec();
    assert_eq!(
        zstd::decode_all(&frame[..]).unwrap(),
        data,
        "the chunk is a length prefix and a zstd frame"
    );
    let read = |f: &Framed, limits: Limits| {
        native::read_all_with(&f.assemble()[..], limits, &ReadOptions::default())
    };
    assert_eq!(read(&framed, Limits::default()).unwrap()[0].data, data);

    // Prefix over the 16 MiB chunk cap.
    for claim in [(16u32 << 20) + 1, u32::MAX] {
        let mut bad = framed.clone();
        bad.set_payload(1, zstd_payload(claim, &frame));
        match read(&bad, Limits::default()).unwrap_err() {
            Error::OverLimit { what, found, .. } => {
                assert_eq!(what, "decompressed chunk");
                assert_eq!(found, u64::from(claim));
            }
            err => panic!("{claim}: {err:?}"),
        }
    }
    // Prefix not matching the frame, either way.
    for claim in [data.len() as u32 - 1, data.len() as u32 + 1, 0] {
        let mut bad = framed.clone();
        bad.set_payload(1, zstd_payload(claim, &frame));
        let err = read(&bad, Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{claim}: {err:?}");
    }
    // Garbage, or a truncated frame.
    for garbage in [noise(200, 9), frame[..frame.len() / 2].to_vec(), Vec::new()] {
        let mut bad = framed.clone();
        bad.set_payload(1, zstd_payload(data.len() as u32, &garbage));
        let err = read(&bad, Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    }
    // Shorter than the prefix.
    let mut bad = framed.clone();
    bad.set_payload(1, vec![1, 2]);
    let err = read(&bad, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    // Encoding 2 does not exist.
    let mut bad = framed.clone();
    bad.records[1].0[1] = 2;
    let err = read(&bad, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    // Encoding 1 on a BEGIN record.
    let mut bad = framed.clone();
    bad.records[0].0[1] = 1;
    let err = read(&bad, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // Encoding 1 without the COMPRESSED flag: a version 1 stream whose
    // chunk is relabeled, and the compressed stream with the flag
    // cleared (version 1, no flags).
    let mut plain = Framed::parse(&native::encode(&[Record::new("z", data.clone())]).unwrap());
    plain.records[1].0[1] = ENCODING_ZSTD;
    let err = read(&plain, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let mut unflagged = framed.clone();
    unflagged.prefix[8..12].copy_from_slice(&1u32.to_le_bytes());
    unflagged.set_flags(0);
    let err = read(&unflagged, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // The blob limit counts decompressed bytes.
    let stored = framed.records[1].1.len() as u64;
    let limits = Limits {
        max_blob_bytes: 2 * stored,
        ..Limits::default()
    };
    assert!(2 * stored < data.len() as u64, "{stored} stored bytes");
    match read(&framed, limits).unwrap_err() {
        Error::OverLimit { what, limit, .. } => {
            assert_eq!(what, "blob");
            assert_eq!(limit, 2 * stored);
        }
        err => panic!("{err:?}"),
    }
}

#[test]
fn check_version_rule() {
    use native::{check_version, Features, FLAG_COMPRESSED as C, FLAG_ENCRYPTED as E};
    assert_eq!(check_version(1, 0).unwrap(), Features::default());
    assert!(check_version(2, C).unwrap().compressed);
    assert!(check_version(2, E).unwrap().encrypted);
    let both = check_version(2, C | E).unwrap();
    assert!(both.compressed && both.encrypted);
    assert_eq!(both.version(), 2);
    assert_eq!(both.flags(), C | E);
    assert_eq!(Features::default().version(), 1);
    for (v, f) in [(1, C), (1, E), (2, 0), (2, 4), (2, C | 8)] {
        assert!(
            matches!(check_version(v, f), Err(Error::UnsupportedFlags { flags }) if flags == f),
            "{v} {f}"
        );
    }
    assert!(matches!(
        check_version(3, 0),
        Err(Error::UnsupportedVersion { found: 3, .. })
    ));
}

#[test]
fn a_compressed_chunk_holds_exactly_one_frame() {
    let data = text(20_000);
    let framed = compressed_one_chunk(&data);
    let frame = framed.records[1].1[4..].to_vec();
    let read = |f: &Framed| {
        native::read_all_with(
            &f.assemble()[..],
            Limits::default(),
            &ReadOptions::default(),
        )
    };
    // Two frames, the prefix counting both.
    let mut bad = framed.clone();
    bad.set_payload(
        1,
        zstd_payload(
            2 * data.len() as u32,
            &[frame.clone(), frame.clone()].concat(),
        ),
    );
    let err = read(&bad).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "two frames: {err:?}");
    // One frame and trailing garbage.
    let mut bad = framed.clone();
    bad.set_payload(
        1,
        zstd_payload(data.len() as u32, &[frame.clone(), vec![0xAA; 5]].concat()),
    );
    let err = read(&bad).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "trailing bytes: {err:?}"
    );
}

#[test]
fn key_block_fields_are_checked() {
    let key = test_key(12);
    let bytes = small_encrypted(&key, false);
    let block = native::HEADER_BYTES;
    // Algorithm 2, and each reserved byte, with the key block CRC fixed.
    for (at, value) in [(0, 2u8), (0, 0), (1, 1), (2, 1), (3, 1)] {
        let mut bad = bytes.clone();
        bad[block + at] = value;
        let crc = crc32c::crc32c(&bad[block..block + 52]);
        bad[block + 52..block + 56].copy_from_slice(&crc.to_le_bytes());
        let err = read_with(&bad, Some(&key)).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. }),
            "byte {at} = {value}: {err:?}"
        );
    }
    // Another salt with the key block CRC fixed: the stream key differs.
    let mut bad = bytes.clone();
    bad[block + 30] ^= 1;
    let crc = crc32c::crc32c(&bad[block..block + 52]);
    bad[block + 52..block + 56].copy_from_slice(&crc.to_le_bytes());
    let err = read_with(&bad, Some(&key)).unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    // A changed key id with the CRC fixed: WrongKey naming it.
    let mut bad = bytes.clone();
    bad[block + 4] ^= 1;
    let crc = crc32c::crc32c(&bad[block..block + 52]);
    bad[block + 52..block + 56].copy_from_slice(&crc.to_le_bytes());
    match read_with(&bad, Some(&key)).unwrap_err() {
        Error::WrongKey { stream, given } => {
            assert_ne!(stream, key.id());
            assert_eq!(given, key.id());
        }
        err => panic!("{err:?}"),
    }
}

#[test]
fn streams_without_helpers_round_trip_every_combination() {
    let key = test_key(13);
    for (compress, key) in [(true, None), (false, Some(&key)), (true, Some(&key))] {
        let bytes = native::encode_with(&[], &options(compress, key)).unwrap();
        let expected_len = native::HEADER_BYTES
            + if key.is_some() {
                native::KEY_BLOCK_BYTES + native::TAG_BYTES
            } else {
                0
            }
            + 12
            + native::END_PAYLOAD_BYTES
            + 4;
        assert_eq!(bytes.len(), expected_len, "compress {compress}");
        assert_eq!(read_with(&bytes, key).unwrap(), []);
    }
}
