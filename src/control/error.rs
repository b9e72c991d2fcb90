//! Errors of the control client, and the named D-Bus errors the control
//! server replies with.

use std::io;
use std::path::PathBuf;

use super::{
    ERROR_BUSY, ERROR_CANCELLED, ERROR_HELPER_FAILED, ERROR_IO, ERROR_NOT_CONNECTED,
    ERROR_STREAM_REJECTED,
};
use crate::error::Error as CoordinatorError;

/// What kind of failure a control call reported, from its D-Bus error name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`ERROR_HELPER_FAILED`](super::ERROR_HELPER_FAILED).
    HelperFailed,
    /// [`ERROR_NOT_CONNECTED`](super::ERROR_NOT_CONNECTED).
    NotConnected,
    /// [`ERROR_STREAM_REJECTED`](super::ERROR_STREAM_REJECTED).
    StreamRejected,
    /// [`ERROR_BUSY`](super::ERROR_BUSY).
    Busy,
    /// [`ERROR_IO`](super::ERROR_IO).
    Io,
    /// [`ERROR_CANCELLED`](super::ERROR_CANCELLED).
    Cancelled,
    /// `org.freedesktop.DBus.Error.InvalidArgs`: a bad option or fd.
    InvalidArgs,
    /// Any other error name.
    Other,
}

impl ErrorKind {
    /// The kind that the D-Bus error `name` stands for.
    pub fn from_name(name: &str) -> ErrorKind {
        match name {
            ERROR_HELPER_FAILED => ErrorKind::HelperFailed,
            ERROR_NOT_CONNECTED => ErrorKind::NotConnected,
            ERROR_STREAM_REJECTED => ErrorKind::StreamRejected,
            ERROR_BUSY => ErrorKind::Busy,
            ERROR_IO => ErrorKind::Io,
            ERROR_CANCELLED => ErrorKind::Cancelled,
            ERROR_INVALID_ARGS => ErrorKind::InvalidArgs,
            _ => ErrorKind::Other,
        }
    }

    /// Whether the migration itself failed (a helper, the stream, or the
    /// coordinator stopping), as opposed to a usage or I/O problem.
    pub fn is_migration_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::HelperFailed
                | ErrorKind::NotConnected
                | ErrorKind::StreamRejected
                | ErrorKind::Cancelled
        )
    }
}

/// Errors of [`Client`](super::Client).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control socket could not be reached.
    #[error("cannot connect to the control socket {}", path.display())]
    Connect {
        /// The control socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The D-Bus handshake on the control socket failed.
    #[error("D-Bus handshake failed on the control socket {}", path.display())]
    Handshake {
        /// The control socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<zbus::Error>,
    },

    /// The coordinator replied to a call with a D-Bus error.
    #[error("{method} failed: {message} [{name}]")]
    Failed {
        /// The method called (`Save`, `Load`, `Status`).
        method: &'static str,
        /// The kind of error, from its name.
        kind: ErrorKind,
        /// The D-Bus error name.
        name: String,
        /// The error message, which names the helper.
        message: String,
    },

    /// The key could not be passed (its pipe could not be made).
    #[error("cannot pass the stream key to the coordinator")]
    PassKey {
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The connection broke, or the reply was malformed.
    #[error("{method} call on the control socket failed")]
    Call {
        /// The method called.
        method: &'static str,
        /// The cause.
        #[source]
        source: Box<zbus::Error>,
    },
}

impl Error {
    /// The kind of a [`Error::Failed`] reply; `None` for local errors.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Failed { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether the migration failed (a helper, the stream, the coordinator
    /// going away mid-call) rather than the call being wrong or unable to
    /// reach the coordinator.
    pub fn is_migration_failure(&self) -> bool {
        match self {
            Error::Failed { kind, .. } => kind.is_migration_failure(),
            // The coordinator went away in the middle of the call.
            Error::Call { .. } => true,
            Error::Connect { .. } | Error::Handshake { .. } | Error::PassKey { .. } => false,
        }
    }

    pub(super) fn from_call(method: &'static str, e: zbus::Error) -> Error {
        match e {
            zbus::Error::MethodError(name, message, _) => {
                let name = name.to_string();
                Error::Failed {
                    method,
                    kind: ErrorKind::from_name(&name),
                    message: message.unwrap_or_default(),
                    name,
                }
            }
            zbus::Error::FDO(fdo) => {
                let name = zbus::DBusError::name(fdo.as_ref()).to_string();
                Error::Failed {
                    method,
                    kind: ErrorKind::from_name(&name),
                    message: zbus::DBusError::description(fdo.as_ref())
                        .unwrap_or_default()
                        .to_string(),
                    name,
                }
            }
            other => Error::Call {
                method,
                source: Box::new(other),
            },
        }
    }
}

/// `org.freedesktop.DBus.Error.InvalidArgs`.
pub(super) const ERROR_INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

/// An error the control server replies with: a name and a message.
///
/// Written by hand rather than derived, because the derive names every
/// error under one prefix and this interface also replies the standard
/// `InvalidArgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    name: &'static str,
    message: String,
}

impl Reply {
    fn new(name: &'static str, message: impl Into<String>) -> Reply {
        Reply {
            name,
            message: message.into(),
        }
    }

    /// [`ERROR_HELPER_FAILED`].
    pub fn helper_failed(message: impl Into<String>) -> Reply {
        Reply::new(ERROR_HELPER_FAILED, message)
    }

    /// [`ERROR_BUSY`].
    pub fn busy(message: impl Into<String>) -> Reply {
        Reply::new(ERROR_BUSY, message)
    }

    /// [`ERROR_IO`].
    pub fn io(message: impl Into<String>) -> Reply {
        Reply::new(ERROR_IO, message)
    }

    /// [`ERROR_CANCELLED`].
    pub fn cancelled(message: impl Into<String>) -> Reply {
        Reply::new(ERROR_CANCELLED, message)
    }

    /// `org.freedesktop.DBus.Error.InvalidArgs` with `message`.
    pub fn invalid_args(message: impl Into<String>) -> Reply {
        Reply::new(ERROR_INVALID_ARGS, message)
    }

    /// The reply for a failed save or load; the message is the error with
    /// its causes, naming every helper involved.
    pub fn from_coordinator(e: &CoordinatorError) -> Reply {
        let name = match classify(e) {
            ErrorKind::NotConnected => ERROR_NOT_CONNECTED,
            ErrorKind::StreamRejected => ERROR_STREAM_REJECTED,
            ErrorKind::Io => ERROR_IO,
            ErrorKind::Busy => ERROR_BUSY,
            _ => ERROR_HELPER_FAILED,
        };
        Reply::new(name, crate::error::chain(e))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Reply {}

impl zbus::DBusError for Reply {
    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::Message> {
        zbus::Message::error(call, self.name).build(&(self.message.as_str(),))
    }

    fn name(&self) -> zbus::names::ErrorName<'_> {
        zbus::names::ErrorName::from_static_str_unchecked(self.name)
    }

    fn description(&self) -> Option<&str> {
        Some(&self.message)
    }
}

impl From<zbus::Error> for Reply {
    fn from(e: zbus::Error) -> Reply {
        Reply::new("org.freedesktop.DBus.Error.Failed", e.to_string())
    }
}

/// The kind of reply a coordinator error becomes. Of several errors, a
/// rejected stream wins (nothing was loaded), then a failed helper; only
/// when every helper is missing is it [`ErrorKind::NotConnected`].
fn classify(e: &CoordinatorError) -> ErrorKind {
    match e {
        CoordinatorError::NotConnected { .. } => ErrorKind::NotConnected,
        CoordinatorError::Io { .. } => ErrorKind::Io,
        CoordinatorError::Busy { .. } => ErrorKind::Busy,
        e if e.is_stream() => ErrorKind::StreamRejected,
        CoordinatorError::Several { errors } => {
            let kinds: Vec<ErrorKind> = errors.iter().map(classify).collect();
            if kinds.contains(&ErrorKind::StreamRejected) {
                ErrorKind::StreamRejected
            } else if kinds.iter().all(|k| *k == ErrorKind::NotConnected) {
                ErrorKind::NotConnected
            } else {
                ErrorKind::HelperFailed
            }
        }
        _ => ErrorKind::HelperFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn not_connected(id: &str) -> CoordinatorError {
        CoordinatorError::NotConnected {
            id: id.into(),
            timeout: Duration::from_secs(1),
            last_rejection: None,
        }
    }

    #[test]
    fn coordinator_errors_map_to_named_replies() {
        let cases = [
            (not_connected("a"), ERROR_NOT_CONNECTED),
            (
                CoordinatorError::MissingInStream { id: "a".into() },
                ERROR_STREAM_REJECTED,
            ),
            (
                CoordinatorError::Timeout {
                    id: "a".into(),
                    call: crate::error::Call::Save,
                    timeout: Duration::from_secs(1),
                },
                ERROR_HELPER_FAILED,
            ),
            (
                CoordinatorError::Several {
                    errors: vec![not_connected("a"), not_connected("b")],
                },
                ERROR_NOT_CONNECTED,
            ),
            (
                CoordinatorError::Several {
                    errors: vec![
                        not_connected("a"),
                        CoordinatorError::TooLarge {
                            id: "b".into(),
                            size: 2,
                            limit: 1,
                            what: "test",
                        },
                    ],
                },
                ERROR_HELPER_FAILED,
            ),
        ];
        for (e, want) in cases {
            let reply = Reply::from_coordinator(&e);
            assert_eq!(zbus::DBusError::name(&reply).as_str(), want, "{e}");
            let message = zbus::DBusError::description(&reply).unwrap_or_default();
            assert!(message.contains("helper \"a\""), "{message}");
            assert!(ErrorKind::from_name(want).is_migration_failure());
        }
    }

    #[test]
    fn usage_errors_are_not_migration_failures() {
        for name in [
            ERROR_BUSY,
            ERROR_IO,
            "org.freedesktop.DBus.Error.InvalidArgs",
            "org.example.Whatever",
        ] {
            assert!(!ErrorKind::from_name(name).is_migration_failure(), "{name}");
        }
    }
}
