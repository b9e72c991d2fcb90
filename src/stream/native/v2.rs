//! What version 2 adds to the native format: per-chunk zstd compression
//! and AES-256-GCM encryption of every record with its position, keyed
//! per stream (`protocol/stream-format.md`, section 6).

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

use super::{HEADER_BYTES, RECORD_HEADER_BYTES};
use crate::stream::key::{self, Key, KeyId, KEY_ID_BYTES};
use crate::stream::Error;

/// Header flag of version 2: `CHUNK` records may be zstd-compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 0;

/// Header flag of version 2: every record payload is encrypted and
/// authenticated; a key block follows the header.
pub const FLAG_ENCRYPTED: u32 = 1 << 1;

/// Size of the key block that follows the header of an encrypted stream.
pub const KEY_BLOCK_BYTES: usize = 56;

/// Size of the authentication tag after every encrypted payload.
pub const TAG_BYTES: usize = 16;

/// Size of the decoded-length prefix of a compressed chunk's payload.
pub const DECODED_LEN_BYTES: usize = 4;

/// Salt size in the key block.
pub const SALT_BYTES: usize = 32;

/// The key block's algorithm field: AES-256-GCM, keys from HKDF-SHA-256.
pub const ALGORITHM_AES_256_GCM: u8 = 1;

/// Record encoding byte (offset 1 of a record header): stored as is.
pub const ENCODING_RAW: u8 = 0;

/// Record encoding byte: one zstd frame after a `u32` decoded length.
pub const ENCODING_ZSTD: u8 = 1;

/// The zstd level writers use: the fastest of the regular levels; higher
/// ones cost more time than they save on the state this crate sees.
pub const ZSTD_LEVEL: i32 = 1;

/// The HKDF `info` prefix of a stream key.
const STREAM_KEY_LABEL: &[u8] = b"dbus-vmstate stream key v2\0";

/// What a stream's header says it uses, and so which version it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `CHUNK` payloads may be zstd frames.
    pub compressed: bool,
    /// Record payloads are encrypted and authenticated.
    pub encrypted: bool,
}

impl Features {
    /// The version a writer emits for these features: 1 when there are
    /// none, 2 otherwise (see [`check_version`], which states both sides
    /// of the rule).
    pub fn version(self) -> u32 {
        if self == Features::default() {
            1
        } else {
            2
        }
    }

    /// The header flags of these features.
    pub fn flags(self) -> u32 {
        let mut flags = 0;
        if self.compressed {
            flags |= FLAG_COMPRESSED;
        }
        if self.encrypted {
            flags |= FLAG_ENCRYPTED;
        }
        flags
    }
}

/// The compatibility rule, both sides of it.
///
/// **Reading**: a reader accepts exactly the versions and flags it knows,
/// and refuses anything else rather than guess at it: version 1 with no
/// flags; version 2 with [`FLAG_COMPRESSED`], [`FLAG_ENCRYPTED`] or both
/// and no other flag. Version 2 without a flag does not exist, as its
/// records would be those of version 1. Every stream any release of this
/// crate wrote is read by every later one.
///
/// **Writing** ([`Features::version`]): a writer emits version 1 unless
/// compression or encryption is asked for, so that an earlier release (a
/// destination not yet upgraded) reads every stream that needs nothing
/// new; a stream that needs version 2 fails there with a clear
/// [`Error::UnsupportedVersion`] instead of being misread.
///
/// # Errors
///
/// [`Error::UnsupportedVersion`], [`Error::UnsupportedFlags`].
pub fn check_version(version: u32, flags: u32) -> Result<Features, Error> {
    match version {
        1 if flags == 0 => Ok(Features::default()),
        2 if flags != 0 && flags & !(FLAG_COMPRESSED | FLAG_ENCRYPTED) == 0 => Ok(Features {
            compressed: flags & FLAG_COMPRESSED != 0,
            encrypted: flags & FLAG_ENCRYPTED != 0,
        }),
        1 | 2 => Err(Error::UnsupportedFlags { flags }),
        found => Err(Error::UnsupportedVersion {
            found,
            supported: super::VERSION,
        }),
    }
}

/// The key block of an encrypted stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBlock {
    /// The fingerprint of the key the stream was written with.
    pub key_id: KeyId,
    /// The stream's random salt.
    pub salt: [u8; SALT_BYTES],
}

impl KeyBlock {
    /// A key block for `key` with a fresh random salt.
    pub fn new(key: &Key) -> Result<KeyBlock, Error> {
        let mut salt = [0u8; SALT_BYTES];
        key::random(&mut salt).map_err(|()| {
            Error::Io(std::io::Error::other(
                "the system random number generator failed",
            ))
        })?;
        Ok(KeyBlock {
            key_id: key.id(),
            salt,
        })
    }

    /// Layout: algorithm `u8`, reserved `u8` and `u16` (0), key id (16),
    /// salt (32), CRC-32C of the 52 bytes before it.
    pub fn encode(&self) -> [u8; KEY_BLOCK_BYTES] {
        let mut b = [0u8; KEY_BLOCK_BYTES];
        b[0] = ALGORITHM_AES_256_GCM;
        b[4..4 + KEY_ID_BYTES].copy_from_slice(&self.key_id.0);
        b[20..20 + SALT_BYTES].copy_from_slice(&self.salt);
        let crc = crc32c::crc32c(&b[..52]);
        b[52..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks and decodes a key block read at offset `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::Checksum`], [`Error::Corrupt`] for an unknown algorithm or
    /// a non-zero reserved field.
    pub fn decode(b: &[u8; KEY_BLOCK_BYTES], offset: u64) -> Result<KeyBlock, Error> {
        if crc32c::crc32c(&b[..52]) != u32::from_le_bytes([b[52], b[53], b[54], b[55]]) {
            return Err(Error::Checksum {
                offset,
                what: "key block",
                id: None,
            });
        }
        if b[0] != ALGORITHM_AES_256_GCM {
            return Err(Error::corrupt(
                offset,
                format!("unknown encryption algorithm {}", b[0]),
                None,
            ));
        }
        if b[1..4] != [0, 0, 0] {
            return Err(Error::corrupt(offset, "non-zero reserved field", None));
        }
        let mut key_id = [0u8; KEY_ID_BYTES];
        key_id.copy_from_slice(&b[4..20]);
        let mut salt = [0u8; SALT_BYTES];
        salt.copy_from_slice(&b[20..52]);
        Ok(KeyBlock {
            key_id: KeyId(key_id),
            salt,
        })
    }
}

/// A stream's AEAD key: seals and opens its records.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

/// HKDF output length for the AEAD key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        AES_256_GCM.key_len()
    }
}

impl Sealer {
    /// The stream key: HKDF-SHA-256 with the key block's salt, the key as
    /// input keying material, and as `info` a label followed by the
    /// stream header and the key block, so that a changed header byte
    /// changes the key and fails the first record.
    pub fn new(key: &Key, header: &[u8; HEADER_BYTES], block: &[u8; KEY_BLOCK_BYTES]) -> Sealer {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &block[20..20 + SALT_BYTES]);
        let prk = salt.extract(key.secret());
        let info: [&[u8]; 3] = [STREAM_KEY_LABEL, header, block];
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        // The output length (32) is far below HKDF's limit (255 × 32).
        let okm = prk.expand(&info, KeyLen).expect("HKDF output of 32 bytes");
        okm.fill(&mut bytes[..]).expect("HKDF output of 32 bytes");
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes[..]).expect("a 32-byte AES key");
        Sealer {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `payload` in place as record number `record` with header
    /// `header`, and returns the tag that follows it.
    pub fn seal(
        &self,
        record: u64,
        header: &[u8; RECORD_HEADER_BYTES],
        payload: &mut [u8],
    ) -> [u8; TAG_BYTES] {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(record), Aad::from(header), payload)
            // Fails only for payloads over 64 GiB; records are at most 16 MiB.
            .expect("AES-GCM sealing of a record");
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts and authenticates `stored` (ciphertext then tag) in place
    /// as record number `record`; returns the plaintext's length, or
    /// `None` when it does not authenticate.
    pub fn open(
        &self,
        record: u64,
        header: &[u8; RECORD_HEADER_BYTES],
        stored: &mut [u8],
    ) -> Option<usize> {
        let plain = self
            .key
            .open_in_place(nonce(record), Aad::from(header), stored)
            .ok()?;
        Some(plain.len())
    }
}

/// The nonce of record number `record`: the number as a little-endian
/// `u64`, then four zero bytes. Each stream has its own key, so numbers
/// never repeat under one key.
fn nonce(record: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[..8].copy_from_slice(&record.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Compresses chunks, keeping back those that would not shrink.
pub struct Compressor {
    zstd: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

/// Bytes from the middle of a chunk compressed first, to tell whether
/// the whole chunk is worth compressing.
pub const PROBE_BYTES: usize = 4 << 10;

impl Compressor {
    /// A compressor at [`ZSTD_LEVEL`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when zstd cannot make a context (out of memory).
    pub fn new() -> Result<Compressor, Error> {
        let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        // The decoded length is in the chunk's own prefix; a checksum
        // would repeat the record's.
        zstd.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))?;
        zstd.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false))?;
        Ok(Compressor { zstd })
    }

    /// Whether `data` is worth compressing: a chunk of more than four
    /// samples is not unless [`PROBE_BYTES`] from its middle shrink by an
    /// eighth, so random state costs a sample's compression per chunk.
    /// The answer depends on the chunk alone, so chunks may be compressed
    /// in any order, on any thread. `scratch` is working room.
    pub fn promising(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> bool {
        if data.len() <= DECODED_LEN_BYTES + 16 {
            return false;
        }
        if data.len() <= 4 * PROBE_BYTES {
            return true;
        }
        if scratch.len() < PROBE_BYTES {
            scratch.resize(PROBE_BYTES, 0);
        }
        let mid = data.len() / 2;
        let sample = &data[mid - PROBE_BYTES / 2..mid + PROBE_BYTES / 2];
        let room = &mut scratch[..PROBE_BYTES - PROBE_BYTES / 8];
        self.zstd.compress_to_buffer(sample, room).is_ok()
    }

    /// Compresses `data` into `out` (the `u32` decoded length, then one
    /// zstd frame) and returns the compressed payload's length when it is
    /// shorter than `data`; `None` when the chunk is to be stored raw.
    /// `out` is only ever grown, so that it is not cleared for every
    /// chunk: the payload is `out[..n]`. Ask [`promising`](Self::promising)
    /// first.
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let len = u32::try_from(data.len()).ok()?;
        if data.len() <= DECODED_LEN_BYTES + 16 {
            return None;
        }
        if out.len() < data.len() {
            out.resize(data.len(), 0);
        }
        out[..DECODED_LEN_BYTES].copy_from_slice(&len.to_le_bytes());
        // Room for a frame that saves at least one byte: zstd stops with
        // an error when a larger one runs out of room.
        let room = &mut out[DECODED_LEN_BYTES..data.len() - 1];
        let n = self.zstd.compress_to_buffer(data, room).ok()?;
        Some(DECODED_LEN_BYTES + n)
    }
}

/// Decompresses one compressed chunk.
///
/// The decoded length is read from the payload's prefix and checked
/// against `max` before anything is allocated; `out` grows to it if
/// shorter, the frame must fill `out[..len]` exactly, and `len` is
/// returned.
///
/// Returns `Err(reason)` for a payload that is not a valid compressed
/// chunk.
pub fn decompress(
    zstd: &mut zstd::bulk::Decompressor<'static>,
    payload: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<usize, DecodeError> {
    let (len, frame) =
        payload
            .split_first_chunk::<DECODED_LEN_BYTES>()
            .ok_or(DecodeError::Corrupt(
                "compressed CHUNK shorter than its length prefix".into(),
            ))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len == 0 {
        return Err(DecodeError::Corrupt(
            "compressed CHUNK decoding to 0 bytes".into(),
        ));
    }
    if len > max {
        return Err(DecodeError::TooLarge(len as u64));
    }
    // Exactly one frame, and nothing after it.
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        _ => {
            return Err(DecodeError::Corrupt(
                "compressed CHUNK is not exactly one zstd frame".into(),
            ))
        }
    }
    if out.len() < len {
        out.resize(len, 0);
    }
    match zstd.decompress_to_buffer(frame, &mut out[..len]) {
        Ok(n) if n == len => Ok(len),
        Ok(n) => Err(DecodeError::Corrupt(format!(
            "compressed CHUNK decodes to {n} bytes, its prefix says {len}"
        ))),
        Err(e) => Err(DecodeError::Corrupt(format!(
            "compressed CHUNK is no valid zstd frame of {len} bytes ({e})"
        ))),
    }
}

/// Why a compressed chunk was refused.
#[derive(Debug)]
pub enum DecodeError {
    /// It claims to decode to more than allowed.
    TooLarge(u64),
    /// It is not a valid compressed chunk.
    Corrupt(String),
}
