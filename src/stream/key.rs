//! Stream keys: the 256-bit secrets that encrypt and authenticate native
//! streams of version 2 (`protocol/stream-format.md`, section 6), and the
//! key files that hold them.
//!
//! A key file holds 64 hexadecimal digits and an optional newline (what
//! [`Key::write_new`] and `dbus-vmstate keygen` write) or the 32 key bytes
//! themselves (`head -c 32 /dev/urandom`). A regular key file that its
//! group or others may read is refused. A key is never printed: its
//! [`Debug`](fmt::Debug) form and every error show only its [`KeyId`], a
//! one-way fingerprint that a stream records in the clear so that a wrong
//! key is named as such.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Size of a key in bytes.
pub const KEY_BYTES: usize = 32;

/// Size of a [`KeyId`] in bytes.
pub const KEY_ID_BYTES: usize = 16;

/// The domain-separation prefix of [`Key::id`].
const KEY_ID_LABEL: &[u8] = b"dbus-vmstate key id v1\0";

/// Largest key file read: 64 hex digits, CR LF, and a little slack for
/// the error message to be about the format rather than the size.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// A stream key: 32 secret bytes, wiped from memory when dropped.
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

/// The fingerprint of a [`Key`]: the first 16 bytes of SHA-256 over a
/// fixed label and the key. It tells keys apart and reveals nothing of
/// them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_BYTES]);

/// Why a key or key file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be opened, read or written.
    #[error("key file {}: {source}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A regular key file that its group or others may access.
    #[error(
        "key file {}: mode {mode:04o} lets its group or others read it; \
         a key file must be private to its owner (chmod 600)",
        .path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The contents are not a key.
    #[error(
        "key file {}: {len} bytes that are not a key; a key file holds 64 \
         hexadecimal digits (what `dbus-vmstate keygen` writes) or 32 raw bytes",
        .path.display()
    )]
    Format {
        /// The key file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
    },
    /// The system's random number generator failed.
    #[error("cannot generate a key: the system random number generator failed")]
    Random,
}

impl Key {
    /// A new key from the system's random number generator.
    ///
    /// # Errors
    ///
    /// [`KeyError::Random`].
    pub fn generate() -> Result<Key, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        random(&mut bytes[..]).map_err(|()| KeyError::Random)?;
        Ok(Key { bytes })
    }

    /// The key with these 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// Parses the contents of a key file: 64 hexadecimal digits with an
    /// optional final newline (`\n` or `\r\n`), or exactly 32 raw bytes.
    /// `None` for anything else.
    pub fn parse(contents: &[u8]) -> Option<Key> {
        if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(contents) {
            return Some(Key::from_bytes(raw));
        }
        let text = contents
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(contents);
        if text.len() != 2 * KEY_BYTES {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Some(Key { bytes })
    }

    /// Reads the key file at `path` (a regular file private to its owner,
    /// or anything else that reads, such as `/dev/fd/3` for a key passed
    /// on a pipe).
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`], [`KeyError::Permissions`], [`KeyError::Format`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Key, KeyError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Key::from_open_file(file, path)
    }

    /// Reads a key file already open as `file`, called `name` in errors,
    /// with the checks of [`Key::from_file`].
    ///
    /// # Errors
    ///
    /// As [`Key::from_file`].
    pub fn from_open_file(file: File, name: impl AsRef<Path>) -> Result<Key, KeyError> {
        let path = name.as_ref().to_path_buf();
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_file() && mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path, mode });
        }
        let mut contents = Zeroizing::new(Vec::with_capacity(2 * KEY_BYTES + 2));
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_end(&mut contents)
            .map_err(io)?;
        Key::parse(&contents).ok_or(KeyError::Format {
            len: contents.len() as u64,
            path,
        })
    }

    /// Writes this key to a new file at `path` with mode 0600, as 64
    /// hexadecimal digits and a newline, and syncs it. An existing file
    /// is never overwritten.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`], also when `path` exists.
    pub fn write_new(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        let path = path.as_ref();
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut text = Zeroizing::new(Vec::with_capacity(2 * KEY_BYTES + 1));
        for byte in self.bytes.iter() {
            text.push(HEX[usize::from(byte >> 4)]);
            text.push(HEX[usize::from(byte & 0xF)]);
        }
        text.push(b'\n');
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// This key's fingerprint.
    pub fn id(&self) -> KeyId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(KEY_ID_LABEL);
        ctx.update(&self.bytes[..]);
        let digest = ctx.finish();
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_BYTES]);
        KeyId(id)
    }

    /// The secret bytes, for the stream's key derivation only.
    pub(crate) fn secret(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }
}

impl fmt::Debug for Key {
    /// Shows the key's fingerprint, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id()).finish()
    }
}

impl fmt::Display for KeyId {
    /// 32 lowercase hexadecimal digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Fills `buf` from the system's random number generator.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), ()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_with_or_without_newline_and_raw_bytes() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let want = Key::parse(hex.as_bytes()).unwrap();
        assert_eq!(want.secret()[1], 0x11);
        assert_eq!(want.secret()[31], 0xff);
        for text in [format!("{hex}\n"), format!("{hex}\r\n")] {
            assert_eq!(Key::parse(text.as_bytes()).unwrap().id(), want.id());
        }
        let raw = *want.secret();
        assert_eq!(Key::parse(&raw).unwrap().id(), want.id());
    }

    #[test]
    fn refuses_what_is_not_a_key() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for bad in [
            &hex.as_bytes()[..63],
            format!("{hex}0").as_bytes(),
            format!("{hex}\n\n").as_bytes(),
            hex.replace('a', "g").as_bytes(),
            b"",
            &[0u8; 31],
            &[0u8; 33],
        ] {
            assert!(Key::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_file_round_trips_private_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = Key::generate().unwrap();
        key.write_new(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 65);
        assert_eq!(Key::from_file(&path).unwrap().id(), key.id());
        let again = Key::generate().unwrap().write_new(&path);
        assert!(matches!(again, Err(KeyError::Io { .. })), "{again:?}");
        assert_eq!(Key::from_file(&path).unwrap().id(), key.id());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_naming_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        Key::generate().unwrap().write_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Key::from_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o640, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("0640"), "{err}");
    }

    #[test]
    fn debug_and_errors_show_the_id_not_the_key() {
        let key = Key::from_bytes([0xAB; KEY_BYTES]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&key.id().to_string()), "{shown}");
        assert_eq!(key.id().to_string().len(), 2 * KEY_ID_BYTES);
        assert_ne!(key.id(), Key::from_bytes([0xAC; KEY_BYTES]).id());
    }
}
