//! The state stream formats: how helper blobs are laid out in a file or on
//! a migration channel.
//!
//! A state stream carries one opaque blob per helper, each tagged with the
//! helper's Id. Two formats exist:
//!
//! - [`native`]: this crate's own format (magic, version, CRC-32C on every
//!   record, chunked so that blobs of any size stream through bounded
//!   memory). Specified in `protocol/stream-format.md`.
//! - [`qemu`]: the payload of QEMU's `dbus-vmstate` migration section, so
//!   state can be exchanged with a real QEMU. No magic, version or checksum.
//!
//! [`read_records`] tells the two apart by their first byte
//! ([`Format::detect`] states the rule). Everything here is pure: it reads
//! from [`std::io::Read`] and writes to [`std::io::Write`], with no
//! sockets, no async and no logging, so it can be tested and fuzzed alone.
//!
//! Decoders never trust a length before checking it against a cap
//! ([`Limits`], [`native::MAX_CHUNK_PAYLOAD_BYTES`],
//! [`qemu::MAX_QEMU_BLOB_BYTES`]), so hostile input costs at most the
//! memory its own bytes take plus one capped chunk.
//!
//! ```
//! use dbus_vmstate::stream::{self, native, Format, Limits, Record};
//!
//! let records = vec![Record::new("slirp", b"state".to_vec())];
//! let bytes = native::encode(&records)?;
//! assert_eq!(Format::detect(&bytes), Some(Format::Native));
//! let (format, back) = stream::read_records(&bytes[..], Limits::default())?;
//! assert_eq!((format, back), (Format::Native, records));
//! # Ok::<(), stream::Error>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

mod error;
pub mod key;
pub mod native;
pub mod qemu;

pub use error::{Error, ParseFormatError};
pub use key::{Key, KeyError, KeyId};

/// Longest helper Id in bytes (QEMU's limit). The shortest is 1 byte.
pub const MAX_ID_BYTES: usize = 255;

/// Default for [`Limits::max_blob_bytes`]: 1 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 1 << 30;

/// Default for [`Limits::max_helpers`].
pub const DEFAULT_MAX_HELPERS: usize = 1024;

/// One helper's state: its Id and its opaque blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The helper's Id (see [`validate_id`]).
    pub id: String,
    /// The helper's state, exactly as its `Save` returned it.
    pub data: Vec<u8>,
}

impl Record {
    /// Creates a record. The Id is checked only when the record is written.
    pub fn new(id: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Record {
            id: id.into(),
            data: data.into(),
        }
    }
}

/// Caps a decoder enforces on untrusted input, checked before allocating.
///
/// The defaults bound each blob to 1 GiB. A decoder that keeps blobs
/// ([`native::read_all`], [`qemu::read`]) holds them in memory, so callers
/// that buffer blobs should lower `max_blob_bytes` to what they can afford
/// (and to what their helpers can accept, e.g. the D-Bus message limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest blob accepted for one helper, in bytes.
    pub max_blob_bytes: u64,
    /// Largest number of helpers accepted in one stream.
    pub max_helpers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            max_helpers: DEFAULT_MAX_HELPERS,
        }
    }
}

/// Which stream format a byte sequence is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// This crate's format ([`native`]).
    Native,
    /// QEMU's `dbus-vmstate` section payload ([`qemu`]).
    Qemu,
}

impl Format {
    /// Tells the format from the first bytes of a stream, as [`Format::detect`]
    /// does.
    ///
    /// # Errors
    ///
    /// [`Error::Unrecognized`] when the bytes are no known format.
    pub fn recognize(prefix: &[u8]) -> Result<Format, Error> {
        Format::detect(prefix).ok_or(Error::Unrecognized { len: prefix.len() })
    }

    /// Guesses the format from the first bytes of a stream.
    ///
    /// The rule: a prefix that starts with [`native::MAGIC`] is
    /// [`Format::Native`]. A prefix of at least 4 bytes whose first byte is
    /// not the magic's first byte (`0x89`) is [`Format::Qemu`]: a QEMU
    /// payload starts with its helper count as a big-endian `u32`, so its
    /// first byte is `0x89` only for counts of 2.3 billion or more, which
    /// QEMU never writes. Anything else (too short to tell, or `0x89`
    /// followed by something other than the magic) is `None`.
    pub fn detect(prefix: &[u8]) -> Option<Format> {
        if prefix.starts_with(&native::MAGIC) {
            Some(Format::Native)
        } else if prefix.len() >= 4 && prefix[0] != native::MAGIC[0] {
            Some(Format::Qemu)
        } else {
            None
        }
    }

    /// The format's name: `"native"` or `"qemu"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Qemu => "qemu",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Format::Native),
            "qemu" => Ok(Format::Qemu),
            _ => Err(ParseFormatError { name: s.to_owned() }),
        }
    }
}

/// Checks that `id` can name a helper in a stream: 1 to [`MAX_ID_BYTES`]
/// bytes of UTF-8 with no NUL byte.
///
/// # Errors
///
/// [`Error::InvalidId`] saying which rule `id` breaks.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_ID_BYTES {
        "longer than 255 bytes"
    } else if id.as_bytes().contains(&0) {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId { reason })
}

/// Decodes and validates an Id read from a stream.
fn id_from_bytes(bytes: &[u8]) -> Result<&str, Error> {
    let id = std::str::from_utf8(bytes).map_err(|_| Error::InvalidId {
        reason: "not valid UTF-8",
    })?;
    validate_id(id)?;
    Ok(id)
}

/// Reads a whole stream in either format, telling them apart by the first
/// byte: `0x89` (the first byte of [`native::MAGIC`]) means native, anything
/// else QEMU (see [`Format::detect`]). For QEMU payloads, trailing bytes are
/// accepted and dropped as [`qemu::read`] describes.
///
/// # Errors
///
/// Whatever [`native::read_all`] or [`qemu::read`] returns for the format
/// the stream was taken for.
pub fn read_records<R: Read>(mut r: R, limits: Limits) -> Result<(Format, Vec<Record>), Error> {
    let mut first = [0u8; 1];
    let got = read_full(&mut r, &mut first)?;
    let prefix = io::Read::chain(&first[..got], r);
    if got == 1 && first[0] == native::MAGIC[0] {
        Ok((Format::Native, native::read_all(prefix, limits)?))
    } else {
        Ok((Format::Qemu, qemu::read(prefix, limits)?.records))
    }
}

/// Writes `records` in `format`: [`native::write`] or [`qemu::write`].
///
/// # Errors
///
/// Whatever the format's writer returns; the QEMU writer checks every
/// record against QEMU's limits before writing anything.
pub fn write_records<W: Write>(w: W, format: Format, records: &[Record]) -> Result<(), Error> {
    match format {
        Format::Native => native::write(w, records),
        Format::Qemu => qemu::write(w, records),
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A length as the `u32` a format stores it in.
///
/// # Errors
///
/// [`Error::OverLimit`] naming `what` when it does not fit.
fn u32_len(len: usize, what: &'static str) -> Result<u32, Error> {
    u32::try_from(len).map_err(|_| Error::OverLimit {
        what,
        found: len_u64(len),
        limit: u64::from(u32::MAX),
        id: None,
    })
}

/// Converts an in-memory length to the `u64` the formats count in.
fn len_u64(len: usize) -> u64 {
    // usize is at most 64 bits on every target Rust supports.
    u64::try_from(len).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
