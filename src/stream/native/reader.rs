//! The streaming native reader.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;

use super::{
    check_version, HelperSummary, Kind, RecordHeader, Summary, CHUNK_BYTES, END_PAYLOAD_BYTES,
    HEADER_BYTES, MAGIC, MAX_CHUNK_PAYLOAD_BYTES, RECORD_CRC_BYTES, RECORD_HEADER_BYTES,
    STREAM_END_HELPER, VERSION,
};
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
pub struct Reader<R: Read> {
    r: R,
    limits: Limits,
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
    /// Reads and checks the stream header: magic, checksum, version
    /// ([`check_version`]), flags.
    ///
    /// # Errors
    ///
    /// [`Error::BadMagic`], [`Error::Truncated`], [`Error::Checksum`],
    /// [`Error::UnsupportedVersion`], [`Error::UnsupportedFlags`],
    /// [`Error::Io`].
    pub fn new(mut r: R, limits: Limits) -> Result<Self, Error> {
        let mut h = [0u8; HEADER_BYTES];
        let got = read_full(&mut r, &mut h)?;
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
        check_version(u32::from_le_bytes([h[8], h[9], h[10], h[11]]))?;
        let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if flags != 0 {
            return Err(Error::UnsupportedFlags { flags });
        }
        Ok(Reader {
            r,
            limits,
            offset: len_u64(HEADER_BYTES),
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
            version: VERSION,
            helpers: self
                .helpers
                .iter()
                .map(|h| HelperSummary {
                    id: h.id.clone(),
                    bytes: h.bytes,
                    chunks: h.chunks,
                    crc32c: h.crc,
                })
                .collect(),
            total_bytes: self.total_bytes,
            stream_bytes: self.offset,
        }
    }

    fn read_record(&mut self) -> Result<Step, Error> {
        let start = self.offset;
        let mut hb = [0u8; RECORD_HEADER_BYTES];
        let got = read_full(&mut self.r, &mut hb)?;
        self.offset += len_u64(got);
        if got < RECORD_HEADER_BYTES {
            return Err(Error::Truncated {
                offset: self.offset,
                expected: if got == 0 {
                    "another record or STREAM_END"
                } else {
                    "record header"
                },
            });
        }
        let h = RecordHeader::decode(&hb);
        let kind = Kind::from_u8(h.kind).ok_or_else(|| {
            Error::corrupt(start, format!("unknown record kind {:#04x}", h.kind), None)
        })?;
        self.check_before_payload(start, kind, h)?;
        self.read_payload(h.len as usize)?;
        let mut cb = [0u8; RECORD_CRC_BYTES];
        self.read_exact(&mut cb, "record checksum")?;
        if crc32c::crc32c_append(crc32c::crc32c(&hb), self.payload()) != u32::from_le_bytes(cb) {
            return Err(Error::Checksum {
                offset: start,
                what: "record",
                id: None,
            });
        }
        if h.reserved8 != 0 || h.reserved16 != 0 {
            return Err(Error::corrupt(start, "non-zero reserved field", None));
        }
        match kind {
            Kind::Begin => self.begin(start, h.helper),
            Kind::Chunk => self.chunk(start, h.helper),
            Kind::End => self.end(start, h.helper),
            Kind::StreamEnd => self.stream_end(start, h.helper),
        }
    }

    /// Checks a record's length (and what it would add to its blob)
    /// before anything is allocated for its payload.
    fn check_before_payload(&self, start: u64, kind: Kind, h: RecordHeader) -> Result<(), Error> {
        let len = u64::from(h.len);
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
                if let Some(helper) = self.helpers.get(h.helper as usize) {
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

    /// Reads a payload of `len` bytes, whose size has been checked. The
    /// buffer grows only as bytes arrive (first to one writer chunk, then
    /// doubling), so a header that announces more than the input holds
    /// costs no more than one writer chunk of memory; growth zero-fills
    /// once and the buffer is then reused.
    fn read_payload(&mut self, len: usize) -> Result<(), Error> {
        self.payload_len = 0;
        let mut filled = 0;
        while filled < len {
            if self.buf.len() <= filled {
                let grown = self.buf.len().saturating_mul(2).max(CHUNK_BYTES);
                self.buf.resize(grown.min(len), 0);
            }
            let end = self.buf.len().min(len);
            let want = end - filled;
            let got = read_full(&mut self.r, &mut self.buf[filled..end])?;
            self.offset += len_u64(got);
            filled += got;
            if got < want {
                return Err(Error::Truncated {
                    offset: self.offset,
                    expected: "record payload",
                });
            }
        }
        self.payload_len = len;
        Ok(())
    }

    /// Fills `buf` or fails with [`Error::Truncated`] where the input ended.
    fn read_exact(&mut self, buf: &mut [u8], expected: &'static str) -> Result<(), Error> {
        let got = read_full(&mut self.r, buf)?;
        self.offset += len_u64(got);
        if got < buf.len() {
            return Err(Error::Truncated {
                offset: self.offset,
                expected,
            });
        }
        Ok(())
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
