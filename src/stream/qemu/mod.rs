//! The payload of QEMU's `dbus-vmstate` migration section.
//!
//! QEMU's `dbus-vmstate` object (backends/dbus-vmstate.c) saves all helpers
//! into one section whose payload is, in big-endian `u32`s:
//!
//! | field      | size        | meaning                              |
//! |------------|-------------|--------------------------------------|
//! | `nelem`    | 4           | number of entries                    |
//! | `id_len`   | 4           | per entry: Id length, 1 to 255       |
//! | `id`       | `id_len`    | the helper's Id, no terminator       |
//! | `data_len` | 4           | blob length, at most 1 MiB           |
//! | `data`     | `data_len`  | the helper's blob                    |
//!
//! Real QEMU appends zero padding after the entries (it sends the size of
//! its growable buffer, not the bytes it wrote) and its loader ignores
//! whatever follows the entries, so [`read`] accepts and counts any
//! trailing bytes. [`write()`] emits the canonical form without padding,
//! which QEMU 7.2 loads. The payload has no magic, version or checksum:
//! it can only be recognised by its structure.
//!
//! [`migration`] finds this payload inside a whole QEMU migration stream
//! and puts another one in its place.
//!
//! ```
//! use dbus_vmstate::stream::{qemu, Limits, Record};
//!
//! let records = vec![Record::new("idA", b"I'am\0idA!\0".to_vec())];
//! let mut bytes = qemu::encode(&records)?;
//! bytes.extend_from_slice(&[0; 18]); // padding, as QEMU writes it
//! let decoded = qemu::decode(&bytes, Limits::default())?;
//! assert_eq!(decoded.records, records);
//! assert_eq!(decoded.trailing_bytes, 18);
//! # Ok::<(), dbus_vmstate::stream::Error>(())
//! ```

use std::collections::HashSet;
use std::io::{Read, Write};

pub mod migration;

use super::{id_from_bytes, len_u64, read_full, validate_id, Error, Limits, Record, MAX_ID_BYTES};

/// Largest blob QEMU accepts for one helper: 1 MiB.
pub const MAX_QEMU_BLOB_BYTES: usize = 1 << 20;

/// Size of the stack buffer trailing bytes are discarded through.
const DISCARD_BUF_BYTES: usize = 8 << 10;

/// A decoded QEMU payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The entries, in payload order.
    pub records: Vec<Record>,
    /// How many bytes followed the last entry (QEMU's padding).
    pub trailing_bytes: u64,
}

/// Reads a QEMU payload to the end of input.
///
/// Every length is checked before anything is allocated for it: `nelem`
/// against `limits.max_helpers`, `id_len` against 1..=255, `data_len`
/// against the smaller of [`MAX_QEMU_BLOB_BYTES`] and
/// `limits.max_blob_bytes`. Bytes after the last entry are read in a
/// fixed-size buffer, counted and dropped.
///
/// # Errors
///
/// [`Error::Truncated`] if the input ends inside an entry,
/// [`Error::TooManyHelpers`], [`Error::InvalidId`], [`Error::DuplicateId`],
/// [`Error::OverLimit`] naming the helper, [`Error::Io`].
pub fn read<R: Read>(r: R, limits: Limits) -> Result<Decoded, Error> {
    let mut src = Source { r, offset: 0 };
    let nelem = src.u32("helper count")?;
    if u64::from(nelem) > len_u64(limits.max_helpers) {
        return Err(Error::TooManyHelpers {
            found: u64::from(nelem),
            limit: len_u64(limits.max_helpers),
        });
    }
    let max_data = len_u64(MAX_QEMU_BLOB_BYTES).min(limits.max_blob_bytes);
    let mut records = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..nelem {
        let id_len = src.u32("id length")?;
        if id_len == 0 {
            return Err(Error::InvalidId { reason: "empty" });
        }
        if u64::from(id_len) > len_u64(MAX_ID_BYTES) {
            return Err(Error::InvalidId {
                reason: "longer than 255 bytes",
            });
        }
        let mut id_buf = [0u8; MAX_ID_BYTES];
        // id_len is at most MAX_ID_BYTES, checked above.
        let id_bytes = &mut id_buf[..id_len as usize];
        src.exact(id_bytes, "id")?;
        let id = id_from_bytes(id_bytes)?.to_owned();
        if !ids.insert(id.clone()) {
            return Err(Error::DuplicateId { id });
        }
        let data_len = u64::from(src.u32("data length")?);
        if data_len > max_data {
            return Err(Error::OverLimit {
                what: "helper state",
                found: data_len,
                limit: max_data,
                id: Some(id),
            });
        }
        let data = src.blob(data_len)?;
        records.push(Record { id, data });
    }
    let trailing_bytes = src.discard_rest()?;
    Ok(Decoded {
        records,
        trailing_bytes,
    })
}

/// Decodes a QEMU payload held in memory; see [`read`].
///
/// # Errors
///
/// As [`read`], without I/O errors.
pub fn decode(bytes: &[u8], limits: Limits) -> Result<Decoded, Error> {
    read(bytes, limits)
}

/// Checks that QEMU can load `records`: valid, distinct Ids and blobs of
/// at most [`MAX_QEMU_BLOB_BYTES`].
///
/// # Errors
///
/// [`Error::InvalidId`], [`Error::DuplicateId`], or
/// [`Error::OverLimit`] (what: `"helper state for QEMU"`) naming the first
/// helper whose blob QEMU would refuse.
pub fn check_for_qemu(records: &[Record]) -> Result<(), Error> {
    if u32::try_from(records.len()).is_err() {
        return Err(Error::TooManyHelpers {
            found: len_u64(records.len()),
            limit: u64::from(u32::MAX),
        });
    }
    let mut ids = HashSet::new();
    for record in records {
        validate_id(&record.id)?;
        if !ids.insert(record.id.as_str()) {
            return Err(Error::DuplicateId {
                id: record.id.clone(),
            });
        }
        if record.data.len() > MAX_QEMU_BLOB_BYTES {
            return Err(Error::OverLimit {
                what: "helper state for QEMU",
                found: len_u64(record.data.len()),
                limit: len_u64(MAX_QEMU_BLOB_BYTES),
                id: Some(record.id.clone()),
            });
        }
    }
    Ok(())
}

/// Writes `records` as a canonical QEMU payload (no padding) and flushes.
/// Every record is checked with [`check_for_qemu`] before anything is
/// written.
///
/// # Errors
///
/// As [`check_for_qemu`] (nothing written), [`Error::Io`].
pub fn write<W: Write>(mut w: W, records: &[Record]) -> Result<(), Error> {
    check_for_qemu(records)?;
    w.write_all(&be_len(records.len()))?;
    // id_len, id and data_len go out in one write, the blob in another.
    let mut head = [0u8; 4 + MAX_ID_BYTES + 4];
    for record in records {
        let id = record.id.as_bytes();
        let n = id.len();
        head[..4].copy_from_slice(&be_len(n));
        head[4..4 + n].copy_from_slice(id);
        head[4 + n..8 + n].copy_from_slice(&be_len(record.data.len()));
        w.write_all(&head[..8 + n])?;
        w.write_all(&record.data)?;
    }
    w.flush()?;
    Ok(())
}

/// Encodes `records` as a canonical QEMU payload in memory.
///
/// # Errors
///
/// As [`check_for_qemu`].
pub fn encode(records: &[Record]) -> Result<Vec<u8>, Error> {
    check_for_qemu(records)?;
    let size = records
        .iter()
        .fold(4, |acc: usize, r| acc + 8 + r.id.len() + r.data.len());
    let mut out = Vec::with_capacity(size);
    write(&mut out, records)?;
    Ok(out)
}

/// A length as QEMU's big-endian `u32`; callers have checked it fits.
fn be_len(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// The input with the offset of the next byte, for error messages.
struct Source<R> {
    r: R,
    offset: u64,
}

impl<R: Read> Source<R> {
    fn exact(&mut self, buf: &mut [u8], expected: &'static str) -> Result<(), Error> {
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

    fn u32(&mut self, expected: &'static str) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.exact(&mut b, expected)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Reads a blob whose length has been checked against the caps (at
    /// most [`MAX_QEMU_BLOB_BYTES`], so allocating it up front is bounded).
    fn blob(&mut self, len: u64) -> Result<Vec<u8>, Error> {
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.exact(&mut data, "helper state")?;
        Ok(data)
    }

    fn discard_rest(&mut self) -> Result<u64, Error> {
        let mut sink = [0u8; DISCARD_BUF_BYTES];
        let mut total = 0u64;
        loop {
            let got = read_full(&mut self.r, &mut sink)?;
            total = total.saturating_add(len_u64(got));
            if got < sink.len() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests;
