//! Version 2 streams on their way into a load, decoded (authenticated,
//! decrypted, decompressed) by the records' reader. The live pass takes
//! the decoded records from it as events ([`NativeInput::into_reader`]);
//! the spooling pass, which reads bytes, gets the version 1 stream of the
//! same records ([`NativeInput::into_v1`]). A failure of the reader there
//! travels inside the [`std::io::Error`] of the read that met it and comes
//! out as that stream error ([`carried`]).
//!
//! A version 2 stream is read once, so it is loaded live (or spooled):
//! the hold-back rule is the load's, unchanged, and nothing of a record
//! reaches a helper before the record authenticated.

use std::io::{self, Cursor, Read, Seek, SeekFrom};

use crate::error::Error;
use crate::stream::{
    self,
    native::{self, Event, ReadOptions, Reader, Writer},
    Limits,
};

/// What the first bytes of a native stream say it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Version 1, read as it is.
    Nothing,
    /// Version 2: decoded first.
    Decoding,
}

/// Reads enough of `header` (the first bytes of a native stream) to tell
/// its version.
fn needs(header: &[u8]) -> Needs {
    let version = header
        .get(8..12)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if version == 2 {
        Needs::Decoding
    } else {
        Needs::Nothing
    }
}

/// Whether a seekable native stream needs decoding; its position is kept.
pub(crate) fn seekable_needs<R: Read + Seek>(input: &mut R) -> io::Result<Needs> {
    let start = input.stream_position()?;
    let mut header = Vec::with_capacity(native::HEADER_BYTES);
    input
        .by_ref()
        .take(native::HEADER_BYTES as u64)
        .read_to_end(&mut header)?;
    input.seek(SeekFrom::Start(start))?;
    Ok(needs(&header))
}

/// A native stream opened for a load.
pub(crate) enum NativeInput {
    /// Version 1, from its start, read as it is.
    Raw(Box<dyn Read + Send>),
    /// Version 2, its header (and key block) read and checked.
    Decoding(Box<Reader<Box<dyn Read + Send>>>),
}

/// Opens the native stream `input` for a load: a version 2 stream's
/// header and key block are checked against `options` at once, a version
/// 1 stream is refused if a key was given without allowing unencrypted
/// streams.
///
/// # Errors
///
/// [`Error::Stream`] with [`stream::Error::NotEncrypted`], or what the
/// version 2 header and key block fail with; [`Error::Io`].
pub(crate) fn native_input(
    mut input: Box<dyn Read + Send>,
    limits: Limits,
    options: &ReadOptions,
) -> Result<NativeInput, Error> {
    let mut header = Vec::with_capacity(native::HEADER_BYTES);
    input
        .by_ref()
        .take(native::HEADER_BYTES as u64)
        .read_to_end(&mut header)
        .map_err(super::verify::io_error)?;
    let input = Box::new(Cursor::new(header.clone()).chain(input));
    match needs(&header) {
        Needs::Decoding => Reader::with_options(input as Box<dyn Read + Send>, limits, options)
            .map(|reader| NativeInput::Decoding(Box::new(reader)))
            .map_err(Error::Stream),
        Needs::Nothing => {
            refuse_unencrypted(options)?;
            Ok(NativeInput::Raw(input))
        }
    }
}

impl NativeInput {
    /// The stream's reader, for the live pass, which takes its records
    /// as events: a version 2 stream's are decoded by it.
    ///
    /// # Errors
    ///
    /// What a version 1 header fails with.
    pub(crate) fn into_reader(self, limits: Limits) -> Result<Reader<Box<dyn Read + Send>>, Error> {
        match self {
            NativeInput::Raw(input) => {
                Reader::new(input, limits).map_err(super::verify::read_error)
            }
            NativeInput::Decoding(reader) => Ok(*reader),
        }
    }

    /// The stream as version 1 bytes, for the spooling pass, which reads
    /// bytes: a version 2 stream decoded record by record.
    ///
    /// # Errors
    ///
    /// [`Error::Stream`] when the version 1 writer cannot start.
    pub(crate) fn into_v1(self) -> Result<Box<dyn Read + Send>, Error> {
        match self {
            NativeInput::Raw(input) => Ok(input),
            NativeInput::Decoding(reader) => Ok(Box::new(Decoded {
                reader: *reader,
                writer: Some(Writer::new(Vec::new()).map_err(Error::Stream)?),
                out: Vec::new(),
                at: 0,
            })),
        }
    }
}

/// A key without leave to read unencrypted streams refuses this one.
///
/// # Errors
///
/// [`stream::Error::NotEncrypted`].
pub(crate) fn refuse_unencrypted(options: &ReadOptions) -> Result<(), Error> {
    if options.key.is_some() && !options.allow_unencrypted {
        return Err(Error::Stream(stream::Error::NotEncrypted));
    }
    Ok(())
}

/// A version 2 stream read as the version 1 stream of its records.
struct Decoded {
    reader: Reader<Box<dyn Read + Send>>,
    /// `None` once finished.
    writer: Option<Writer<Vec<u8>>>,
    /// Version 1 bytes not yet read, from `at`.
    out: Vec<u8>,
    at: usize,
}

impl Decoded {
    /// Decodes the next record into `out`; false at the end.
    fn refill(&mut self) -> Result<bool, stream::Error> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(false);
        };
        match self.reader.next_event()? {
            Some(Event::Begin { id, .. }) => drop(writer.begin(id)?),
            Some(Event::Chunk { helper, data }) => writer.write_chunk(helper, data)?,
            Some(Event::End { helper, .. }) => writer.end(helper)?,
            None => {
                let writer = self.writer.take().expect("checked above");
                self.out = writer.finish()?;
                self.at = 0;
                return Ok(true);
            }
        }
        let writer = self.writer.as_mut().expect("checked above");
        std::mem::swap(&mut self.out, writer.get_mut());
        writer.get_mut().clear();
        self.at = 0;
        Ok(true)
    }
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.out.len() {
            self.out.clear();
            self.at = 0;
            if !self.refill().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The stream error that a read of a decoded stream carried, or `e`
/// itself when it carries none.
pub(crate) fn carried(e: io::Error) -> Result<stream::Error, io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<stream::Error>()) {
        return Err(e);
    }
    match e
        .into_inner()
        .map(|inner| inner.downcast::<stream::Error>())
    {
        Some(Ok(inner)) => Ok(*inner),
        // Checked above: the error carries a stream error.
        _ => Err(io::Error::other(
            "a stream error that could not be recovered",
        )),
    }
}
