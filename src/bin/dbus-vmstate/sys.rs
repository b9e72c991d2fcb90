//! Every raw system call of the command, and nothing else: the only module
//! allowed `unsafe`.
//!
//! What std, socket2 and the library cannot do safely: a close-on-exec
//! pipe (`std::io::pipe` needs Rust 1.87, newer than the crate's
//! `rust-version`) and its size, taking ownership of descriptors inherited
//! from a service manager, and re-raising a signal with its default action.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A pipe: (read end, write end), both close-on-exec.
///
/// # Errors
///
/// The `pipe2(2)` error.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe capacity of `bytes` (`F_SETPIPE_SZ`).
///
/// # Errors
///
/// The `fcntl(2)` error, for instance when `bytes` is over the system's
/// limit for this user.
pub fn set_pipe_size(pipe: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours; the
    // descriptor is borrowed, so it is open for the call.
    if unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether [`take_inherited`] ran already.
static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the `count` descriptors from `start` on that a
/// service manager passed to this process (`LISTEN_FDS`); each entry is the
/// descriptor number and the descriptor, or the error telling it is not
/// open. Only the first call takes anything: later calls return `None`, so
/// no descriptor is ever owned twice.
pub fn take_inherited(start: RawFd, count: usize) -> Option<Vec<(RawFd, io::Result<OwnedFd>)>> {
    if INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    let fds = (0..count).map_while(|i| RawFd::try_from(i).ok().and_then(|i| start.checked_add(i)));
    Some(fds.map(|fd| (fd, take_one(fd))).collect())
}

fn take_one(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags, and fails cleanly
    // on a descriptor that is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open and was passed to this process by the
    // service manager (LISTEN_PID matched); nothing else in the process
    // owns it, and INHERITED_TAKEN makes sure it is taken only once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Restores the default action of `signo` and raises it, so the process
/// ends the way the signal would have ended it. Returns only when the
/// default action of `signo` is not to terminate.
pub fn reraise(signo: libc::c_int) {
    // SAFETY: restoring the default action and raising a signal have no
    // memory-safety preconditions.
    unsafe {
        libc::signal(signo, libc::SIG_DFL);
        libc::raise(signo);
    }
}
