//! The control interface's dictionaries, as they travel (`a{sv}`), and
//! their conversions to the library's types.
//!
//! Option dictionaries (caller to coordinator) refuse unknown keys, so an
//! option a coordinator does not understand is an error rather than
//! silently ignored. Reply dictionaries ignore unknown keys, so a newer
//! coordinator may add keys that older callers skip.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use zbus::{DeserializeDict, SerializeDict, Type};

use super::{LoadOptions, Report, SaveOptions};
use crate::coordinator::{
    HelperReport, HelperStatus, Mode, QemuRound, QemuStatus, Skipped, Transfer,
};
use crate::stream::{Format, Key, KeyError};

/// `Save` and `Load` options.
#[derive(Debug, Default, DeserializeDict, SerializeDict, Type)]
#[zbus(signature = "a{sv}", deny_unknown_fields)]
pub(super) struct OptionsDict {
    /// `"native"` or `"qemu"`.
    pub format: Option<String>,
    /// Milliseconds to wait for required helpers to connect.
    pub connect_timeout_ms: Option<u64>,
    /// Save: compress the stream (native format version 2).
    pub compress: Option<bool>,
    /// A descriptor to read the stream key from (a key file's contents,
    /// up to its end): save encrypts with it, load decrypts with it.
    pub key_fd: Option<zbus::OwnedFd>,
    /// Load with a key: accept an unencrypted stream too.
    pub allow_unencrypted: Option<bool>,
}

impl OptionsDict {
    /// The options of a save, without the key (see [`key_pipe`]).
    pub fn save(o: &SaveOptions) -> Self {
        OptionsDict {
            format: Some(o.format.as_str().to_string()),
            connect_timeout_ms: o.connect_timeout.map(millis),
            compress: o.compress.then_some(true),
            ..OptionsDict::default()
        }
    }

    /// The options of a load, without the key (see [`key_pipe`]).
    pub fn load(o: &LoadOptions) -> Self {
        OptionsDict {
            format: o.format.map(|f| f.as_str().to_string()),
            connect_timeout_ms: o.connect_timeout.map(millis),
            allow_unencrypted: o.allow_unencrypted.then_some(true),
            ..OptionsDict::default()
        }
    }

    /// The key passed in `key_fd`, read without blocking: the caller
    /// writes it whole and closes its end before the call.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the descriptor or its key.
    pub fn take_key(&mut self) -> Result<Option<Key>, String> {
        let Some(fd) = self.key_fd.take() else {
            return Ok(None);
        };
        let fd = std::os::fd::OwnedFd::from(fd);
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| format!("key_fd: {e}"))?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| format!("key_fd: {e}"))?;
        Key::from_open_file(std::fs::File::from(fd), "key_fd")
            .map(Some)
            .map_err(|e| match e {
                KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock => {
                    "key_fd: the key was not written whole and its end closed before the call"
                        .to_string()
                }
                e => e.to_string(),
            })
    }
}

/// A pipe holding `key` (its 32 bytes), written and closed: the read end
/// goes as `key_fd`.
///
/// # Errors
///
/// When the pipe cannot be made or written.
pub(super) fn key_pipe(key: &Key) -> std::io::Result<zbus::OwnedFd> {
    use std::io::Write;
    let (read, write) = rustix::pipe::pipe()?;
    std::fs::File::from(write).write_all(key.secret())?;
    Ok(zbus::OwnedFd::from(read))
}

impl OptionsDict {
    /// The format asked for, if any.
    ///
    /// # Errors
    ///
    /// A message naming the unknown format.
    pub fn parse_format(&self) -> Result<Option<Format>, String> {
        self.format
            .as_deref()
            .map(|f| Format::from_str(f).map_err(|e| e.to_string()))
            .transpose()
    }

    /// The connect timeout asked for, if any.
    ///
    /// # Errors
    ///
    /// When it is zero.
    pub fn parse_connect_timeout(&self) -> Result<Option<Duration>, String> {
        match self.connect_timeout_ms {
            Some(0) => Err("connect_timeout_ms must be positive".to_string()),
            other => Ok(other.map(Duration::from_millis)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The reply of `Save` and `Load`.
#[derive(Debug, Default, Clone, PartialEq, Eq, DeserializeDict, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub(super) struct ReportDict {
    /// `"native"` or `"qemu"`.
    pub format: String,
    /// Bytes of the stream (saves only).
    pub stream_bytes: Option<u64>,
    /// Microseconds from the first call to the end.
    pub duration_us: u64,
    /// Per helper: Id, state bytes, call microseconds.
    pub helpers: Vec<(String, u64, u64)>,
    /// Per helper: Id, `"plain"` or `"stream"`.
    pub modes: Option<Vec<(String, String)>>,
    /// Per optional helper left out: Id, reason.
    pub skipped: Vec<(String, String)>,
}

impl From<&Report> for ReportDict {
    fn from(r: &Report) -> Self {
        ReportDict {
            format: r.format.as_str().to_string(),
            stream_bytes: r.stream_bytes,
            duration_us: micros(r.duration),
            helpers: r
                .helpers
                .iter()
                .map(|h| (h.id.clone(), h.transfer.bytes, micros(h.transfer.duration)))
                .collect(),
            modes: Some(
                r.helpers
                    .iter()
                    .map(|h| (h.id.clone(), h.mode.as_str().to_string()))
                    .collect(),
            ),
            skipped: r
                .skipped
                .iter()
                .map(|s| (s.id.clone(), s.reason.clone()))
                .collect(),
        }
    }
}

impl TryFrom<ReportDict> for Report {
    type Error = String;

    fn try_from(d: ReportDict) -> Result<Self, String> {
        let modes = d.modes.unwrap_or_default();
        let mode_of = |id: &str| {
            modes
                .iter()
                .find(|(m_id, _)| m_id == id)
                .map(|(_, m)| {
                    if m == "stream" {
                        Mode::Stream
                    } else {
                        Mode::Plain
                    }
                })
                .unwrap_or(Mode::Plain)
        };
        Ok(Report {
            format: Format::from_str(&d.format).map_err(|e| e.to_string())?,
            stream_bytes: d.stream_bytes,
            duration: Duration::from_micros(d.duration_us),
            helpers: d
                .helpers
                .into_iter()
                .map(|(id, bytes, us)| HelperReport {
                    mode: mode_of(&id),
                    id,
                    transfer: Transfer {
                        bytes,
                        duration: Duration::from_micros(us),
                    },
                })
                .collect(),
            skipped: d
                .skipped
                .into_iter()
                .map(|(id, reason)| Skipped { id, reason })
                .collect(),
        })
    }
}

/// One helper in the reply of `Status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, DeserializeDict, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub(super) struct StatusDict {
    pub id: String,
    pub socket: String,
    pub required: bool,
    pub connected: bool,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub last_save_bytes: Option<u64>,
    pub last_save_us: Option<u64>,
    pub last_load_bytes: Option<u64>,
    pub last_load_us: Option<u64>,
    pub last_rejection: Option<String>,
}

impl From<&HelperStatus> for StatusDict {
    fn from(s: &HelperStatus) -> Self {
        StatusDict {
            id: s.id.clone(),
            socket: s.socket.display().to_string(),
            required: s.required,
            connected: s.connected,
            pid: s.pid,
            uid: s.uid,
            last_save_bytes: s.last_save.as_ref().map(|t| t.bytes),
            last_save_us: s.last_save.as_ref().map(|t| micros(t.duration)),
            last_load_bytes: s.last_load.as_ref().map(|t| t.bytes),
            last_load_us: s.last_load.as_ref().map(|t| micros(t.duration)),
            last_rejection: s.last_rejection.clone(),
        }
    }
}

fn transfer(bytes: Option<u64>, us: Option<u64>) -> Option<Transfer> {
    Some(Transfer {
        bytes: bytes?,
        duration: Duration::from_micros(us.unwrap_or(0)),
    })
}

impl From<StatusDict> for HelperStatus {
    fn from(d: StatusDict) -> Self {
        HelperStatus {
            id: d.id,
            socket: PathBuf::from(d.socket),
            required: d.required,
            connected: d.connected,
            pid: d.pid,
            uid: d.uid,
            last_save: transfer(d.last_save_bytes, d.last_save_us),
            last_load: transfer(d.last_load_bytes, d.last_load_us),
            last_rejection: d.last_rejection,
        }
    }
}

/// The reply of `QemuStatus`: empty when the coordinator has no front
/// door for QEMU.
#[derive(Debug, Default, Clone, PartialEq, Eq, DeserializeDict, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub(super) struct QemuStatusDict {
    pub socket: Option<String>,
    pub connected: Option<bool>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub last_save_helpers: Option<Vec<String>>,
    pub last_save_bytes: Option<u64>,
    pub last_save_us: Option<u64>,
    pub last_save_failures: Option<Vec<String>>,
    pub last_load_helpers: Option<Vec<String>>,
    pub last_load_bytes: Option<u64>,
    pub last_load_us: Option<u64>,
    pub last_load_failures: Option<Vec<String>>,
    pub last_rejection: Option<String>,
}

impl From<Option<&QemuStatus>> for QemuStatusDict {
    fn from(s: Option<&QemuStatus>) -> Self {
        let Some(s) = s else {
            return QemuStatusDict::default();
        };
        let (save, load) = (s.last_save.as_ref(), s.last_load.as_ref());
        QemuStatusDict {
            socket: Some(s.socket.display().to_string()),
            connected: Some(s.connected),
            pid: s.pid,
            uid: s.uid,
            last_save_helpers: save.map(|r| r.helpers.clone()),
            last_save_bytes: save.map(|r| r.bytes),
            last_save_us: save.map(|r| micros(r.duration)),
            last_save_failures: save.map(|r| r.failures.clone()),
            last_load_helpers: load.map(|r| r.helpers.clone()),
            last_load_bytes: load.map(|r| r.bytes),
            last_load_us: load.map(|r| micros(r.duration)),
            last_load_failures: load.map(|r| r.failures.clone()),
            last_rejection: s.last_rejection.clone(),
        }
    }
}

fn round(
    helpers: Option<Vec<String>>,
    bytes: Option<u64>,
    us: Option<u64>,
    failures: Option<Vec<String>>,
) -> Option<QemuRound> {
    if helpers.is_none() && failures.is_none() {
        return None;
    }
    Some(QemuRound {
        helpers: helpers.unwrap_or_default(),
        bytes: bytes.unwrap_or(0),
        duration: Duration::from_micros(us.unwrap_or(0)),
        failures: failures.unwrap_or_default(),
    })
}

impl From<QemuStatusDict> for Option<QemuStatus> {
    fn from(d: QemuStatusDict) -> Self {
        Some(QemuStatus {
            socket: PathBuf::from(d.socket?),
            connected: d.connected.unwrap_or(false),
            pid: d.pid,
            uid: d.uid,
            last_save: round(
                d.last_save_helpers,
                d.last_save_bytes,
                d.last_save_us,
                d.last_save_failures,
            ),
            last_load: round(
                d.last_load_helpers,
                d.last_load_bytes,
                d.last_load_us,
                d.last_load_failures,
            ),
            last_rejection: d.last_rejection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_round_trips() {
        let status = QemuStatus {
            socket: "/run/vm0/qemu.sock".into(),
            connected: true,
            pid: Some(41),
            uid: Some(1000),
            last_save: Some(QemuRound {
                helpers: vec!["a".into(), "b".into()],
                bytes: 20,
                duration: Duration::from_micros(5678),
                failures: vec!["helper \"c\": Save call failed".into()],
            }),
            last_load: None,
            last_rejection: Some("peer uid 7 is not allowed".into()),
        };
        let back: Option<QemuStatus> = QemuStatusDict::from(Some(&status)).into();
        assert_eq!(back, Some(status));
        let none: Option<QemuStatus> = QemuStatusDict::from(None).into();
        assert_eq!(none, None);
    }

    #[test]
    fn report_round_trips() {
        let report = Report {
            format: Format::Qemu,
            stream_bytes: Some(99),
            helpers: vec![HelperReport {
                id: "a".into(),
                mode: Mode::Stream,
                transfer: Transfer {
                    bytes: 7,
                    duration: Duration::from_micros(1234),
                },
            }],
            skipped: vec![Skipped {
                id: "b".into(),
                reason: "not connected".into(),
            }],
            duration: Duration::from_micros(5678),
        };
        let back = Report::try_from(ReportDict::from(&report)).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn status_round_trips() {
        let status = HelperStatus {
            id: "a".into(),
            socket: "/run/a.sock".into(),
            required: true,
            connected: true,
            pid: Some(42),
            uid: Some(1000),
            last_save: Some(Transfer {
                bytes: 3,
                duration: Duration::from_micros(10),
            }),
            last_load: None,
            last_rejection: Some("it claims Id \"b\"".into()),
        };
        assert_eq!(HelperStatus::from(StatusDict::from(&status)), status);
    }

    #[test]
    fn options_parse() {
        let o = OptionsDict::save(&SaveOptions::default().format(Format::Qemu));
        assert_eq!(o.parse_format(), Ok(Some(Format::Qemu)));
        assert_eq!(o.parse_connect_timeout(), Ok(None));
        assert_eq!(o.compress, None);
        let bad = OptionsDict {
            format: Some("tar".into()),
            connect_timeout_ms: Some(0),
            ..OptionsDict::default()
        };
        assert!(bad.parse_format().unwrap_err().contains("tar"));
        assert!(bad.parse_connect_timeout().is_err());
    }

    #[test]
    fn a_key_travels_in_a_closed_pipe() {
        let key = Key::from_bytes([9; 32]);
        let mut o = OptionsDict::load(&LoadOptions::default().allow_unencrypted(true));
        assert_eq!(o.allow_unencrypted, Some(true));
        assert!(o.take_key().unwrap().is_none());
        o.key_fd = Some(key_pipe(&key).unwrap());
        assert_eq!(o.take_key().unwrap().unwrap().id(), key.id());
        assert!(o.key_fd.is_none());
        // A descriptor whose writer never closes gives an error, at once.
        let (read, _write) = rustix::pipe::pipe().unwrap();
        o.key_fd = Some(zbus::OwnedFd::from(read));
        let e = o.take_key().unwrap_err();
        assert!(e.contains("not written whole"), "{e}");
        // Nor does a wrong key reach the coordinator as one.
        let (read, write) = rustix::pipe::pipe().unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(write), b"short").unwrap();
        o.key_fd = Some(zbus::OwnedFd::from(read));
        let e = o.take_key().unwrap_err();
        assert!(e.contains("5 bytes that are not a key"), "{e}");
    }
}
