//! The streaming native writer.

use std::collections::{HashSet, VecDeque};
use std::io::Write;

use super::packer::{self, Packer};
use super::v2::{Compressor, Features, KeyBlock, Sealer, ENCODING_RAW, ENCODING_ZSTD, TAG_BYTES};
use super::{
    encode_header, u32_u64, u64_u32, Kind, RecordHeader, WriteOptions, CHUNK_BYTES,
    END_PAYLOAD_BYTES, HEADER_BYTES, RECORD_CRC_BYTES, RECORD_HEADER_BYTES, STREAM_END_HELPER,
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
///
/// [`Writer::with_options`] writes version 2 when compression or a key is
/// asked for: each chunk is compressed (and stored raw when that does not
/// make it shorter), and every record's payload is encrypted with its
/// position.
///
/// A compressing writer compresses on worker threads (one per core, or
/// [`WriteOptions::compress_threads`]): [`write_chunk`](Self::write_chunk)
/// copies each chunk to a worker and returns, and records are written in
/// the order they were asked for as their chunks come back. At most two
/// chunks per worker are out at once. An I/O error is then reported by a
/// later call, at the latest by [`finish`](Self::finish); the stream is
/// the same byte for byte whatever the number of workers.
#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    features: Features,
    /// Compresses, or with a packer tells which chunks to compress, on
    /// this thread.
    compressor: Option<Compressor>,
    /// Compresses on worker threads.
    packer: Option<Packer>,
    /// Records not yet written, in order, while chunks are out with the
    /// packer's workers.
    pending: VecDeque<Pending>,
    sealer: Option<Sealer>,
    /// The number of the next record (its nonce).
    record_no: u64,
    /// A compressed chunk, then its stored form; reused.
    packed: Vec<u8>,
    /// A payload being sealed; reused.
    sealing: Vec<u8>,
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

/// A record waiting for the chunks before it.
#[derive(Debug)]
enum Pending {
    /// A record with a raw payload.
    Record {
        kind: Kind,
        helper: u32,
        payload: Vec<u8>,
    },
    /// The chunk of the oldest job out with the packer.
    Chunk { helper: u32 },
}

impl<W: Write> Writer<W> {
    /// Starts a version 1 stream on `w` by writing the stream header.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails.
    pub fn new(w: W) -> Result<Self, Error> {
        Writer::with_options(w, &WriteOptions::default())
    }

    /// Starts a stream encoded as `options` asks by writing its header
    /// (and, with a key, its key block with a fresh random salt).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails (or zstd, the compression threads
    /// or the random number generator cannot start).
    pub fn with_options(mut w: W, options: &WriteOptions) -> Result<Self, Error> {
        let features = options.features();
        let header = encode_header(features);
        let mut bytes_written = len_u64(HEADER_BYTES);
        let sealer = match &options.key {
            Some(key) => {
                let block = KeyBlock::new(key)?.encode();
                w.write_all(&header)?;
                w.write_all(&block)?;
                bytes_written += len_u64(block.len());
                Some(Sealer::new(key, &header, &block))
            }
            None => {
                w.write_all(&header)?;
                None
            }
        };
        let threads = packer::threads(options.compress_threads);
        let (compressor, packer) = match (options.compress, threads) {
            (false, _) => (None, None),
            (true, 1) => (Some(Compressor::new()?), None),
            (true, n) => (Some(Compressor::new()?), Some(Packer::new(n)?)),
        };
        Ok(Writer {
            w,
            features,
            compressor,
            packer,
            pending: VecDeque::new(),
            sealer,
            record_no: 0,
            packed: Vec::new(),
            sealing: Vec::new(),
            bytes_written,
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
            if self.packer.is_some() {
                self.submit(helper, chunk)?;
            } else {
                self.chunk_record(helper, chunk)?;
            }
            let len = len_u64(chunk.len());
            let h = self.open_helper(helper)?;
            h.bytes = h.bytes.saturating_add(len);
            h.crc = crc32c::crc32c_append(h.crc, chunk);
            self.total_bytes = self.total_bytes.saturating_add(len);
        }
        // Whatever came back meanwhile goes out now.
        self.write_pending(false)
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
        self.write_pending(true)?;
        self.w.flush()?;
        Ok(self.w)
    }

    /// Bytes written to the inner writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Writes every record still waiting for its chunk to come back from
    /// a compression thread ([`finish`](Self::finish) does it too).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if writing fails or a compression thread stopped,
    /// [`Error::Poisoned`] after an earlier I/O error.
    pub fn flush_pending(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        self.write_pending(true)
    }

    /// What the stream will measure once [`finish`](Self::finish)ed:
    /// [`bytes_written`](Self::bytes_written) and the `STREAM_END` record.
    /// Exact when no record is pending (after
    /// [`flush_pending`](Self::flush_pending), or always without
    /// compression threads).
    pub fn finished_size(&self) -> u64 {
        let tag = if self.sealer.is_some() { TAG_BYTES } else { 0 };
        self.bytes_written
            + len_u64(RECORD_HEADER_BYTES + END_PAYLOAD_BYTES + tag + RECORD_CRC_BYTES)
    }

    /// The features of the stream being written.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    /// The inner writer, mutably: writing into it directly corrupts the
    /// stream, but a consumer may take out what was written (a `Vec`
    /// drained as the stream goes on).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
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

    /// Hands one chunk to the packer, once fewer than its limit are out;
    /// one not worth compressing is written raw (or queued).
    fn submit(&mut self, helper: u32, chunk: &[u8]) -> Result<(), Error> {
        if let Some(compressor) = self.compressor.as_mut() {
            if !compressor.promising(chunk, &mut self.packed) {
                return self.record(Kind::Chunk, helper, chunk);
            }
        }
        while self
            .packer
            .as_ref()
            .is_some_and(|p| p.in_flight() >= p.limit())
        {
            self.write_next(true)?;
        }
        if let Some(packer) = self.packer.as_mut() {
            if let Err(e) = packer.submit(chunk) {
                self.poisoned = true;
                return Err(e);
            }
        }
        self.pending.push_back(Pending::Chunk { helper });
        Ok(())
    }

    /// Writes pending records in order while they are ready; with `wait`,
    /// waits for their chunks until none is left.
    fn write_pending(&mut self, wait: bool) -> Result<(), Error> {
        while self.write_next(wait)? {}
        Ok(())
    }

    /// Writes the oldest pending record if it is ready (or, with `wait`,
    /// once it is); returns whether it wrote one.
    fn write_next(&mut self, wait: bool) -> Result<bool, Error> {
        let helper = match self.pending.front() {
            None => return Ok(false),
            Some(Pending::Chunk { helper }) => *helper,
            Some(Pending::Record { .. }) => {
                if let Some(Pending::Record {
                    kind,
                    helper,
                    payload,
                }) = self.pending.pop_front()
                {
                    self.record_encoded(kind, ENCODING_RAW, helper, &payload)?;
                }
                return Ok(true);
            }
        };
        let Some(packer) = self.packer.as_mut() else {
            return Ok(false);
        };
        let job = match packer.take(wait) {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(false),
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        self.pending.pop_front();
        let written = match job.packed {
            Some(n) => self.record_encoded(Kind::Chunk, ENCODING_ZSTD, helper, &job.out[..n]),
            None => self.record_encoded(Kind::Chunk, ENCODING_RAW, helper, &job.data),
        };
        if let Some(packer) = self.packer.as_mut() {
            packer.recycle(job);
        }
        written.map(|()| true)
    }

    /// Writes one `CHUNK` record, compressed when asked for and shorter.
    fn chunk_record(&mut self, helper: u32, chunk: &[u8]) -> Result<(), Error> {
        let Some(compressor) = self.compressor.as_mut() else {
            return self.record(Kind::Chunk, helper, chunk);
        };
        let packed = if compressor.promising(chunk, &mut self.packed) {
            compressor.compress(chunk, &mut self.packed)
        } else {
            None
        };
        match packed {
            Some(n) => {
                let packed = std::mem::take(&mut self.packed);
                let written = self.record_encoded(Kind::Chunk, ENCODING_ZSTD, helper, &packed[..n]);
                self.packed = packed;
                written
            }
            None => self.record(Kind::Chunk, helper, chunk),
        }
    }

    /// Writes one record with its payload stored as is, or queues it
    /// behind the pending ones.
    fn record(&mut self, kind: Kind, helper: u32, payload: &[u8]) -> Result<(), Error> {
        if self.pending.is_empty() {
            return self.record_encoded(kind, ENCODING_RAW, helper, payload);
        }
        self.pending.push_back(Pending::Record {
            kind,
            helper,
            payload: payload.to_vec(),
        });
        Ok(())
    }

    /// Writes one record: header, payload (sealed in an encrypted
    /// stream, then followed by its tag), CRC of all of it. Payloads are
    /// at most [`CHUNK_BYTES`] long here.
    fn record_encoded(
        &mut self,
        kind: Kind,
        encoding: u8,
        helper: u32,
        payload: &[u8],
    ) -> Result<(), Error> {
        let Some(sealer) = &self.sealer else {
            let mut header =
                RecordHeader::new(kind, helper, u32_len(payload.len(), "record payload")?);
            header.encoding = encoding;
            return self.write_record(header.encode(), payload);
        };
        let stored_len = u32_len(payload.len() + TAG_BYTES, "record payload")?;
        let mut header = RecordHeader::new(kind, helper, stored_len);
        header.encoding = encoding;
        let header = header.encode();
        let mut sealing = std::mem::take(&mut self.sealing);
        sealing.clear();
        sealing.extend_from_slice(payload);
        let tag = sealer.seal(self.record_no, &header, &mut sealing);
        sealing.extend_from_slice(&tag);
        let written = self.write_record(header, &sealing);
        self.sealing = sealing;
        written
    }

    /// Writes an encoded record header, its stored payload and the CRC of
    /// both, and counts the record.
    fn write_record(
        &mut self,
        header: [u8; RECORD_HEADER_BYTES],
        stored: &[u8],
    ) -> Result<(), Error> {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), stored);
        let result = self
            .w
            .write_all(&header)
            .and_then(|()| self.w.write_all(stored))
            .and_then(|()| self.w.write_all(&crc.to_le_bytes()));
        if let Err(e) = result {
            self.poisoned = true;
            return Err(e.into());
        }
        self.record_no += 1;
        self.bytes_written +=
            len_u64(RECORD_HEADER_BYTES + RECORD_CRC_BYTES).saturating_add(len_u64(stored.len()));
        Ok(())
    }
}
