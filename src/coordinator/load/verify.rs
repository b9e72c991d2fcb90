//! Preparing a load from an input read only once (a pipe, a socket, a
//! FIFO): detect the format, and verify a native stream while copying it
//! to a spool, because only its `END` records tell the sizes that
//! `LoadFd` needs before the first byte ([the
//! rule](crate::coordinator#loading)). The spool is [`SPOOL_MEMORY_BYTES`]
//! in memory, then an unlinked temporary file; the verifying pass
//! ([`super::dispatch`]) then streams from it. The first unknown Id fails
//! the load where it is read.

use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom, Write};

use super::index::Known;
use crate::error::Error;
use crate::stream::{self, native, qemu, Format, Limits, Record};

/// How much of a non-seekable native stream is spooled in memory before
/// the spool moves to a temporary file.
pub(crate) const SPOOL_MEMORY_BYTES: usize = 8 << 20;

/// Read buffer of the verifying pass over a spool: small, so that a chunk's
/// payload is mostly read straight into the stream reader's buffer.
const SPOOL_READ_BUFFER_BYTES: usize = 64 << 10;

/// Each helper's Id and state size, in stream order: what a load
/// announces to the helpers before the verifying pass.
pub(crate) type Contents = Vec<(String, u64)>;

/// A stream ready for its verifying pass.
pub(crate) enum Verified {
    /// A QEMU payload, decoded and verified.
    Records(Vec<Record>),
    /// A native stream: the input at the stream's start, and each
    /// helper's Id and state size in stream order.
    Native {
        input: Box<dyn Read + Send>,
        contents: Contents,
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
    pub(crate) fn contents(&self) -> Contents {
        match self {
            Verified::Records(records) => records
                .iter()
                .map(|r| (r.id.clone(), r.data.len() as u64))
                .collect(),
            Verified::Native { contents, .. } => contents.clone(),
        }
    }
}

pub(crate) fn read_error(e: stream::Error) -> Error {
    match e {
        stream::Error::Io(source) => match super::decoded::carried(source) {
            Ok(carried) => Error::Stream(carried),
            Err(source) => Error::Io {
                what: "cannot read the state stream",
                path: None,
                source,
            },
        },
        other => Error::Stream(other),
    }
}

pub(crate) fn io_error(source: io::Error) -> Error {
    Error::Io {
        what: "cannot read the state stream",
        path: None,
        source,
    }
}

/// Reads the first bytes and settles the format.
pub(crate) fn format_of(prefix: &[u8], format: Option<Format>) -> Result<Format, Error> {
    match format {
        Some(f) => Ok(f),
        None => Format::recognize(prefix).map_err(Error::Stream),
    }
}

pub(crate) fn read_prefix<R: Read>(input: &mut R) -> Result<Vec<u8>, Error> {
    let mut prefix = Vec::with_capacity(native::MAGIC.len());
    input
        .take(native::MAGIC.len() as u64)
        .read_to_end(&mut prefix)
        .map_err(io_error)?;
    Ok(prefix)
}

pub(crate) fn decode_qemu<R: Read>(input: R, limits: Limits) -> Result<Verified, Error> {
    let decoded = qemu::read(input, limits).map_err(read_error)?;
    if decoded.trailing_bytes > 0 {
        tracing::debug!(
            bytes = decoded.trailing_bytes,
            "ignored trailing bytes after the QEMU payload's entries"
        );
    }
    Ok(Verified::Records(decoded.records))
}

/// Verifies a whole native stream; stops at the first Id not `known`.
fn first_pass<R: Read>(input: R, limits: Limits, known: &Known) -> Result<native::Summary, Error> {
    let mut reader = native::Reader::new(input, limits).map_err(read_error)?;
    while let Some(event) = reader.next_event().map_err(read_error)? {
        if let native::Event::Begin { id, .. } = event {
            if !known.contains(id) {
                return Err(Error::UnknownInStream { id: id.to_string() });
            }
        }
    }
    Ok(reader.summary())
}

/// An input read only once, its format settled.
pub(crate) enum Opened {
    /// A QEMU payload, decoded and verified.
    Qemu(Verified),
    /// A native stream, from its start.
    Native(Box<dyn Read + Send>),
}

/// Reads the first bytes of an input read only once: a QEMU payload is
/// decoded, a native stream handed back to be read from its start.
pub(crate) fn open<R: Read + Send + 'static>(
    mut input: R,
    format: Option<Format>,
    limits: Limits,
) -> Result<Opened, Error> {
    let prefix = read_prefix(&mut input)?;
    let format = format_of(&prefix, format)?;
    let input = Cursor::new(prefix).chain(input);
    match format {
        Format::Qemu => decode_qemu(input, limits).map(Opened::Qemu),
        Format::Native => Ok(Opened::Native(Box::new(input))),
    }
}

/// First pass over an input read only once: a native stream is spooled.
#[cfg(test)]
fn spooled<R: Read + Send + 'static>(
    input: R,
    format: Option<Format>,
    limits: Limits,
    known: &Known,
) -> Result<Verified, Error> {
    match open(input, format, limits)? {
        Opened::Qemu(verified) => Ok(verified),
        Opened::Native(input) => spool(input, limits, known),
    }
}

/// Verifies a native stream read only once while copying it to a spool,
/// and hands the spool back for the verifying pass.
pub(crate) fn spool<R: Read>(input: R, limits: Limits, known: &Known) -> Result<Verified, Error> {
    let mut spool = tempfile::spooled_tempfile(SPOOL_MEMORY_BYTES);
    let mut tee = Tee {
        input,
        spool: &mut spool,
        spool_error: None,
    };
    let passed = first_pass(&mut tee, limits, known);
    if let Some(source) = tee.spool_error.take() {
        return Err(spool_error(source));
    }
    let summary = passed?;
    spool.seek(SeekFrom::Start(0)).map_err(spool_error)?;
    let contents = summary
        .helpers
        .into_iter()
        .map(|h| (h.id, h.bytes))
        .collect();
    Ok(Verified::Native {
        input: Box::new(BufReader::with_capacity(SPOOL_READ_BUFFER_BYTES, spool)),
        contents,
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

    fn known() -> Known {
        ["a", "b"].iter().map(|s| s.to_string()).collect()
    }

    fn spool_bytes(bytes: &[u8]) -> Result<Verified, Error> {
        spooled(
            Cursor::new(bytes.to_vec()),
            None,
            Limits::default(),
            &known(),
        )
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
        let v = spool_bytes(&bytes).unwrap();
        assert_eq!(v.contents(), vec![("a".into(), 3000), ("b".into(), 0)]);
        assert_eq!(read_back(v), bytes);
    }

    #[test]
    fn a_bad_stream_fails_the_first_pass() {
        let mut bytes = stream();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(spool_bytes(&bytes), Err(Error::Stream(_))));
    }

    #[test]
    fn an_unknown_id_fails_where_it_is_read() {
        let mut bytes = native::encode(&[Record::new("zz", vec![1])]).unwrap();
        // Cut after the unknown BEGIN: nothing after it is needed.
        bytes.truncate(native::HEADER_BYTES + 18);
        let err = spool_bytes(&bytes).err().unwrap();
        assert!(
            matches!(&err, Error::UnknownInStream { id } if id == "zz"),
            "{err}"
        );
    }

    #[test]
    fn qemu_payloads_are_decoded() {
        let mut bytes = Vec::new();
        qemu::write(&mut bytes, &[Record::new("a", b"x".to_vec())]).unwrap();
        let v = spool_bytes(&bytes).unwrap();
        assert_eq!(v.format(), Format::Qemu);
        assert_eq!(v.contents(), vec![("a".into(), 1)]);
    }
}
