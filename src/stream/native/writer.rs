//! The streaming native writer.

use std::collections::HashSet;
use std::io::Write;

use super::{
    encode_header, u32_u64, u64_u32, Kind, RecordHeader, CHUNK_BYTES, HEADER_BYTES,
    RECORD_CRC_BYTES, RECORD_HEADER_BYTES, STREAM_END_HELPER,
};
use crate::stream::{len_u64, u32_len, validate_id, Error};

/// Writes a native stream record by record, without knowing sizes in
/// advance.
///
/// [`Writer::begin`] opens a helper's blob and returns its index,
/// [`Writer::write_chunk`] appends bytes to any open blob (so blobs of
/// several helpers can be written as their data arrives),
/// [`Writer::end`] closes one, and [`Writer::finish`] closes the stream.
///
/// Each record takes three writes (header, payload, CRC) and chunk
/// payloads are written straight from the caller's slice; wrap unbuffered
/// files or sockets in a [`std::io::BufWriter`]. After an I/O error the
/// stream is incomplete and every further call returns
/// [`Error::Poisoned`]; errors about the caller's arguments write nothing
/// and leave the writer usable.
#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    bytes_written: u64,
    helpers: Vec<Helper>,
    ids: HashSet<String>,
    total_bytes: u64,
    poisoned: bool,
}

/// A helper's blob as written so far.
#[derive(Debug)]
struct Helper {
    id: String,
    open: bool,
    bytes: u64,
    crc: u32,
}

impl<W: Write> Writer<W> {
    /// Starts a stream on `w` by writing the stream header.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails.
    pub fn new(mut w: W) -> Result<Self, Error> {
        w.write_all(&encode_header())?;
        Ok(Writer {
            w,
            bytes_written: len_u64(HEADER_BYTES),
            helpers: Vec::new(),
            ids: HashSet::new(),
            total_bytes: 0,
            poisoned: false,
        })
    }

    /// Opens the blob of helper `id` and returns its helper index (0 for
    /// the first helper, then 1, 2, ...).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] or [`Error::DuplicateId`] (nothing is written),
    /// [`Error::Io`] if writing fails, [`Error::Poisoned`] after an earlier
    /// I/O error.
    pub fn begin(&mut self, id: &str) -> Result<u32, Error> {
        self.check_usable()?;
        validate_id(id)?;
        if self.ids.contains(id) {
            return Err(Error::DuplicateId { id: id.to_owned() });
        }
        let index = u32::try_from(self.helpers.len())
            .ok()
            .filter(|&i| i != STREAM_END_HELPER)
            .ok_or(Error::TooManyHelpers {
                found: len_u64(self.helpers.len()).saturating_add(1),
                limit: u64::from(STREAM_END_HELPER),
            })?;
        self.record(Kind::Begin, index, id.as_bytes())?;
        self.ids.insert(id.to_owned());
        self.helpers.push(Helper {
            id: id.to_owned(),
            open: true,
            bytes: 0,
            crc: 0,
        });
        Ok(index)
    }

    /// Appends `data` to the open blob of `helper`, as `CHUNK` records of
    /// at most [`CHUNK_BYTES`]. Empty `data` writes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotOpen`] if `helper` was not begun or is already ended
    /// (nothing is written), [`Error::Io`] if writing fails,
    /// [`Error::Poisoned`] after an earlier I/O error.
    pub fn write_chunk(&mut self, helper: u32, data: &[u8]) -> Result<(), Error> {
        self.check_usable()?;
        self.open_helper(helper)?;
        for chunk in data.chunks(CHUNK_BYTES) {
            self.record(Kind::Chunk, helper, chunk)?;
            let len = len_u64(chunk.len());
            let h = self.open_helper(helper)?;
            h.bytes = h.bytes.saturating_add(len);
            h.crc = crc32c::crc32c_append(h.crc, chunk);
            self.total_bytes = self.total_bytes.saturating_add(len);
        }
        Ok(())
    }

    /// Closes the blob of `helper` with an `END` record carrying its length
    /// and CRC-32C.
    ///
    /// # Errors
    ///
    /// [`Error::NotOpen`] if `helper` was not begun or is already ended,
    /// [`Error::Io`] if writing fails, [`Error::Poisoned`] after an
    /// earlier I/O error.
    pub fn end(&mut self, helper: u32) -> Result<(), Error> {
        self.check_usable()?;
        let h = self.open_helper(helper)?;
        let payload = u64_u32(h.bytes, h.crc);
        self.record(Kind::End, helper, &payload)?;
        self.open_helper(helper)?.open = false;
        Ok(())
    }

    /// Writes one helper's whole blob: [`begin`](Self::begin),
    /// [`write_chunk`](Self::write_chunk), [`end`](Self::end).
    ///
    /// # Errors
    ///
    /// As those three.
    pub fn write_blob(&mut self, id: &str, data: &[u8]) -> Result<(), Error> {
        let helper = self.begin(id)?;
        self.write_chunk(helper, data)?;
        self.end(helper)
    }

    /// Closes the stream with a `STREAM_END` record, flushes and returns
    /// the inner writer.
    ///
    /// # Errors
    ///
    /// [`Error::StillOpen`] naming a helper whose blob was not ended
    /// (nothing is written), [`Error::Io`] if writing or flushing fails,
    /// [`Error::Poisoned`] after an earlier I/O error.
    pub fn finish(mut self) -> Result<W, Error> {
        self.check_usable()?;
        if let Some(h) = self.helpers.iter().find(|h| h.open) {
            return Err(Error::StillOpen { id: h.id.clone() });
        }
        // `begin` keeps the count below STREAM_END_HELPER.
        let count = u32::try_from(self.helpers.len()).unwrap_or(u32::MAX);
        let payload = u32_u64(count, self.total_bytes);
        self.record(Kind::StreamEnd, STREAM_END_HELPER, &payload)?;
        self.w.flush()?;
        Ok(self.w)
    }

    /// Bytes written to the inner writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn open_helper(&mut self, helper: u32) -> Result<&mut Helper, Error> {
        self.helpers
            .get_mut(helper as usize)
            .filter(|h| h.open)
            .ok_or(Error::NotOpen { helper })
    }

    /// Writes one record: header, payload, CRC of both. Payloads are at
    /// most [`CHUNK_BYTES`] long here.
    fn record(&mut self, kind: Kind, helper: u32, payload: &[u8]) -> Result<(), Error> {
        let len = u32_len(payload.len(), "record payload")?;
        let header = RecordHeader::new(kind, helper, len).encode();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), payload);
        let result = self
            .w
            .write_all(&header)
            .and_then(|()| self.w.write_all(payload))
            .and_then(|()| self.w.write_all(&crc.to_le_bytes()));
        if let Err(e) = result {
            self.poisoned = true;
            return Err(e.into());
        }
        self.bytes_written +=
            len_u64(RECORD_HEADER_BYTES + RECORD_CRC_BYTES).saturating_add(u64::from(len));
        Ok(())
    }
}
