//! The native stream format, versions 1 and 2, as
//! `protocol/stream-format.md` specifies it.
//!
//! A 20-byte header (magic, version, flags, CRC-32C), then records, each a
//! 12-byte header, a payload and a CRC-32C of both. A helper's blob is a
//! `BEGIN` record carrying its Id, any number of `CHUNK` records carrying
//! the blob's bytes, and an `END` record carrying the blob's length and
//! CRC-32C. Chunks of different helpers may interleave. A `STREAM_END`
//! record closes the stream. All integers are little-endian.
//!
//! Version 2 keeps that layout and adds two header flags: compressed
//! streams store each chunk as a zstd frame when that is shorter, and
//! encrypted streams seal every record's payload with AES-256-GCM under a
//! key derived per stream from a [`Key`] and a random salt, authenticating
//! each record with its position. [`WriteOptions`] asks for them (a writer
//! emits version 1 otherwise: [`check_version`] states the rule), and
//! [`ReadOptions`] gives a reader the key.
//!
//! [`Writer`] and [`Reader`] stream through bounded memory;
//! [`read_all`] and [`write()`] work on whole [`Record`]s; [`inspect`]
//! verifies a stream without keeping the blobs.
//!
//! ```
//! use dbus_vmstate::stream::{native, Limits};
//!
//! let mut w = native::Writer::new(Vec::new())?;
//! let a = w.begin("idA")?;
//! let b = w.begin("idB")?;
//! w.write_chunk(a, b"state of ")?;
//! w.write_chunk(b, b"other")?;
//! w.write_chunk(a, b"A")?;
//! w.end(a)?;
//! w.end(b)?;
//! let bytes = w.finish()?;
//!
//! let records = native::read_all(&bytes[..], Limits::default())?;
//! assert_eq!(records[0].data, b"state of A");
//! assert_eq!(records[1].data, b"other");
//! # Ok::<(), dbus_vmstate::stream::Error>(())
//! ```

use std::io::{Read, Write};

use super::{Error, Limits, Record};

mod packer;
mod reader;
mod v2;
mod writer;

pub use packer::MAX_THREADS as MAX_COMPRESS_THREADS;
pub use reader::{survey, Event, Reader, Survey, SurveyHelper};
pub use v2::{
    check_version, Features, DECODED_LEN_BYTES, FLAG_COMPRESSED, FLAG_ENCRYPTED, KEY_BLOCK_BYTES,
    TAG_BYTES, ZSTD_LEVEL,
};
pub use writer::Writer;

use super::key::{Key, KeyId};

/// The stream's first 8 bytes: `0x89 'V' 'M' 'S' 'T' CR LF SUB`.
///
/// Non-zero and non-ASCII first, so text-mode newline mangling and
/// truncation to 7 bits are caught, and never the first byte of a QEMU
/// payload (see [`super::Format::detect`]).
pub const MAGIC: [u8; 8] = [0x89, b'V', b'M', b'S', b'T', 0x0D, 0x0A, 0x1A];

/// The newest format version this crate reads and writes. It reads
/// versions 1 and 2 and writes version 1 unless compression or
/// encryption is asked for ([`check_version`]).
pub const VERSION: u32 = 2;

/// Size of the stream header: magic, version, flags, CRC-32C.
pub const HEADER_BYTES: usize = 20;

/// Size of a record header: kind, two reserved fields, helper index,
/// payload length.
pub const RECORD_HEADER_BYTES: usize = 12;

/// Size of the CRC-32C after each record's payload.
pub const RECORD_CRC_BYTES: usize = 4;

/// Payload size writers use for `CHUNK` records (the last chunk of a blob
/// may be shorter).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest `CHUNK` payload a reader accepts, checked before allocating.
pub const MAX_CHUNK_PAYLOAD_BYTES: usize = 16 << 20;

/// Payload size of `END` and `STREAM_END` records.
pub const END_PAYLOAD_BYTES: usize = 12;

/// The helper index field of a `STREAM_END` record.
pub const STREAM_END_HELPER: u32 = u32::MAX;

/// Record kinds (the first byte of a record header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opens a helper's blob; the payload is the helper's Id.
    Begin = 1,
    /// The next bytes of an open helper's blob.
    Chunk = 2,
    /// Closes a helper's blob: `u64` length, `u32` CRC-32C of the blob.
    End = 3,
    /// Closes the stream: `u32` helper count, `u64` total blob bytes.
    StreamEnd = 0xFF,
}

impl Kind {
    /// The kind with this byte value, if any.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Begin),
            2 => Some(Kind::Chunk),
            3 => Some(Kind::End),
            0xFF => Some(Kind::StreamEnd),
            _ => None,
        }
    }

    /// The name the specification uses for this kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Begin => "BEGIN",
            Kind::Chunk => "CHUNK",
            Kind::End => "END",
            Kind::StreamEnd => "STREAM_END",
        }
    }
}

/// The stream header for `features`, with its CRC.
fn encode_header(features: Features) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&features.version().to_le_bytes());
    h[12..16].copy_from_slice(&features.flags().to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A record header; the reserved fields are kept so readers can check them.
#[derive(Debug, Clone, Copy)]
struct RecordHeader {
    kind: u8,
    /// Reserved (0) in version 1; the payload's encoding in version 2.
    encoding: u8,
    reserved16: u16,
    helper: u32,
    len: u32,
}

impl RecordHeader {
    fn new(kind: Kind, helper: u32, len: u32) -> Self {
        RecordHeader {
            kind: kind as u8,
            encoding: 0,
            reserved16: 0,
            helper,
            len,
        }
    }

    fn encode(self) -> [u8; RECORD_HEADER_BYTES] {
        let mut b = [0u8; RECORD_HEADER_BYTES];
        b[0] = self.kind;
        b[1] = self.encoding;
        b[2..4].copy_from_slice(&self.reserved16.to_le_bytes());
        b[4..8].copy_from_slice(&self.helper.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(b: &[u8; RECORD_HEADER_BYTES]) -> Self {
        RecordHeader {
            kind: b[0],
            encoding: b[1],
            reserved16: u16::from_le_bytes([b[2], b[3]]),
            helper: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Encodes the 12-byte payload shared by `END` (`u64` then `u32`) and
/// `STREAM_END` (`u32` then `u64`) in the order given.
fn u64_u32(a: u64, b: u32) -> [u8; END_PAYLOAD_BYTES] {
    let mut p = [0u8; END_PAYLOAD_BYTES];
    p[..8].copy_from_slice(&a.to_le_bytes());
    p[8..].copy_from_slice(&b.to_le_bytes());
    p
}

fn u32_u64(a: u32, b: u64) -> [u8; END_PAYLOAD_BYTES] {
    let mut p = [0u8; END_PAYLOAD_BYTES];
    p[..4].copy_from_slice(&a.to_le_bytes());
    p[4..].copy_from_slice(&b.to_le_bytes());
    p
}

/// Reads and fully verifies a native stream, returning one record per
/// helper in `BEGIN` order.
///
/// # Errors
///
/// Any [`Reader`] error; nothing is returned unless the whole stream,
/// including its `STREAM_END` and the end of input after it, verified.
pub fn read_all<R: Read>(r: R, limits: Limits) -> Result<Vec<Record>, Error> {
    read_all_with(r, limits, &ReadOptions::default())
}

/// [`read_all`] with a key ([`ReadOptions`]).
///
/// # Errors
///
/// As [`read_all`].
pub fn read_all_with<R: Read>(
    r: R,
    limits: Limits,
    options: &ReadOptions,
) -> Result<Vec<Record>, Error> {
    let mut reader = Reader::with_options(r, limits, options)?;
    let mut records: Vec<Record> = Vec::new();
    while let Some(event) = reader.next_event()? {
        match event {
            Event::Begin { id, .. } => records.push(Record::new(id, Vec::new())),
            Event::Chunk { helper, data } => {
                if let Some(record) = records.get_mut(helper as usize) {
                    record.data.extend_from_slice(data);
                }
            }
            Event::End { .. } => {}
        }
    }
    Ok(records)
}

/// Writes `records` as a complete native stream, one blob after another.
///
/// The writer issues a few writes per record; wrap unbuffered files or
/// sockets in a [`std::io::BufWriter`].
///
/// # Errors
///
/// [`Error::InvalidId`] or [`Error::DuplicateId`] for a bad record (found
/// when that record is reached), [`Error::Io`] if writing fails.
pub fn write<W: Write>(w: W, records: &[Record]) -> Result<(), Error> {
    write_with(w, records, &WriteOptions::default())
}

/// [`write()`] with compression or encryption ([`WriteOptions`]).
///
/// # Errors
///
/// As [`write()`].
pub fn write_with<W: Write>(w: W, records: &[Record], options: &WriteOptions) -> Result<(), Error> {
    let mut writer = Writer::with_options(w, options)?;
    for record in records {
        writer.write_blob(&record.id, &record.data)?;
    }
    writer.finish()?;
    Ok(())
}

/// Encodes `records` as a native stream in memory.
///
/// # Errors
///
/// As [`write()`], without I/O errors.
pub fn encode(records: &[Record]) -> Result<Vec<u8>, Error> {
    encode_with(records, &WriteOptions::default())
}

/// [`encode`] with compression or encryption ([`WriteOptions`]).
///
/// # Errors
///
/// As [`write()`], without I/O errors.
pub fn encode_with(records: &[Record], options: &WriteOptions) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    write_with(&mut out, records, options)?;
    Ok(out)
}

/// How a writer encodes a stream. The default (no compression, no key)
/// writes version 1.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Store each chunk as a zstd frame when that is shorter.
    pub compress: bool,
    /// Encrypt and authenticate every record with a key derived from
    /// this one and a random salt.
    pub key: Option<Key>,
    /// Threads that compress chunks: 0 (the default) for one per core,
    /// 1 to compress on the writer's own thread; at most
    /// [`MAX_COMPRESS_THREADS`]. The stream is the same whatever the
    /// number.
    pub compress_threads: usize,
}

impl WriteOptions {
    /// The features these options give a stream.
    pub fn features(&self) -> Features {
        Features {
            compressed: self.compress,
            encrypted: self.key.is_some(),
        }
    }
}

/// How a reader decodes a stream. The default reads unencrypted streams
/// only.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The key of encrypted streams. A reader given a key refuses an
    /// unencrypted stream ([`Error::NotEncrypted`]) unless
    /// [`allow_unencrypted`](Self::allow_unencrypted) is set.
    pub key: Option<Key>,
    /// With a key, read unencrypted streams too.
    pub allow_unencrypted: bool,
}

impl ReadOptions {
    /// Options with `key`, refusing unencrypted streams.
    pub fn with_key(key: Key) -> Self {
        ReadOptions {
            key: Some(key),
            allow_unencrypted: false,
        }
    }
}

/// What a verified native stream holds, without the blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The format version from the header.
    pub version: u32,
    /// Whether chunks may be compressed (version 2).
    pub compressed: bool,
    /// The fingerprint of the key of an encrypted stream (version 2).
    pub key_id: Option<KeyId>,
    /// One entry per helper, in `BEGIN` order.
    pub helpers: Vec<HelperSummary>,
    /// Sum of all blob sizes, in bytes.
    pub total_bytes: u64,
    /// Size of the stream itself, in bytes.
    pub stream_bytes: u64,
}

/// One helper's entry in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSummary {
    /// The helper's Id.
    pub id: String,
    /// Size of its blob, in bytes.
    pub bytes: u64,
    /// Number of `CHUNK` records that carried the blob.
    pub chunks: u64,
    /// Of those, how many were stored compressed.
    pub compressed_chunks: u64,
    /// Bytes of the blob as stored: the payloads of its `CHUNK` records,
    /// after compression and with their tags (equal to `bytes` in an
    /// uncompressed, unencrypted stream).
    pub stored_bytes: u64,
    /// CRC-32C of the blob.
    pub crc32c: u32,
}

/// Reads and verifies a whole native stream, keeping only its summary:
/// memory stays bounded by one chunk however large the blobs are.
///
/// # Errors
///
/// Any [`Reader`] error.
pub fn inspect<R: Read>(r: R, limits: Limits) -> Result<Summary, Error> {
    inspect_with(r, limits, &ReadOptions::default())
}

/// [`inspect`] with a key ([`ReadOptions`]).
///
/// # Errors
///
/// Any [`Reader`] error.
pub fn inspect_with<R: Read>(
    r: R,
    limits: Limits,
    options: &ReadOptions,
) -> Result<Summary, Error> {
    let mut reader = Reader::with_options(r, limits, options)?;
    while reader.next_event()?.is_some() {}
    Ok(reader.summary())
}

#[cfg(test)]
mod tests;
