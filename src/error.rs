//! The library's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The D-Bus call or step on a helper that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// Reading the `Id` property.
    Id,
    /// `Save`.
    Save,
    /// `Load`.
    Load,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Id => "Id",
            Call::Save => "Save",
            Call::Load => "Load",
        })
    }
}

/// Errors of the coordinator and helper library.
///
/// Every variant about one helper carries its Id; [`Error::helper_id`]
/// returns it without a match.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (no helpers, duplicate Id, bad Id, ...).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// A helper's socket could not be set up.
    #[error("helper {id:?}: cannot listen on {}: {reason}", path.display())]
    Bind {
        /// The helper whose socket it is.
        id: String,
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        reason: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Another live process listens on a helper's socket path.
    #[error("helper {id:?}: socket {} is in use by a live listener", path.display())]
    SocketInUse {
        /// The helper whose socket it is.
        id: String,
        /// The socket path.
        path: PathBuf,
    },

    /// A required helper did not connect in time.
    #[error(
        "helper {id:?}: not connected after {timeout:?}{}",
        last_rejection.as_ref().map(|r| format!(" (a connection on its socket was rejected: {r})")).unwrap_or_default()
    )]
    NotConnected {
        /// The helper.
        id: String,
        /// How long the coordinator waited.
        timeout: Duration,
        /// Why the last connection on its socket was rejected, if one was.
        last_rejection: Option<String>,
    },

    /// Another save or load ran on the coordinator for longer than this
    /// one could wait: the coordinator runs one at a time.
    #[error("another operation is running ({running}); waited {waited:?}")]
    Busy {
        /// What runs: "a save for QEMU", "a load from the control socket"...
        running: String,
        /// How long this one waited.
        waited: Duration,
    },

    /// A D-Bus call on a helper failed (an error reply, a lost connection,
    /// a malformed reply).
    #[error("helper {id:?}: {call} call failed")]
    Call {
        /// The helper.
        id: String,
        /// Which call.
        call: Call,
        /// The D-Bus error.
        #[source]
        source: Box<zbus::Error>,
    },

    /// A helper did not answer a call in time.
    #[error("helper {id:?}: {call} call timed out after {timeout:?}")]
    Timeout {
        /// The helper.
        id: String,
        /// Which call.
        call: Call,
        /// The call's deadline.
        timeout: Duration,
    },

    /// A helper's state is larger than a limit.
    #[error("helper {id:?}: state of {size} bytes is over the limit of {limit} bytes ({what})")]
    TooLarge {
        /// The helper.
        id: String,
        /// The state's size.
        size: u64,
        /// The limit.
        limit: u64,
        /// Which limit.
        what: &'static str,
    },

    /// A helper's state does not fit in one D-Bus message, and the helper
    /// does not serve `org.dbusvmstate.Stream1`, which would carry it.
    #[error(
        "helper {id:?}: {call}: state{} does not fit in one D-Bus message (limit {limit} bytes), and the helper does not implement org.dbusvmstate.Stream1",
        size.map(|s| format!(" of {s} bytes")).unwrap_or_default()
    )]
    OverMessageLimit {
        /// The helper.
        id: String,
        /// Which call.
        call: Call,
        /// The state's size, when known.
        size: Option<u64>,
        /// The largest state one message carries for this call.
        limit: u64,
    },

    /// Moving a helper's state through its socket (the streaming path)
    /// failed, although the call itself did not report an error.
    #[error("helper {id:?}: {call} through its socket failed: {reason}")]
    Transfer {
        /// The helper.
        id: String,
        /// Which call.
        call: Call,
        /// What went wrong.
        reason: String,
        /// The I/O error on the coordinator's end, if there was one.
        #[source]
        source: Option<io::Error>,
    },

    /// The stream holds no state for a required helper.
    #[error("helper {id:?}: required, but the stream holds no state for it")]
    MissingInStream {
        /// The helper.
        id: String,
    },

    /// The stream holds state for a helper this coordinator does not know.
    #[error("helper {id:?}: the stream holds state for it, but it is not configured")]
    UnknownInStream {
        /// The Id found in the stream.
        id: String,
    },

    /// The state stream is malformed or fails verification.
    #[error("state stream rejected")]
    Stream(#[from] crate::stream::Error),

    /// Writing or reading the stream's file or descriptor failed.
    #[error("{what}{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The helper side could not reach or talk to its coordinator.
    #[error("helper {id:?}: {what} {}", path.display())]
    Connect {
        /// The helper's Id.
        id: String,
        /// The socket.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<zbus::Error>,
    },

    /// The coordinator turned this helper away, for the reason it gave
    /// (`org.dbusvmstate.Coordinator1.Rejected`): most often an `Id` that
    /// is not the one of the socket.
    #[error("helper {id:?}: the coordinator at {} rejected it: {reason}", path.display())]
    Rejected {
        /// The helper's Id.
        id: String,
        /// The socket.
        path: PathBuf,
        /// The coordinator's reason.
        reason: String,
    },

    /// Several helpers failed; each error is kept.
    #[error("{} helpers failed: {}", errors.len(), summary(errors))]
    Several {
        /// One error per failed helper, in configuration order.
        errors: Vec<Error>,
    },
}

fn summary(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| chain(e))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Formats an error with its chain of causes: `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

impl Error {
    /// Folds per-helper errors into one: the error itself when there is one.
    pub(crate) fn from_many(mut errors: Vec<Error>) -> Option<Error> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Error::Several { errors }),
        }
    }

    /// The Id of the helper this error is about, if it is about one.
    pub fn helper_id(&self) -> Option<&str> {
        match self {
            Error::Bind { id, .. }
            | Error::SocketInUse { id, .. }
            | Error::NotConnected { id, .. }
            | Error::Call { id, .. }
            | Error::Timeout { id, .. }
            | Error::TooLarge { id, .. }
            | Error::OverMessageLimit { id, .. }
            | Error::Transfer { id, .. }
            | Error::MissingInStream { id }
            | Error::UnknownInStream { id }
            | Error::Connect { id, .. }
            | Error::Rejected { id, .. } => Some(id),
            Error::Stream(e) => e.helper_id(),
            Error::Several { errors } => errors.first().and_then(Error::helper_id),
            Error::Config { .. } | Error::Io { .. } | Error::Busy { .. } => None,
        }
    }

    /// Whether the migration itself failed (a helper failed, timed out or
    /// was missing, or the stream was rejected), as opposed to the set-up
    /// around it (the configuration, a socket, the local file system).
    /// The command line exits 1 for the first kind and 2 for the second.
    pub fn is_migration_failure(&self) -> bool {
        match self {
            Error::Config { .. }
            | Error::Bind { .. }
            | Error::SocketInUse { .. }
            | Error::Connect { .. }
            | Error::Rejected { .. }
            | Error::Busy { .. }
            | Error::Io { .. } => false,
            Error::NotConnected { .. }
            | Error::Call { .. }
            | Error::Timeout { .. }
            | Error::TooLarge { .. }
            | Error::OverMessageLimit { .. }
            | Error::Transfer { .. }
            | Error::MissingInStream { .. }
            | Error::UnknownInStream { .. }
            | Error::Stream(_) => true,
            Error::Several { errors } => errors.iter().any(Error::is_migration_failure),
        }
    }

    /// Whether a deadline passed (a call timed out, a helper never came).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::NotConnected { .. } => true,
            Error::Several { errors } => errors.iter().any(Error::is_timeout),
            _ => false,
        }
    }

    /// Whether the stream failed verification (nothing was loaded).
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            Error::Stream(_) | Error::MissingInStream { .. } | Error::UnknownInStream { .. }
        )
    }

    /// The D-Bus error name, when a helper answered with an error reply.
    pub fn dbus_error_name(&self) -> Option<String> {
        match self {
            Error::Call { source, .. } => match source.as_ref() {
                zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
                zbus::Error::FDO(e) => Some(zbus::DBusError::name(e.as_ref()).to_string()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_without_a_path_has_no_stray_space() {
        let e = Error::Io {
            what: "cannot write the state stream",
            path: None,
            source: io::ErrorKind::BrokenPipe.into(),
        };
        assert_eq!(e.to_string(), "cannot write the state stream");
        assert_eq!(chain(&e), "cannot write the state stream: broken pipe");
        let e = Error::Io {
            what: "cannot open state stream",
            path: Some(PathBuf::from("/x/helpers.vmstate")),
            source: io::ErrorKind::NotFound.into(),
        };
        assert_eq!(e.to_string(), "cannot open state stream /x/helpers.vmstate");
    }
}
