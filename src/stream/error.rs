//! The error type of the stream formats.

use std::fmt;

use super::key::KeyId;

/// Errors of the stream encoders and decoders.
///
/// Every variant about one helper names it when the Id is known;
/// [`Error::helper_id`] returns it without a match, and [`Error::offset`]
/// returns the byte offset in the stream where the problem was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the underlying bytes failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),

    /// The input does not start with the native magic.
    #[error("not a native state stream: bad magic")]
    BadMagic,

    /// The input's first bytes are no known format (format detection).
    #[error("not a state stream: {}", if *.len == 0 { "the input is empty".to_string() } else { format!("its first {} bytes are neither the native magic nor a QEMU payload", .len) })]
    Unrecognized {
        /// How many bytes were looked at (0: the input is empty).
        len: usize,
    },

    /// The stream's format version is not one this reader knows.
    #[error(
        "unsupported stream format version {found} (this reader supports versions 1 to {supported})"
    )]
    UnsupportedVersion {
        /// The version in the stream header.
        found: u32,
        /// The newest version this reader supports.
        supported: u32,
    },

    /// The stream header's flags are not a set its version allows: none
    /// for version 1; for version 2, one or both of the known flags.
    #[error(
        "unsupported stream header flags {flags:#010x} (version 1 takes none; version 2 \
         COMPRESSED 0x1, ENCRYPTED 0x2 or both)"
    )]
    UnsupportedFlags {
        /// The flags in the stream header.
        flags: u32,
    },

    /// The input ended where more was expected.
    #[error("stream truncated at byte {offset}: expected {expected}")]
    Truncated {
        /// Where the input ended.
        offset: u64,
        /// What was expected there.
        expected: &'static str,
    },

    /// A checksum does not match the bytes it covers.
    #[error("{}checksum mismatch in {what} at byte {offset}", HelperPrefix(.id))]
    Checksum {
        /// Start of the record (or header) whose checksum failed.
        offset: u64,
        /// What the checksum covers: the stream header, a record, a blob.
        what: &'static str,
        /// The helper, when the failing checksum is a verified blob's.
        id: Option<String>,
    },

    /// A size in bytes is over a limit.
    #[error("{}{what} is too large: {found} bytes is over the limit of {limit} bytes", HelperPrefix(.id))]
    OverLimit {
        /// What is too large.
        what: &'static str,
        /// Its size in bytes (as far as known when the limit was hit).
        found: u64,
        /// The limit in bytes.
        limit: u64,
        /// The helper, when known.
        id: Option<String>,
    },

    /// A stream holds more helpers than allowed.
    #[error("too many helpers: {found} is over the limit of {limit}")]
    TooManyHelpers {
        /// How many helpers the stream holds (at least).
        found: u64,
        /// The limit.
        limit: u64,
    },

    /// A helper Id breaks the Id rules (see [`super::validate_id`]).
    #[error("invalid helper id: {reason}")]
    InvalidId {
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// Two helpers share one Id.
    #[error("helper {id:?}: duplicate helper id")]
    DuplicateId {
        /// The Id.
        id: String,
    },

    /// The stream is structurally wrong: unknown record kind, non-zero
    /// reserved field, a record for a helper that is not open, a blob
    /// length that does not match, ...
    #[error("{}corrupt stream at byte {offset}: {reason}", HelperPrefix(.id))]
    Corrupt {
        /// Start of the offending record.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// The helper, when known.
        id: Option<String>,
    },

    /// Bytes follow the end of a native stream.
    #[error("trailing data after the end of the stream at byte {offset}")]
    TrailingData {
        /// Where the extra bytes start.
        offset: u64,
    },

    /// The input is not a QEMU migration stream this reader knows.
    #[error("not a QEMU migration stream: {reason}")]
    NotMigration {
        /// What is wrong with its header.
        reason: &'static str,
    },

    /// A QEMU migration stream holds no `dbus-vmstate` section.
    #[error("no dbus-vmstate section in the QEMU migration stream")]
    NoSection,

    /// A QEMU migration stream holds two `dbus-vmstate` sections.
    #[error(
        "two dbus-vmstate sections in the QEMU migration stream, at bytes {first} and {second}: \
         cannot tell which one to take"
    )]
    AmbiguousSection {
        /// Where the first section starts.
        first: u64,
        /// Where the second section starts.
        second: u64,
    },

    /// The payload of a migration stream's `dbus-vmstate` section is
    /// rejected (the cause is the payload decoder's error).
    #[error("dbus-vmstate section at byte {offset}: payload rejected")]
    Section {
        /// Where the section starts in the migration stream.
        offset: u64,
        /// Why the payload was rejected.
        #[source]
        source: Box<Error>,
    },

    /// A writer was asked to write to a helper index it has not begun or
    /// has already ended.
    #[error("helper index {helper} is not open for writing")]
    NotOpen {
        /// The helper index.
        helper: u32,
    },

    /// A writer was finished while a helper's blob was still open.
    #[error("helper {id:?}: blob not ended before the end of the stream")]
    StillOpen {
        /// The helper.
        id: String,
    },

    /// The stream is encrypted and no key was given to read it.
    #[error("the stream is encrypted (with key {key_id}); its key file is needed to read it")]
    KeyRequired {
        /// The fingerprint of the key the stream was written with.
        key_id: KeyId,
    },

    /// The stream is encrypted with another key than the one given.
    #[error("the stream is encrypted with key {stream}, not with the key given ({given})")]
    WrongKey {
        /// The fingerprint of the key the stream was written with.
        stream: KeyId,
        /// The fingerprint of the key given.
        given: KeyId,
    },

    /// A key was given and the stream is not encrypted, which the reader
    /// was not told to accept.
    #[error(
        "the stream is not encrypted, but a key was given: refusing to trust \
         it (accept unencrypted streams explicitly to read it)"
    )]
    NotEncrypted,

    /// An encrypted record failed authentication: the stream was altered
    /// (a byte changed, a record dropped, repeated, moved or taken from
    /// another stream), or its header was.
    #[error(
        "{what} at byte {offset} fails authentication: the stream was altered \
         (or is not the one its header names)"
    )]
    Authentication {
        /// Where the record starts.
        offset: u64,
        /// What failed, e.g. `"record"`.
        what: &'static str,
    },

    /// A reader or writer was used after it had failed; the stream is
    /// incomplete and cannot be continued.
    #[error("stream used after an earlier error")]
    Poisoned,
}

impl Error {
    /// The Id of the helper this error is about, if known.
    pub fn helper_id(&self) -> Option<&str> {
        match self {
            Error::Checksum { id, .. }
            | Error::OverLimit { id, .. }
            | Error::Corrupt { id, .. } => id.as_deref(),
            Error::DuplicateId { id } | Error::StillOpen { id } => Some(id),
            Error::Section { source, .. } => source.helper_id(),
            _ => None,
        }
    }

    /// The byte offset in the stream where the problem was found, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Truncated { offset, .. }
            | Error::Checksum { offset, .. }
            | Error::Corrupt { offset, .. }
            | Error::TrailingData { offset }
            | Error::Authentication { offset, .. }
            | Error::Section { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// Whether the input ended early (as opposed to being wrong).
    pub fn is_truncated(&self) -> bool {
        match self {
            Error::Truncated { .. } => true,
            Error::Section { source, .. } => source.is_truncated(),
            _ => false,
        }
    }

    /// A [`Error::Corrupt`] at `offset`.
    pub(super) fn corrupt(offset: u64, reason: impl Into<String>, id: Option<&str>) -> Self {
        Error::Corrupt {
            offset,
            reason: reason.into(),
            id: id.map(str::to_owned),
        }
    }
}

/// The error of parsing a [`super::Format`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stream format {name:?} (expected \"native\" or \"qemu\")")]
pub struct ParseFormatError {
    /// The name that was given.
    pub name: String,
}

/// Formats `helper "id": ` when the Id is known, nothing otherwise.
struct HelperPrefix<'a>(&'a Option<String>);

impl fmt::Display for HelperPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "helper {id:?}: "),
            None => Ok(()),
        }
    }
}
