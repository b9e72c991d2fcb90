//! systemd socket activation: listening sockets handed over as inherited
//! file descriptors.
//!
//! A service manager binds the sockets itself and starts the process with
//! them open as descriptors 3, 4, ... and these variables set:
//! `LISTEN_PID` (the pid they are meant for), `LISTEN_FDS` (how many) and
//! `LISTEN_FDNAMES` (their names, colon-separated, from
//! `FileDescriptorName=` in the socket unit). [`take`] checks and takes
//! them, as `sd_listen_fds_with_names(3)` does.
//!
//! `dbus-vmstate serve` names each socket by the helper Id it is for, or
//! `control` for the control socket:
//!
//! ```ini
//! # vm0-vmstate-slirp.socket
//! [Socket]
//! ListenStream=/run/vm0/vmstate/slirp.sock
//! SocketMode=0600
//! FileDescriptorName=slirp
//! Service=vm0-vmstate.service
//! ```

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use socket2::{Domain, SockRef, Type};

use dbus_vmstate::Error;

use crate::sys;

/// The first inherited descriptor.
pub const LISTEN_FDS_START: RawFd = 3;

/// Most descriptors accepted, a guard against a corrupt `LISTEN_FDS`.
pub const MAX_LISTEN_FDS: usize = 4096;

/// One inherited listening socket.
#[derive(Debug)]
pub struct Socket {
    /// Its name from `LISTEN_FDNAMES` (`"unknown"` when none was given, as
    /// systemd does).
    pub name: String,
    /// The descriptor number it came as.
    pub fd: RawFd,
    /// The listening socket.
    pub listener: UnixListener,
}

fn config(reason: String) -> Error {
    Error::Config { reason }
}

/// Takes the listening Unix stream sockets passed to this process, and
/// removes the three variables from the environment, so that child
/// processes do not take them as theirs. Call it once, early, before other
/// threads start (it changes the environment); later calls return nothing.
///
/// No `LISTEN_PID`, or one naming another process, means no sockets were
/// passed to this process: an empty list.
///
/// # Errors
///
/// [`Error::Config`] when a variable is malformed, or a descriptor is not
/// an open, listening Unix stream socket.
pub fn take() -> Result<Vec<Socket>, Error> {
    let Some(pid) = var("LISTEN_PID")? else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| config(format!("LISTEN_PID={pid:?} is not a process id")))?;
    if pid != std::process::id() {
        tracing::debug!(pid, "LISTEN_PID names another process; no sockets taken");
        return Ok(Vec::new());
    }
    let count = var("LISTEN_FDS")?
        .ok_or_else(|| config("LISTEN_PID is set but LISTEN_FDS is not".to_string()))?;
    let count: usize = count
        .parse()
        .ok()
        .filter(|&n| n <= MAX_LISTEN_FDS)
        .ok_or_else(|| config(format!("LISTEN_FDS={count:?} is not a descriptor count")))?;
    let names: Vec<String> = match var("LISTEN_FDNAMES")? {
        Some(names) => names.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(config(format!(
            "LISTEN_FDNAMES has {} names for LISTEN_FDS={count} descriptors",
            names.len()
        )));
    }
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let Some(fds) = sys::take_inherited(LISTEN_FDS_START, count) else {
        return Ok(Vec::new());
    };
    let mut sockets = Vec::with_capacity(count);
    for ((fd, owned), name) in fds.into_iter().zip(names) {
        let listener = listener(fd, &name, owned)?;
        sockets.push(Socket { name, fd, listener });
    }
    Ok(sockets)
}

fn var(name: &str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(config(format!("{name} is not UTF-8"))),
    }
}

/// Checks that descriptor `fd`, taken from the service manager, is a
/// listening Unix stream socket, and marks it close-on-exec.
fn listener(fd: RawFd, name: &str, owned: std::io::Result<OwnedFd>) -> Result<UnixListener, Error> {
    let bad = |what: String| config(format!("passed descriptor {fd} ({name:?}) {what}"));
    let owned = owned.map_err(|e| bad(format!("is not open: {e}")))?;
    let sock = SockRef::from(&owned);
    sock.set_cloexec(true)
        .map_err(|e| bad(format!("cannot be made close-on-exec: {e}")))?;
    let kind = (sock.domain(), sock.r#type(), sock.is_listener());
    match kind {
        (Ok(Domain::UNIX), Ok(Type::STREAM), Ok(true)) => Ok(UnixListener::from(owned)),
        (Ok(Domain::UNIX), Ok(Type::STREAM), Ok(false)) => Err(bad("is not listening".into())),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            Err(bad(format!("is not a socket: {e}")))
        }
        _ => Err(bad("is not a Unix stream socket".into())),
    }
}

/// Sends `state` (`READY=1`, `STOPPING=1`, ...) to the service manager's
/// notification socket, as `sd_notify(3)` does. Returns `false` when no
/// `NOTIFY_SOCKET` is set (not started by a service manager that asks).
///
/// # Errors
///
/// When the datagram cannot be sent.
pub fn notify(state: &str) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;

    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(true)
}
