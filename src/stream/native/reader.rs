//! The streaming native reader.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;

use super::v2::{
    self, check_version, DecodeError, Features, KeyBlock, Sealer, DECODED_LEN_BYTES, ENCODING_RAW,
    ENCODING_ZSTD, KEY_BLOCK_BYTES, TAG_BYTES,
};
use super::{
    HelperSummary, Kind, ReadOptions, RecordHeader, Summary, CHUNK_BYTES, END_PAYLOAD_BYTES,
    HEADER_BYTES, MAGIC, MAX_CHUNK_PAYLOAD_BYTES, RECORD_CRC_BYTES, RECORD_HEADER_BYTES,
    STREAM_END_HELPER,
};
use crate::stream::key::KeyId;
use crate::stream::{id_from_bytes, len_u64, read_full, Error, Limits, MAX_ID_BYTES};

/// One step of a native stream, as [`Reader::next_event`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A helper's blob starts.
    Begin {
        /// The helper's index (0, 1, 2, ... in `BEGIN` order).
        helper: u32,
        /// The helper's Id.
        id: &'a str,
    },
    /// The next bytes of a helper's blob; the record's CRC is verified.
    Chunk {
        /// The helper's index.
        helper: u32,
        /// The bytes, borrowed from the reader's buffer.
        data: &'a [u8],
    },
    /// A helper's blob is complete; its length and CRC-32C are verified.
    End {
        /// The helper's index.
        helper: u32,
        /// The blob's total size in bytes.
        bytes: u64,
    },
}

/// Reads and verifies a native stream record by record.
///
/// Memory is bounded by one chunk ([`MAX_CHUNK_PAYLOAD_BYTES`]) plus the
/// helpers' Ids, whatever the blob sizes. Chunk data is handed out only
/// after its record's CRC is checked, but a blob is known to be complete
/// and intact only at its [`Event::End`]; a consumer must not act on a
/// blob before then. After any error every further call returns
/// [`Error::Poisoned`].
///
/// Version 2 streams are decoded on the way: an encrypted record is
/// authenticated and decrypted (with the key of [`ReadOptions`]) before
/// anything of it is used, and a compressed chunk is decompressed into a
/// buffer of its declared size, checked against the caps first. Events
/// carry the decoded bytes.
pub struct Reader<R: Read> {
    r: R,
    limits: Limits,
    version: u32,
    features: Features,
    key_id: Option<KeyId>,
    sealer: Option<Sealer>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    /// The number of the next record (its nonce).
    record_no: u64,
    /// A compressed chunk's stored payload; reused.
    stored: Vec<u8>,
    offset: u64,
    /// Holds the current record's payload in `..payload_len`; grows as
    /// payload bytes arrive and is reused for every record.
    buf: Vec<u8>,
    payload_len: usize,
    helpers: Vec<Helper>,
    ids: HashSet<String>,
    total_bytes: u64,
    state: State,
}

impl<R: Read> fmt::Debug for Reader<R> {
    /// Leaves out the input and the payload buffer (up to 16 MiB).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("limits", &self.limits)
            .field("offset", &self.offset)
            .field("helpers", &self.helpers)
            .field("total_bytes", &self.total_bytes)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Records,
    Done,
    Failed,
}

/// A helper's blob as read so far.
#[derive(Debug)]
struct Helper {
    id: String,
    open: bool,
    bytes: u64,
    chunks: u64,
    compressed_chunks: u64,
    stored_bytes: u64,
    crc: u32,
}

/// What a verified record did, without borrowing the reader.
enum Step {
    Begin(u32),
    Chunk(u32),
    End(u32, u64),
    StreamEnd,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the stream header: magic, checksum, version and
    /// flags ([`check_version`]). Reads unencrypted streams only.
    ///
    /// # Errors
    ///
    /// As [`Reader::with_options`].
    pub fn new(r: R, limits: Limits) -> Result<Self, Error> {
        Reader::with_options(r, limits, &ReadOptions::default())
    }

    /// Reads and checks the stream header: magic, checksum, version and
    /// flags ([`check_version`]), and an encrypted stream's key block
    /// against the key of `options`.
    ///
    /// # Errors
    ///
    /// [`Error::BadMagic`], [`Error::Truncated`], [`Error::Checksum`],
    /// [`Error::UnsupportedVersion`], [`Error::UnsupportedFlags`],
    /// [`Error::KeyRequired`] (encrypted, no key), [`Error::WrongKey`],
    /// [`Error::NotEncrypted`] (a key and an unencrypted stream, not
    /// allowed by `options`), [`Error::Io`].
    pub fn with_options(mut r: R, limits: Limits, options: &ReadOptions) -> Result<Self, Error> {
        let (h, version, features) = read_header(&mut r)?;
        let mut offset = len_u64(HEADER_BYTES);
        let (key_id, sealer) = if features.encrypted {
            let block_bytes = read_key_block(&mut r)?;
            let block = KeyBlock::decode(&block_bytes, offset)?;
            offset += len_u64(KEY_BLOCK_BYTES);
            let key = options.key.as_ref().ok_or(Error::KeyRequired {
                key_id: block.key_id,
            })?;
            if key.id() != block.key_id {
                return Err(Error::WrongKey {
                    stream: block.key_id,
                    given: key.id(),
                });
            }
            (Some(block.key_id), Some(Sealer::new(key, &h, &block_bytes)))
        } else {
            if options.key.is_some() && !options.allow_unencrypted {
                return Err(Error::NotEncrypted);
            }
            (None, None)
        };
        let zstd = if features.compressed {
            let mut d = zstd::bulk::Decompressor::new()?;
            // No frame may ask for a window larger than a chunk.
            d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
            Some(d)
        } else {
            None
        };
        Ok(Reader {
            r,
            limits,
            version,
            features,
            key_id,
            sealer,
            zstd,
            record_no: 0,
            stored: Vec::new(),
            offset,
            buf: Vec::new(),
            payload_len: 0,
            helpers: Vec::new(),
            ids: HashSet::new(),
            total_bytes: 0,
            state: State::Records,
        })
    }

    /// Reads and verifies the next record.
    ///
    /// Returns `Ok(None)` once a valid `STREAM_END` has been read and the
    /// input ended right after it, and on every call after that. To check
    /// that end, the reader tries to read one byte past `STREAM_END`, so
    /// the input must end (EOF) where the stream does.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] (including a missing `STREAM_END`),
    /// [`Error::Checksum`], [`Error::Corrupt`], [`Error::OverLimit`],
    /// [`Error::TooManyHelpers`], [`Error::InvalidId`],
    /// [`Error::DuplicateId`], [`Error::TrailingData`], [`Error::Io`];
    /// [`Error::Poisoned`] after an earlier error.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, Error> {
        match self.state {
            State::Records => {}
            State::Done => return Ok(None),
            State::Failed => return Err(Error::Poisoned),
        }
        let step = match self.read_record() {
            Ok(step) => step,
            Err(e) => {
                self.state = State::Failed;
                return Err(e);
            }
        };
        Ok(match step {
            Step::Begin(helper) => Some(Event::Begin {
                helper,
                id: &self.helpers[helper as usize].id,
            }),
            Step::Chunk(helper) => Some(Event::Chunk {
                helper,
                data: self.payload(),
            }),
            Step::End(helper, bytes) => Some(Event::End { helper, bytes }),
            Step::StreamEnd => None,
        })
    }

    /// Takes the buffer holding the payload of the record just read, cut
    /// to that payload (after an [`Event::Chunk`], the chunk's bytes), and
    /// reads the next records into `replacement` instead: a consumer that
    /// passes chunks on moves them without copying. `replacement`'s
    /// contents do not matter; a buffer already as long as a chunk is
    /// reused without being cleared first.
    pub fn take_payload(&mut self, replacement: Vec<u8>) -> Vec<u8> {
        let mut taken = std::mem::replace(&mut self.buf, replacement);
        taken.truncate(self.payload_len);
        self.payload_len = 0;
        taken
    }

    /// The Id of the helper with index `helper`, once its `BEGIN` was read.
    pub fn id_of(&self, helper: u32) -> Option<&str> {
        self.helpers.get(helper as usize).map(|h| h.id.as_str())
    }

    /// Bytes consumed from the input so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// What has been read so far; complete once
    /// [`next_event`](Self::next_event) returned `Ok(None)`.
    pub fn summary(&self) -> Summary {
        Summary {
            version: self.version,
            compressed: self.features.compressed,
            key_id: self.key_id,
            helpers: self
                .helpers
                .iter()
                .map(|h| HelperSummary {
                    id: h.id.clone(),
                    bytes: h.bytes,
                    chunks: h.chunks,
                    compressed_chunks: h.compressed_chunks,
                    stored_bytes: h.stored_bytes,
                    crc32c: h.crc,
                })
                .collect(),
            total_bytes: self.total_bytes,
            stream_bytes: self.offset,
        }
    }

    fn read_record(&mut self) -> Result<Step, Error> {
        let frame = read_frame_header(&mut self.r, &mut self.offset)?;
        let (start, hb, h, kind) = (frame.start, frame.bytes, frame.header, frame.kind);
        let zstd = kind == Kind::Chunk && h.encoding == ENCODING_ZSTD && self.features.compressed;
        self.check_before_payload(start, kind, h, zstd)?;
        let len = h.len as usize;
        // A compressed chunk is read aside and decompressed into `buf`.
        let stored = if zstd {
            &mut self.stored
        } else {
            &mut self.buf
        };
        read_frame_body(&mut self.r, &mut self.offset, &frame, stored)?;
        let plain = match &self.sealer {
            Some(sealer) => sealer.open(self.record_no, &hb, &mut stored[..len]).ok_or(
                Error::Authentication {
                    offset: start,
                    what: "record",
                },
            )?,
            None => len,
        };
        self.record_no += 1;
        let encoding_ok = h.encoding == ENCODING_RAW || zstd;
        if !encoding_ok || h.reserved16 != 0 {
            let what = if self.version == 1 {
                "non-zero reserved field".to_string()
            } else {
                format!(
                    "record encoding {} and reserved {}",
                    h.encoding, h.reserved16
                )
            };
            return Err(Error::corrupt(start, what, None));
        }
        if zstd {
            self.decompress(start, h.helper, plain)?;
        } else {
            self.payload_len = plain;
        }
        if kind == Kind::Chunk {
            if let Some(helper) = self.helpers.get_mut(h.helper as usize) {
                helper.stored_bytes = helper.stored_bytes.saturating_add(u64::from(h.len));
                helper.compressed_chunks += u64::from(zstd);
            }
        }
        match kind {
            Kind::Begin => self.begin(start, h.helper),
            Kind::Chunk => self.chunk(start, h.helper),
            Kind::End => self.end(start, h.helper),
            Kind::StreamEnd => self.stream_end(start, h.helper),
        }
    }

    /// Decompresses the authenticated compressed chunk in
    /// `stored[..len]` into `buf`, within the chunk cap and what is left
    /// of its helper's blob limit, checked before the buffer grows.
    fn decompress(&mut self, start: u64, index: u32, len: usize) -> Result<(), Error> {
        let Some(helper) = self.helpers.get(index as usize).filter(|h| h.open) else {
            // Not an open helper: [`Self::chunk`] reports the index.
            self.payload_len = 0;
            return Ok(());
        };
        let left = self.limits.max_blob_bytes.saturating_sub(helper.bytes);
        let max = MAX_CHUNK_PAYLOAD_BYTES.min(usize::try_from(left).unwrap_or(usize::MAX));
        let zstd = self
            .zstd
            .as_mut()
            .ok_or_else(|| Error::corrupt(start, "compressed chunk", None))?;
        match v2::decompress(zstd, &self.stored[..len], max, &mut self.buf) {
            Ok(decoded) => {
                self.payload_len = decoded;
                Ok(())
            }
            Err(DecodeError::TooLarge(found)) if found > len_u64(MAX_CHUNK_PAYLOAD_BYTES) => {
                Err(Error::OverLimit {
                    what: "decompressed chunk",
                    found,
                    limit: len_u64(MAX_CHUNK_PAYLOAD_BYTES),
                    id: Some(helper.id.clone()),
                })
            }
            Err(DecodeError::TooLarge(found)) => Err(Error::OverLimit {
                what: "blob",
                found: helper.bytes.saturating_add(found),
                limit: self.limits.max_blob_bytes,
                id: Some(helper.id.clone()),
            }),
            Err(DecodeError::Corrupt(reason)) => {
                Err(Error::corrupt(start, reason, Some(&helper.id)))
            }
        }
    }

    /// Checks a record's length (and what it would add to its blob)
    /// before anything is allocated for its payload.
    fn check_before_payload(
        &self,
        start: u64,
        kind: Kind,
        h: RecordHeader,
        zstd: bool,
    ) -> Result<(), Error> {
        // What sealing and compression add to the payload's bytes.
        let tag = if self.sealer.is_some() { TAG_BYTES } else { 0 };
        let prefix = if zstd { DECODED_LEN_BYTES } else { 0 };
        let overhead = len_u64(tag + prefix);
        let Some(len) = u64::from(h.len).checked_sub(overhead) else {
            return Err(Error::corrupt(
                start,
                format!(
                    "{} record of {} bytes, shorter than its framing",
                    kind.name(),
                    h.len
                ),
                None,
            ));
        };
        match kind {
            Kind::Begin => {
                if len == 0 || len > len_u64(MAX_ID_BYTES) {
                    return Err(Error::corrupt(
                        start,
                        format!("BEGIN payload of {len} bytes, expected 1 to {MAX_ID_BYTES}"),
                        None,
                    ));
                }
                if self.helpers.len() >= self.limits.max_helpers {
                    return Err(Error::TooManyHelpers {
                        found: len_u64(self.helpers.len()).saturating_add(1),
                        limit: len_u64(self.limits.max_helpers),
                    });
                }
            }
            Kind::Chunk => {
                if len == 0 {
                    return Err(Error::corrupt(start, "empty CHUNK record", None));
                }
                if len > len_u64(MAX_CHUNK_PAYLOAD_BYTES) {
                    return Err(Error::OverLimit {
                        what: "chunk payload",
                        found: len,
                        limit: len_u64(MAX_CHUNK_PAYLOAD_BYTES),
                        id: None,
                    });
                }
                // The index is not verified yet; a wrong one fails the CRC
                // or the checks after it, so only a real helper is blamed.
                // A compressed chunk's size is checked once decoded.
                if let Some(helper) = self.helpers.get(h.helper as usize).filter(|_| !zstd) {
                    let after = helper.bytes.saturating_add(len);
                    if helper.open && after > self.limits.max_blob_bytes {
                        return Err(Error::OverLimit {
                            what: "blob",
                            found: after,
                            limit: self.limits.max_blob_bytes,
                            id: Some(helper.id.clone()),
                        });
                    }
                }
            }
            Kind::End | Kind::StreamEnd => {
                if len != len_u64(END_PAYLOAD_BYTES) {
                    return Err(Error::corrupt(
                        start,
                        format!(
                            "{} payload of {len} bytes, expected {END_PAYLOAD_BYTES}",
                            kind.name()
                        ),
                        None,
                    ));
                }
            }
        }
        Ok(())
    }

    fn begin(&mut self, start: u64, index: u32) -> Result<Step, Error> {
        let expected = len_u64(self.helpers.len());
        if u64::from(index) != expected {
            return Err(Error::corrupt(
                start,
                format!("BEGIN for helper index {index}, expected {expected}"),
                None,
            ));
        }
        let id = id_from_bytes(self.payload())?.to_owned();
        if !self.ids.insert(id.clone()) {
            return Err(Error::DuplicateId { id });
        }
        self.helpers.push(Helper {
            id,
            open: true,
            bytes: 0,
            chunks: 0,
            compressed_chunks: 0,
            stored_bytes: 0,
            crc: 0,
        });
        Ok(Step::Begin(index))
    }

    fn chunk(&mut self, start: u64, index: u32) -> Result<Step, Error> {
        let data = self.buf.get(..self.payload_len).unwrap_or_default();
        let helper = open_helper(&mut self.helpers, start, index, Kind::Chunk)?;
        let len = len_u64(data.len());
        // Checked against the limit before the payload was read.
        helper.bytes = helper.bytes.saturating_add(len);
        helper.chunks += 1;
        helper.crc = crc32c::crc32c_append(helper.crc, data);
        self.total_bytes = self.total_bytes.saturating_add(len);
        Ok(Step::Chunk(index))
    }

    fn end(&mut self, start: u64, index: u32) -> Result<Step, Error> {
        let p = self.fixed_payload(start)?;
        let bytes = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
        let crc = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
        let helper = open_helper(&mut self.helpers, start, index, Kind::End)?;
        if bytes != helper.bytes {
            return Err(Error::corrupt(
                start,
                format!(
                    "END declares a blob of {bytes} bytes, but its chunks hold {}",
                    helper.bytes
                ),
                Some(&helper.id),
            ));
        }
        if crc != helper.crc {
            return Err(Error::Checksum {
                offset: start,
                what: "blob",
                id: Some(helper.id.clone()),
            });
        }
        helper.open = false;
        Ok(Step::End(index, bytes))
    }

    fn stream_end(&mut self, start: u64, index: u32) -> Result<Step, Error> {
        if index != STREAM_END_HELPER {
            return Err(Error::corrupt(
                start,
                format!("STREAM_END with helper index {index:#010x}, expected 0xffffffff"),
                None,
            ));
        }
        if let Some(open) = self.helpers.iter().find(|h| h.open) {
            return Err(Error::corrupt(
                start,
                "stream ends before the helper's END",
                Some(&open.id),
            ));
        }
        let p = self.fixed_payload(start)?;
        let count = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let total = u64::from_le_bytes([p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]]);
        if u64::from(count) != len_u64(self.helpers.len()) {
            return Err(Error::corrupt(
                start,
                format!(
                    "STREAM_END declares {count} helpers, the stream holds {}",
                    self.helpers.len()
                ),
                None,
            ));
        }
        if total != self.total_bytes {
            return Err(Error::corrupt(
                start,
                format!(
                    "STREAM_END declares {total} blob bytes, the stream holds {}",
                    self.total_bytes
                ),
                None,
            ));
        }
        let mut probe = [0u8; 1];
        if read_full(&mut self.r, &mut probe)? != 0 {
            return Err(Error::TrailingData {
                offset: self.offset,
            });
        }
        self.state = State::Done;
        Ok(Step::StreamEnd)
    }

    /// The payload of an `END` or `STREAM_END` record, whose length was
    /// checked before it was read.
    fn fixed_payload(&self, start: u64) -> Result<[u8; END_PAYLOAD_BYTES], Error> {
        self.payload()
            .try_into()
            .map_err(|_| Error::corrupt(start, "wrong payload length", None))
    }

    /// The current record's payload.
    fn payload(&self) -> &[u8] {
        self.buf.get(..self.payload_len).unwrap_or_default()
    }
}

/// The open helper `index`, or the error for a record addressed to a
/// helper that was never begun or is already ended.
fn open_helper(
    helpers: &mut [Helper],
    start: u64,
    index: u32,
    kind: Kind,
) -> Result<&mut Helper, Error> {
    match helpers.get_mut(index as usize) {
        Some(h) if h.open => Ok(h),
        Some(h) => Err(Error::corrupt(
            start,
            format!("{} after the helper's END", kind.name()),
            Some(&h.id),
        )),
        None => Err(Error::corrupt(
            start,
            format!("{} for unknown helper index {index}", kind.name()),
            None,
        )),
    }
}

/// Largest zstd window a compressed chunk may ask for: 16 MiB, the
/// largest chunk.
const WINDOW_LOG_MAX: u32 = 24;

/// Reads a payload of `len` bytes, whose size has been checked, into
/// `buf[..len]`. The buffer grows only as bytes arrive (first to one
/// writer chunk, then doubling), so a header that announces more than the
/// input holds costs no more than one writer chunk of memory; growth
/// zero-fills once and the buffer is then reused.
/// A record's header, read and its kind known.
struct Frame {
    /// Where the record starts.
    start: u64,
    bytes: [u8; RECORD_HEADER_BYTES],
    header: RecordHeader,
    kind: Kind,
}

/// Reads the record header at `*offset` (advanced past what was read).
fn read_frame_header<R: Read>(r: &mut R, offset: &mut u64) -> Result<Frame, Error> {
    let start = *offset;
    let mut bytes = [0u8; RECORD_HEADER_BYTES];
    let got = read_full(r, &mut bytes)?;
    *offset += len_u64(got);
    if got < RECORD_HEADER_BYTES {
        return Err(Error::Truncated {
            offset: *offset,
            expected: if got == 0 {
                "another record or STREAM_END"
            } else {
                "record header"
            },
        });
    }
    let header = RecordHeader::decode(&bytes);
    let kind = Kind::from_u8(header.kind).ok_or_else(|| {
        Error::corrupt(
            start,
            format!("unknown record kind {:#04x}", header.kind),
            None,
        )
    })?;
    Ok(Frame {
        start,
        bytes,
        header,
        kind,
    })
}

/// Reads the stored payload of `frame` into `buf[..len]` and the CRC
/// after it, and checks the CRC of header and payload. The caller has
/// checked the length.
fn read_frame_body<R: Read>(
    r: &mut R,
    offset: &mut u64,
    frame: &Frame,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    let len = frame.header.len as usize;
    read_into(r, buf, len, offset)?;
    let mut cb = [0u8; RECORD_CRC_BYTES];
    let got = read_full(r, &mut cb)?;
    *offset += len_u64(got);
    if got < RECORD_CRC_BYTES {
        return Err(Error::Truncated {
            offset: *offset,
            expected: "record checksum",
        });
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame.bytes), &buf[..len]);
    if crc != u32::from_le_bytes(cb) {
        return Err(Error::Checksum {
            offset: frame.start,
            what: "record",
            id: None,
        });
    }
    Ok(())
}

fn read_into<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    len: usize,
    offset: &mut u64,
) -> Result<(), Error> {
    let mut filled = 0;
    while filled < len {
        if buf.len() <= filled {
            let grown = buf.len().saturating_mul(2).max(CHUNK_BYTES);
            buf.resize(grown.min(len), 0);
        }
        let end = buf.len().min(len);
        let want = end - filled;
        let got = read_full(r, &mut buf[filled..end])?;
        *offset += len_u64(got);
        filled += got;
        if got < want {
            return Err(Error::Truncated {
                offset: *offset,
                expected: "record payload",
            });
        }
    }
    Ok(())
}

/// Reads and checks a stream header; returns it with its version and
/// features.
fn read_header<R: Read>(r: &mut R) -> Result<([u8; HEADER_BYTES], u32, Features), Error> {
    let mut h = [0u8; HEADER_BYTES];
    let got = read_full(r, &mut h)?;
    let magic_got = got.min(MAGIC.len());
    if h[..magic_got] != MAGIC[..magic_got] {
        return Err(Error::BadMagic);
    }
    if got < HEADER_BYTES {
        return Err(Error::Truncated {
            offset: len_u64(got),
            expected: "stream header",
        });
    }
    let stored_crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if crc32c::crc32c(&h[..16]) != stored_crc {
        return Err(Error::Checksum {
            offset: 0,
            what: "stream header",
            id: None,
        });
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let features = check_version(version, flags)?;
    Ok((h, version, features))
}

/// Reads the key block that follows an encrypted stream's header.
fn read_key_block<R: Read>(r: &mut R) -> Result<[u8; KEY_BLOCK_BYTES], Error> {
    let mut b = [0u8; KEY_BLOCK_BYTES];
    let got = read_full(r, &mut b)?;
    if got < KEY_BLOCK_BYTES {
        return Err(Error::Truncated {
            offset: len_u64(HEADER_BYTES + got),
            expected: "key block",
        });
    }
    Ok(b)
}

/// What can be told of a native stream without its key: its header, and
/// the framing and checksums of its records, which catch corruption but
/// not deliberate changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survey {
    /// The format version.
    pub version: u32,
    /// What the header says the stream uses.
    pub features: Features,
    /// The fingerprint of the key of an encrypted stream.
    pub key_id: Option<KeyId>,
    /// Per helper, in `BEGIN` order: the `CHUNK` records and their stored
    /// bytes (after compression, with their tags).
    pub helpers: Vec<SurveyHelper>,
    /// Records in the stream, `STREAM_END` included.
    pub records: u64,
    /// Size of the stream in bytes.
    pub stream_bytes: u64,
}

/// One helper in a [`Survey`]: what its records show without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SurveyHelper {
    /// `CHUNK` records of the helper.
    pub chunks: u64,
    /// Of those, stored compressed.
    pub compressed_chunks: u64,
    /// Their stored payload bytes.
    pub stored_bytes: u64,
}

/// Walks a native stream without decoding its payloads: header, key
/// block, every record's framing (kind, length, helper index, order) and
/// CRC-32C, the end of the stream. For a stream whose key is not at hand;
/// [`super::inspect_with`] verifies everything with it.
///
/// # Errors
///
/// What [`Reader`] reports about the header and framing: [`Error::BadMagic`],
/// [`Error::Truncated`], [`Error::Checksum`], [`Error::Corrupt`],
/// [`Error::UnsupportedVersion`], [`Error::UnsupportedFlags`],
/// [`Error::TooManyHelpers`], [`Error::TrailingData`], [`Error::Io`].
pub fn survey<R: Read>(mut r: R, limits: Limits) -> Result<Survey, Error> {
    let (_, version, features) = read_header(&mut r)?;
    let mut offset = len_u64(HEADER_BYTES);
    let key_id = if features.encrypted {
        let block = KeyBlock::decode(&read_key_block(&mut r)?, offset)?;
        offset += len_u64(KEY_BLOCK_BYTES);
        Some(block.key_id)
    } else {
        None
    };
    let tag = if features.encrypted { TAG_BYTES } else { 0 };
    let max_stored = MAX_CHUNK_PAYLOAD_BYTES + DECODED_LEN_BYTES + tag;
    let mut helpers: Vec<SurveyHelper> = Vec::new();
    let mut records = 0u64;
    let mut buf = Vec::new();
    loop {
        let frame = read_frame_header(&mut r, &mut offset)?;
        let (start, h, kind) = (frame.start, frame.header, frame.kind);
        let len = h.len as usize;
        if len > max_stored {
            return Err(Error::corrupt(
                start,
                format!("record of {len} bytes"),
                None,
            ));
        }
        read_frame_body(&mut r, &mut offset, &frame, &mut buf)?;
        records += 1;
        let index = h.helper as usize;
        match kind {
            Kind::Begin => {
                if index != helpers.len() {
                    return Err(Error::corrupt(
                        start,
                        format!("BEGIN for helper index {index}"),
                        None,
                    ));
                }
                if helpers.len() >= limits.max_helpers {
                    return Err(Error::TooManyHelpers {
                        found: len_u64(helpers.len()).saturating_add(1),
                        limit: len_u64(limits.max_helpers),
                    });
                }
                helpers.push(SurveyHelper::default());
            }
            Kind::Chunk | Kind::End => {
                let helper = helpers.get_mut(index).ok_or_else(|| {
                    Error::corrupt(
                        start,
                        format!("{} for unknown helper index {index}", kind.name()),
                        None,
                    )
                })?;
                if kind == Kind::Chunk {
                    helper.chunks += 1;
                    helper.compressed_chunks += u64::from(h.encoding == ENCODING_ZSTD);
                    helper.stored_bytes += u64::from(h.len);
                }
            }
            Kind::StreamEnd => {
                let mut probe = [0u8; 1];
                if read_full(&mut r, &mut probe)? != 0 {
                    return Err(Error::TrailingData { offset });
                }
                return Ok(Survey {
                    version,
                    features,
                    key_id,
                    helpers,
                    records,
                    stream_bytes: offset,
                });
            }
        }
    }
}
