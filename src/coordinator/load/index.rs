//! The index of a seekable native stream: each helper's Id and state size,
//! read from the record headers and the small `BEGIN` and `END` records
//! alone, seeking over every chunk's payload.
//!
//! A native stream announces a state's size only in its `END` record,
//! after all its chunks, and `LoadFd` must be told the exact size before
//! the first byte. A seekable input gives the sizes up front at the cost
//! of one header read per chunk (12 bytes per MiB), so that the one
//! verifying pass ([`super::dispatch`]) can stream every state as it
//! reads it. The index checks what it reads (the `BEGIN` and `END`
//! records' checksums, the order of the records, the limits, every Id
//! known to the coordinator) and nothing else: chunk payloads, blob
//! checksums and `STREAM_END` are the verifying pass's, and no helper
//! completes a load before that pass has verified the whole stream.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom};

use super::verify::{self, Contents, Verified};
use crate::error::Error;
use crate::stream::{
    self,
    native::{
        self, Kind, END_PAYLOAD_BYTES, MAX_CHUNK_PAYLOAD_BYTES, RECORD_CRC_BYTES,
        RECORD_HEADER_BYTES,
    },
    Format, Limits, MAX_ID_BYTES,
};

/// Ids of the helpers a coordinator knows: any other Id in a stream
/// fails the load where it is read.
pub(crate) type Known = HashSet<String>;

/// Detects the format of a seekable `input` and prepares its load: a QEMU
/// payload is decoded, a native stream indexed and rewound to where it
/// stood. An input that cannot tell its position (a pipe passed as a
/// file) is handed back untouched, to be loaded as one read once.
///
/// # Errors
///
/// [`Error::Stream`] for what the index or the QEMU decoder rejects,
/// [`Error::UnknownInStream`] at the first unknown Id, [`Error::Io`].
pub(crate) fn seekable<R: Read + Seek + Send + 'static>(
    mut input: R,
    format: Option<Format>,
    limits: Limits,
    known: &Known,
) -> Result<Indexed<R>, Error> {
    let Ok(start) = input.stream_position() else {
        return Ok(Indexed::NotSeekable(input));
    };
    let prefix = verify::read_prefix(&mut input)?;
    let format = verify::format_of(&prefix, format)?;
    input
        .seek(SeekFrom::Start(start))
        .map_err(verify::io_error)?;
    if format == Format::Qemu {
        return verify::decode_qemu(input, limits).map(Indexed::Verified);
    }
    let contents = scan(&mut input, limits, known)?;
    input
        .seek(SeekFrom::Start(start))
        .map_err(verify::io_error)?;
    Ok(Indexed::Verified(Verified::Native {
        input: Box::new(input),
        contents,
    }))
}

/// A seekable input, prepared.
pub(crate) enum Indexed<R> {
    /// Indexed (or decoded), ready for its verifying pass.
    Verified(Verified),
    /// It cannot tell its position after all: here it is back.
    NotSeekable(R),
}

/// One helper as the index sees it.
struct Entry {
    id: String,
    /// The sum of its chunks' lengths so far.
    bytes: u64,
    /// Its `END` was read.
    ended: bool,
}

/// Reads the index of the native stream at `input`'s position: each
/// helper's Id and size in stream order. Leaves `input` after the
/// `STREAM_END` record's header.
///
/// # Errors
///
/// As [`seekable`].
pub(crate) fn scan<R: Read + Seek>(
    input: &mut R,
    limits: Limits,
    known: &Known,
) -> Result<Contents, Error> {
    // The stream header, checked in full.
    drop(native::Reader::new(&mut *input, limits).map_err(verify::read_error)?);
    let mut offset = native::HEADER_BYTES as u64;
    let mut helpers: Vec<Entry> = Vec::new();
    let mut ids = HashSet::new();
    loop {
        let start = offset;
        let mut header = [0u8; RECORD_HEADER_BYTES];
        if read_all(input, &mut header)? < header.len() {
            return Err(truncated(start, "another record or STREAM_END"));
        }
        let kind_byte = header[0];
        let index = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        offset += (RECORD_HEADER_BYTES + RECORD_CRC_BYTES) as u64 + u64::from(len);
        let kind = Kind::from_u8(kind_byte)
            .ok_or_else(|| corrupt(start, format!("unknown record kind {kind_byte:#04x}"), None))?;
        match kind {
            Kind::StreamEnd => break,
            Kind::Chunk => {
                if len == 0 || len as usize > MAX_CHUNK_PAYLOAD_BYTES {
                    return Err(corrupt(
                        start,
                        format!("CHUNK payload of {len} bytes"),
                        None,
                    ));
                }
                let entry = open(&mut helpers, start, index, kind)?;
                entry.bytes = entry.bytes.saturating_add(u64::from(len));
                if entry.bytes > limits.max_blob_bytes {
                    return Err(Error::Stream(stream::Error::OverLimit {
                        what: "blob",
                        found: entry.bytes,
                        limit: limits.max_blob_bytes,
                        id: Some(entry.id.clone()),
                    }));
                }
                input
                    .seek(SeekFrom::Current(i64::from(len) + RECORD_CRC_BYTES as i64))
                    .map_err(verify::io_error)?;
            }
            Kind::Begin => {
                if len == 0 || len as usize > MAX_ID_BYTES {
                    return Err(corrupt(
                        start,
                        format!("BEGIN payload of {len} bytes"),
                        None,
                    ));
                }
                let payload = small_record(input, &header, len, start)?;
                if index as usize != helpers.len() {
                    return Err(corrupt(
                        start,
                        format!("BEGIN for helper index {index}"),
                        None,
                    ));
                }
                if helpers.len() >= limits.max_helpers {
                    return Err(Error::Stream(stream::Error::TooManyHelpers {
                        found: helpers.len() as u64 + 1,
                        limit: limits.max_helpers as u64,
                    }));
                }
                let id = String::from_utf8(payload)
                    .map_err(|_| corrupt(start, "BEGIN Id is not UTF-8", None))?;
                stream::validate_id(&id).map_err(Error::Stream)?;
                if !ids.insert(id.clone()) {
                    return Err(Error::Stream(stream::Error::DuplicateId { id }));
                }
                if !known.contains(&id) {
                    return Err(Error::UnknownInStream { id });
                }
                helpers.push(Entry {
                    id,
                    bytes: 0,
                    ended: false,
                });
            }
            Kind::End => {
                if len as usize != END_PAYLOAD_BYTES {
                    return Err(corrupt(start, format!("END payload of {len} bytes"), None));
                }
                let payload = small_record(input, &header, len, start)?;
                let entry = open(&mut helpers, start, index, kind)?;
                let mut size = [0u8; 8];
                size.copy_from_slice(&payload[..8]);
                if u64::from_le_bytes(size) != entry.bytes {
                    return Err(corrupt(
                        start,
                        format!("END declares another size than its chunks' {}", entry.bytes),
                        Some(&entry.id),
                    ));
                }
                entry.ended = true;
            }
        }
    }
    if let Some(open) = helpers.iter().find(|h| !h.ended) {
        return Err(corrupt(
            offset,
            "stream ends before the helper's END",
            Some(&open.id),
        ));
    }
    Ok(helpers.into_iter().map(|h| (h.id, h.bytes)).collect())
}

/// The open helper `index`, or the error for a record addressed to
/// another.
fn open(helpers: &mut [Entry], start: u64, index: u32, kind: Kind) -> Result<&mut Entry, Error> {
    match helpers.get_mut(index as usize) {
        Some(h) if !h.ended => Ok(h),
        _ => Err(corrupt(
            start,
            format!(
                "{} for helper index {index}, which is not open",
                kind.name()
            ),
            None,
        )),
    }
}

/// Reads the payload of a `BEGIN` or `END` record and checks its CRC.
fn small_record<R: Read>(
    input: &mut R,
    header: &[u8; RECORD_HEADER_BYTES],
    len: u32,
    start: u64,
) -> Result<Vec<u8>, Error> {
    let mut rest = vec![0u8; len as usize + RECORD_CRC_BYTES];
    if read_all(input, &mut rest)? < rest.len() {
        return Err(truncated(start, "record payload"));
    }
    let (payload, crc) = rest.split_at(len as usize);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c_append(crc32c::crc32c(header), payload) != stored {
        return Err(Error::Stream(stream::Error::Checksum {
            offset: start,
            what: "record",
            id: None,
        }));
    }
    if header[1] != 0 || header[2] != 0 || header[3] != 0 {
        return Err(corrupt(start, "non-zero reserved field", None));
    }
    rest.truncate(len as usize);
    Ok(rest)
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_all<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(verify::io_error(e)),
        }
    }
    Ok(filled)
}

fn corrupt(offset: u64, reason: impl Into<String>, id: Option<&str>) -> Error {
    Error::Stream(stream::Error::Corrupt {
        offset,
        reason: reason.into(),
        id: id.map(str::to_string),
    })
}

fn truncated(offset: u64, expected: &'static str) -> Error {
    Error::Stream(stream::Error::Truncated { offset, expected })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::stream::Record;

    fn known() -> Known {
        ["a", "b"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes_come_from_the_headers() {
        let bytes = native::encode(&[
            Record::new("a", vec![1; 3 << 20]),
            Record::new("b", Vec::new()),
        ])
        .unwrap();
        let mut input = Cursor::new(bytes);
        let contents = scan(&mut input, Limits::default(), &known()).unwrap();
        assert_eq!(contents, vec![("a".into(), 3 << 20), ("b".into(), 0)]);
    }

    #[test]
    fn an_unknown_id_fails_where_it_is_read() {
        let bytes = native::encode(&[Record::new("zz", vec![1])]).unwrap();
        let err = scan(&mut Cursor::new(bytes), Limits::default(), &known()).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownInStream { id } if id == "zz"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_stream_fails() {
        let bytes = native::encode(&[Record::new("a", vec![1; 100])]).unwrap();
        for cut in [native::HEADER_BYTES + 3, bytes.len() - 40, bytes.len() - 28] {
            let err = scan(
                &mut Cursor::new(bytes[..cut].to_vec()),
                Limits::default(),
                &known(),
            )
            .unwrap_err();
            assert!(err.is_stream(), "cut {cut}: {err}");
        }
    }

    #[test]
    fn a_flipped_bit_in_an_end_record_fails() {
        let mut bytes = native::encode(&[Record::new("a", vec![1; 100])]).unwrap();
        let end = bytes.len() - 2 * 28 + 13;
        bytes[end] ^= 1;
        let err = scan(&mut Cursor::new(bytes), Limits::default(), &known()).unwrap_err();
        assert!(
            matches!(&err, Error::Stream(stream::Error::Checksum { .. })),
            "{err}"
        );
    }

    #[test]
    fn a_state_over_the_limit_fails_before_its_end() {
        let bytes = native::encode(&[Record::new("a", vec![1; 100])]).unwrap();
        let limits = Limits {
            max_blob_bytes: 99,
            ..Limits::default()
        };
        let err = scan(&mut Cursor::new(bytes), limits, &known()).unwrap_err();
        assert_eq!(err.helper_id(), Some("a"), "{err}");
    }
}
