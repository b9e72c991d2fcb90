//! The first pass of a load: detect the format and verify the whole
//! stream, keeping only what the second pass needs.
//!
//! [The rule](crate::coordinator#loading) is the coordinator's: [`seekable`]
//! keeps the input to read it again, [`spooled`] copies it to a spool of
//! [`SPOOL_MEMORY_BYTES`] in memory, then an unlinked temporary file.
//!
//! The states of helpers known to be plain ([`Keep`]) are kept from the
//! first pass: they go into one `Load` message anyway, and keeping them
//! spares a second read (none at all when every helper is plain).

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom, Write};

use crate::error::Error;
use crate::iface;
use crate::stream::{self, native, qemu, Format, Limits, Record};

/// How much of a non-seekable native stream is spooled in memory before
/// the spool moves to a temporary file.
pub(crate) const SPOOL_MEMORY_BYTES: usize = 8 << 20;

/// Read buffer of the second pass over a spool: small, so that a chunk's
/// payload is mostly read straight into the stream reader's buffer.
const SPOOL_READ_BUFFER_BYTES: usize = 64 << 10;

/// Ids of the helpers whose states the first pass keeps.
pub(crate) type Keep = HashSet<String>;

/// A verified stream, ready for its second pass.
pub(crate) enum Verified {
    /// A QEMU payload, decoded.
    Records(Vec<Record>),
    /// A native stream: its summary, the input at the stream's start, and
    /// the kept states (at most one D-Bus message each) by Id.
    Native {
        input: Box<dyn Read + Send>,
        summary: native::Summary,
        kept: HashMap<String, Vec<u8>>,
    },
}

impl Verified {
    pub(crate) fn format(&self) -> Format {
        match self {
            Verified::Records(_) => Format::Qemu,
            Verified::Native { .. } => Format::Native,
        }
    }

    /// Each helper's Id and state size, in stream order.
    pub(crate) fn contents(&self) -> Vec<(String, u64)> {
        match self {
            Verified::Records(records) => records
                .iter()
                .map(|r| (r.id.clone(), r.data.len() as u64))
                .collect(),
            Verified::Native { summary, .. } => summary
                .helpers
                .iter()
                .map(|h| (h.id.clone(), h.bytes))
                .collect(),
        }
    }
}

pub(crate) fn read_error(e: stream::Error) -> Error {
    match e {
        stream::Error::Io(source) => Error::Io {
            what: "cannot read the state stream",
            path: None,
            source,
        },
        other => Error::Stream(other),
    }
}

fn io_error(source: io::Error) -> Error {
    Error::Io {
        what: "cannot read the state stream",
        path: None,
        source,
    }
}

/// Reads the first bytes and settles the format.
fn format_of(prefix: &[u8], format: Option<Format>) -> Result<Format, Error> {
    match format {
        Some(f) => Ok(f),
        None => Format::recognize(prefix).map_err(Error::Stream),
    }
}

fn read_prefix<R: Read>(input: &mut R) -> Result<Vec<u8>, Error> {
    let mut prefix = Vec::with_capacity(native::MAGIC.len());
    input
        .take(native::MAGIC.len() as u64)
        .read_to_end(&mut prefix)
        .map_err(io_error)?;
    Ok(prefix)
}

fn decode_qemu<R: Read>(input: R, limits: Limits) -> Result<Verified, Error> {
    let decoded = qemu::read(input, limits).map_err(read_error)?;
    if decoded.trailing_bytes > 0 {
        tracing::debug!(
            bytes = decoded.trailing_bytes,
            "ignored trailing bytes after the QEMU payload's entries"
        );
    }
    Ok(Verified::Records(decoded.records))
}

/// Verifies a whole native stream, keeping the states of `keep` that fit
/// in one `Load` message.
fn first_pass<R: Read>(
    input: R,
    limits: Limits,
    keep: &Keep,
) -> Result<(native::Summary, HashMap<String, Vec<u8>>), stream::Error> {
    let mut reader = native::Reader::new(input, limits)?;
    // By helper index: the state being kept, if it is.
    let mut open: Vec<Option<Vec<u8>>> = Vec::new();
    let mut kept = HashMap::new();
    loop {
        let ended = match reader.next_event()? {
            None => break,
            Some(native::Event::Begin { id, .. }) => {
                open.push(keep.contains(id).then(Vec::new));
                None
            }
            Some(native::Event::Chunk { helper, data }) => {
                if let Some(slot) = open.get_mut(helper as usize) {
                    match slot {
                        Some(buf) if buf.len() + data.len() <= iface::MAX_LOAD_BLOB_BYTES => {
                            buf.extend_from_slice(data)
                        }
                        // Too large for a message: the load will refuse it.
                        _ => *slot = None,
                    }
                }
                None
            }
            Some(native::Event::End { helper, .. }) => Some(helper),
        };
        if let Some(helper) = ended {
            let state = open.get_mut(helper as usize).and_then(Option::take);
            if let (Some(state), Some(id)) = (state, reader.id_of(helper)) {
                kept.insert(id.to_string(), state);
            }
        }
    }
    Ok((reader.summary(), kept))
}

/// First pass over an input read only once: a native stream is spooled.
pub(crate) fn spooled<R: Read>(
    mut input: R,
    format: Option<Format>,
    limits: Limits,
    keep: &Keep,
) -> Result<Verified, Error> {
    let prefix = read_prefix(&mut input)?;
    let format = format_of(&prefix, format)?;
    let input = Cursor::new(prefix).chain(input);
    if format == Format::Qemu {
        return decode_qemu(input, limits);
    }
    let mut spool = tempfile::spooled_tempfile(SPOOL_MEMORY_BYTES);
    let mut tee = Tee {
        input,
        spool: &mut spool,
        spool_error: None,
    };
    let passed = first_pass(&mut tee, limits, keep);
    if let Some(source) = tee.spool_error.take() {
        return Err(spool_error(source));
    }
    let (summary, kept) = passed.map_err(read_error)?;
    spool.seek(SeekFrom::Start(0)).map_err(spool_error)?;
    Ok(Verified::Native {
        input: Box::new(BufReader::with_capacity(SPOOL_READ_BUFFER_BYTES, spool)),
        summary,
        kept,
    })
}

/// First pass over a seekable input: it is read again from the same
/// position for the second. Falls back to [`spooled`] when seeking fails.
pub(crate) fn seekable<R: Read + Seek + Send + 'static>(
    mut input: R,
    format: Option<Format>,
    limits: Limits,
    keep: &Keep,
) -> Result<Verified, Error> {
    let Ok(start) = input.stream_position() else {
        return spooled(input, format, limits, keep);
    };
    let prefix = read_prefix(&mut input)?;
    let format = format_of(&prefix, format)?;
    input.seek(SeekFrom::Start(start)).map_err(io_error)?;
    if format == Format::Qemu {
        return decode_qemu(input, limits);
    }
    let (summary, kept) = first_pass(&mut input, limits, keep).map_err(read_error)?;
    input.seek(SeekFrom::Start(start)).map_err(io_error)?;
    Ok(Verified::Native {
        input: Box::new(input),
        summary,
        kept,
    })
}

fn spool_error(source: io::Error) -> Error {
    Error::Io {
        what: "cannot spool the state stream to a temporary file",
        path: None,
        source,
    }
}

/// Copies everything read from `input` into `spool`. A spool error is kept
/// apart, so that it is not reported as a read error of the input.
struct Tee<'a, R, S> {
    input: R,
    spool: &'a mut S,
    spool_error: Option<io::Error>,
}

impl<R: Read, S: Write> Read for Tee<'_, R, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if let Err(e) = self.spool.write_all(&buf[..n]) {
            let kind = e.kind();
            self.spool_error = Some(e);
            return Err(io::Error::new(kind, "spool write failed"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        native::encode(&[Record::new("a", vec![1; 3000]), Record::new("b", vec![])]).unwrap()
    }

    fn read_back(v: Verified) -> Vec<u8> {
        match v {
            Verified::Native { mut input, .. } => {
                let mut out = Vec::new();
                input.read_to_end(&mut out).unwrap();
                out
            }
            Verified::Records(_) => panic!("expected native"),
        }
    }

    #[test]
    fn spooled_input_is_verified_and_replayed() {
        let bytes = stream();
        let v = spooled(&bytes[..], None, Limits::default(), &Keep::new()).unwrap();
        assert_eq!(v.contents(), vec![("a".into(), 3000), ("b".into(), 0)]);
        assert_eq!(read_back(v), bytes);
    }

    #[test]
    fn seekable_input_is_rewound_to_where_it_stood() {
        let mut bytes = b"junk".to_vec();
        bytes.extend(stream());
        let mut cursor = Cursor::new(bytes.clone());
        cursor.seek(SeekFrom::Start(4)).unwrap();
        let v = seekable(cursor, None, Limits::default(), &Keep::new()).unwrap();
        assert_eq!(read_back(v), bytes[4..]);
    }

    #[test]
    fn a_bad_stream_fails_the_first_pass() {
        let mut bytes = stream();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            spooled(&bytes[..], None, Limits::default(), &Keep::new()),
            Err(Error::Stream(_))
        ));
        assert!(matches!(
            seekable(Cursor::new(bytes), None, Limits::default(), &Keep::new()),
            Err(Error::Stream(_))
        ));
    }

    #[test]
    fn states_of_plain_helpers_are_kept() {
        let bytes = stream();
        let keep: Keep = ["a".to_string()].into();
        let v = seekable(Cursor::new(bytes), None, Limits::default(), &keep).unwrap();
        let Verified::Native { kept, .. } = v else {
            panic!("expected native")
        };
        assert_eq!(kept.len(), 1);
        assert_eq!(kept["a"], vec![1; 3000]);
    }

    #[test]
    fn qemu_payloads_are_decoded() {
        let mut bytes = Vec::new();
        qemu::write(&mut bytes, &[Record::new("a", b"x".to_vec())]).unwrap();
        let v = spooled(&bytes[..], None, Limits::default(), &Keep::new()).unwrap();
        assert_eq!(v.format(), Format::Qemu);
        assert_eq!(v.contents(), vec![("a".into(), 1)]);
    }
}
