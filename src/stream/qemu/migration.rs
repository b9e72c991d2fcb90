//! The `dbus-vmstate` section inside a whole QEMU migration stream (what
//! `migrate "exec:cat > FILE"` writes): finding its payload, and writing the
//! stream again with another payload in its place.
//!
//! QEMU's migration stream (migration/savevm.c) is a header (the magic
//! `QEVM` and file version 3) followed by sections. A section says what it
//! is but not how long it is: only the device that wrote it can read it, so
//! the stream cannot be walked without knowing every device's format (RAM
//! above all). The `dbus-vmstate` section is self-delimiting, though. QEMU
//! writes it as a full section (backends/dbus-vmstate.c, vmsd version 0),
//! in big-endian integers:
//!
//! | field          | size  | value                                   |
//! |----------------|-------|-----------------------------------------|
//! | section type   | 1     | `0x04` (`QEMU_VM_SECTION_FULL`)         |
//! | section id     | 4     | chosen by QEMU                          |
//! | idstr length   | 1     | 25                                      |
//! | idstr          | 25    | `dbus-vmstate/dbus-vmstate`             |
//! | instance id    | 4     | 0 for the first object                  |
//! | version id     | 4     | 0                                       |
//! | `data_size`    | 4     | payload length                          |
//! | payload        | `data_size` | the [`super`] payload             |
//! | footer type    | 1     | `0x7e` (`QEMU_VM_SECTION_FOOTER`)       |
//! | section id     | 4     | the same section id                     |
//!
//! [`locate`] checks the stream header, then looks for every section
//! header naming `dbus-vmstate/dbus-vmstate` and keeps a match only if its
//! section ends in a footer with its own section id; the one it keeps must
//! decode as a payload ([`super::decode`]). It refuses a stream with no such
//! section or with two of them: the idstr does not carry the object's `id=`
//! (every `dbus-vmstate` object is named `dbus-vmstate/dbus-vmstate`, told
//! apart only by instance number), so with two objects the stream cannot
//! say which payload belongs to which, and a guest whose RAM happens to
//! hold such bytes is refused rather than guessed at.
//!
//! Supported: streams of QEMU 7.x (file version 3) with section footers,
//! which QEMU writes for every machine type since 2.5 and for `-M none`.
//! Not supported: streams without footers (old machine types or
//! `send-section-footer=off`), and anything that is not a plain migration
//! stream (compressed or encrypted files, snapshots inside qcow2).
//!
//! [`splice`] writes the stream again with another payload: only
//! `data_size` and the payload change, every other byte is copied. QEMU's
//! JSON description of the devices at the end of the stream (which records
//! the old payload's size) is copied too: QEMU's loader reads and discards
//! it, but `scripts/analyze-migration.py`, which trusts it, cannot read a
//! stream whose payload changed size.
//!
//! ```
//! use dbus_vmstate::stream::qemu::{self, migration};
//! use dbus_vmstate::stream::Record;
//!
//! // A stream as QEMU writes it, reduced to its header and our section.
//! let payload = qemu::encode(&[Record::new("idA", b"state".to_vec())])?;
//! let mut file = b"QEVM\0\0\0\x03".to_vec();
//! file.extend_from_slice(b"\x04\0\0\0\x01\x19dbus-vmstate/dbus-vmstate\0\0\0\0\0\0\0\0");
//! file.extend_from_slice(&(payload.len() as u32).to_be_bytes());
//! file.extend_from_slice(&payload);
//! file.extend_from_slice(b"\x7e\0\0\0\x01\0");
//!
//! let section = migration::locate(&file)?;
//! assert_eq!(section.decoded.records[0].data, b"state");
//!
//! let other = qemu::encode(&[Record::new("idA", b"other state".to_vec())])?;
//! let mut spliced = Vec::new();
//! migration::splice(&mut spliced, &file, &section, &other)?;
//! let again = migration::locate(&spliced)?;
//! assert_eq!(again.decoded.records[0].data, b"other state");
//! # Ok::<(), dbus_vmstate::stream::Error>(())
//! ```

use std::io::Write;
use std::ops::Range;

use super::{decode, Decoded};
use crate::stream::{len_u64, u32_len, Error, Limits};

/// The magic at the start of a QEMU migration stream (`QEMU_VM_FILE_MAGIC`).
pub const MAGIC: [u8; 4] = *b"QEVM";

/// The migration stream file version this reader knows
/// (`QEMU_VM_FILE_VERSION`, QEMU 0.13 onwards).
pub const FILE_VERSION: u32 = 3;

/// The idstr of the `dbus-vmstate` object's section.
pub const IDSTR: &str = "dbus-vmstate/dbus-vmstate";

/// `QEMU_VM_SECTION_FULL`.
const SECTION_FULL: u8 = 0x04;
/// `QEMU_VM_SECTION_FOOTER`.
const SECTION_FOOTER: u8 = 0x7e;
/// The `dbus-vmstate` vmsd's version.
const VMSD_VERSION: u32 = 0;
/// Section type and section id, before the idstr's length byte.
const BEFORE_IDSTR: usize = 5;
/// Instance id, version id and `data_size`, after the idstr.
const AFTER_IDSTR: usize = 12;
/// The footer: its type byte and the section id.
const FOOTER: usize = 5;

/// The `dbus-vmstate` section found in a migration stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Byte offset of the section's first byte (its type byte).
    pub offset: u64,
    /// The section id QEMU gave it.
    pub section_id: u32,
    /// The object's instance id (0 for the first `dbus-vmstate` object).
    pub instance_id: u32,
    /// Where the payload lies in the stream (after `data_size`).
    pub payload: Range<usize>,
    /// The payload, decoded.
    pub decoded: Decoded,
}

/// Finds the one `dbus-vmstate` section in a whole migration stream and
/// decodes its payload, as the [module docs](self) describe.
///
/// # Errors
///
/// [`Error::NotMigration`] when the stream header is not QEMU's;
/// [`Error::NoSection`] when no section names `dbus-vmstate`;
/// [`Error::Truncated`] when the stream ends inside the only candidate;
/// [`Error::Corrupt`] when a section names `dbus-vmstate` but is not
/// followed by its footer, or has another vmsd version;
/// [`Error::AmbiguousSection`] for two sections;
/// [`Error::Section`] when the section's payload does not decode.
pub fn locate(stream: &[u8]) -> Result<Section, Error> {
    check_header(stream)?;
    let mut needle = vec![IDSTR.len() as u8];
    needle.extend_from_slice(IDSTR.as_bytes());
    let mut found: Option<Candidate> = None;
    let mut first_miss: Option<Error> = None;
    let mut at = MAGIC.len() + 4;
    while let Some(hit) = find(&stream[at..], &needle) {
        let idstr_at = at + hit;
        at = idstr_at + 1;
        let Some(start) = idstr_at.checked_sub(BEFORE_IDSTR) else {
            continue;
        };
        if stream[start] != SECTION_FULL {
            continue;
        }
        match candidate(stream, start) {
            Ok(c) => {
                if let Some(first) = &found {
                    return Err(Error::AmbiguousSection {
                        first: len_u64(first.start),
                        second: len_u64(c.start),
                    });
                }
                found = Some(c);
            }
            Err(miss) => {
                first_miss.get_or_insert(miss);
            }
        }
    }
    match found {
        Some(c) => c.decode(stream),
        None => Err(first_miss.unwrap_or(Error::NoSection)),
    }
}

/// Writes `stream` with `payload` in place of `section`'s payload: the
/// bytes before its `data_size`, the new `data_size` and payload, and the
/// bytes after the old payload (the footer and the rest), all unchanged.
/// `payload` is written as given; encode it with [`super::encode`].
///
/// # Errors
///
/// [`Error::Corrupt`] when `section` was not found in `stream`;
/// [`Error::OverLimit`] when `payload` does not fit QEMU's `u32` size;
/// [`Error::Io`].
pub fn splice<W: Write>(
    mut w: W,
    stream: &[u8],
    section: &Section,
    payload: &[u8],
) -> Result<(), Error> {
    let size = u32_len(payload.len(), "dbus-vmstate payload")?;
    let Range { start, end } = section.payload.clone();
    let in_stream = start >= 4
        && start <= end
        && end <= stream.len()
        && be32(stream, start - 4).map(u64::from) == Some(len_u64(end - start));
    if !in_stream {
        return Err(Error::corrupt(
            section.offset,
            "this dbus-vmstate section is not in this stream",
            None,
        ));
    }
    w.write_all(&stream[..start - 4])?;
    w.write_all(&size.to_be_bytes())?;
    w.write_all(payload)?;
    w.write_all(&stream[end..])?;
    w.flush()?;
    Ok(())
}

/// Checks the magic and the file version.
fn check_header(stream: &[u8]) -> Result<(), Error> {
    if !stream.starts_with(&MAGIC) {
        return Err(Error::NotMigration {
            reason: if stream.len() < MAGIC.len() {
                "shorter than its magic"
            } else {
                "bad magic (expected \"QEVM\")"
            },
        });
    }
    match be32(stream, MAGIC.len()) {
        Some(FILE_VERSION) => Ok(()),
        Some(_) => Err(Error::NotMigration {
            reason: "unsupported file version (this reader supports version 3)",
        }),
        None => Err(Error::NotMigration {
            reason: "shorter than its header",
        }),
    }
}

/// A section header naming `dbus-vmstate` whose section ends in its footer.
struct Candidate {
    start: usize,
    section_id: u32,
    instance_id: u32,
    payload: Range<usize>,
}

impl Candidate {
    /// Decodes the payload, the last check.
    fn decode(self, stream: &[u8]) -> Result<Section, Error> {
        let offset = len_u64(self.start);
        let decoded = decode(&stream[self.payload.clone()], Limits::default()).map_err(|e| {
            Error::Section {
                offset,
                source: Box::new(e),
            }
        })?;
        Ok(Section {
            offset,
            section_id: self.section_id,
            instance_id: self.instance_id,
            payload: self.payload,
            decoded,
        })
    }
}

/// Reads the section starting at `start` (its type byte), whose idstr has
/// been matched, and checks its version and its footer.
fn candidate(stream: &[u8], start: usize) -> Result<Candidate, Error> {
    let offset = len_u64(start);
    let truncated = |expected| Error::Truncated {
        offset: len_u64(stream.len()),
        expected,
    };
    let section_id = be32(stream, start + 1).ok_or(truncated("section id"))?;
    let fields = start + BEFORE_IDSTR + 1 + IDSTR.len();
    let instance_id = be32(stream, fields).ok_or(truncated("instance id"))?;
    let version = be32(stream, fields + 4).ok_or(truncated("version id"))?;
    if version != VMSD_VERSION {
        return Err(Error::corrupt(
            offset,
            format!("dbus-vmstate section has version {version}, expected {VMSD_VERSION}"),
            None,
        ));
    }
    let size = be32(stream, fields + 8).ok_or(truncated("dbus-vmstate data_size"))?;
    let payload_at = fields + AFTER_IDSTR;
    let payload_end = usize::try_from(size)
        .ok()
        .and_then(|n| payload_at.checked_add(n))
        .filter(|&end| end <= stream.len())
        .ok_or(truncated("dbus-vmstate payload"))?;
    let footer = stream
        .get(payload_end..payload_end + FOOTER)
        .ok_or(truncated("dbus-vmstate section footer"))?;
    if footer[0] != SECTION_FOOTER || be32(footer, 1) != Some(section_id) {
        return Err(Error::corrupt(
            offset,
            format!(
                "dbus-vmstate section {section_id} is not followed by its footer at byte \
                 {payload_end} (streams without section footers are not supported)"
            ),
            None,
        ));
    }
    Ok(Candidate {
        start,
        section_id,
        instance_id,
        payload: payload_at..payload_end,
    })
}

/// The big-endian `u32` at `at`, if the bytes are there.
fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
