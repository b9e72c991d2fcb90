//! Every raw system call of the library, and nothing else.
//!
//! The rest of the crate denies `unsafe_code`; what it needs from the
//! kernel beyond std and socket2 is here, as small safe functions. Most of
//! them are `rustix` calls, which are safe already; the two `unsafe` blocks
//! are the `SO_PEERCRED` read (see [`peer_credentials`] for why not
//! rustix's) and marking received bytes as initialized in [`recv_append`].

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::net::{RecvFlags, SendFlags};

/// The effective uid of this process.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The uid and pid of a Unix socket's peer (`SO_PEERCRED`), as they were
/// when it connected. The pid is 0 when the peer's process is not visible
/// in this process's pid namespace.
///
/// Read with libc rather than `rustix::net::sockopt::socket_peercred`,
/// whose `UCred` holds the pid as a non-zero type: the kernel's 0 for a
/// peer in another pid namespace would be an invalid value there.
///
/// # Errors
///
/// `getsockopt(2)`'s error (`ENOTSOCK`, say).
pub(crate) fn peer_credentials(socket: &impl AsFd) -> io::Result<(u32, i32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the descriptor is borrowed, so open for the call; `cred` and
    // `len` are valid for writes, `len` holds the size of `cred`, and every
    // bit pattern is a valid `ucred` (three plain integers).
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok((cred.uid, cred.pid))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Which ways a descriptor was opened (its `O_ACCMODE` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
}

/// Which ways `fd` was opened.
///
/// # Errors
///
/// `fcntl(F_GETFL)`'s error (a closed descriptor, say).
pub(crate) fn access(fd: &impl AsFd) -> io::Result<Access> {
    let mode = rustix::fs::fcntl_getfl(fd)? & OFlags::ACCMODE;
    Ok(Access {
        read: mode == OFlags::RDONLY || mode == OFlags::RDWR,
        write: mode == OFlags::WRONLY || mode == OFlags::RDWR,
    })
}

/// Puts `fd` in blocking mode. The flag belongs to the open file, so every
/// copy of the descriptor (a sender's too) sees the change.
///
/// # Errors
///
/// `fcntl(2)`'s error.
pub(crate) fn set_blocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    if flags.contains(OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(fd, flags - OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// What [`wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// Readable (or end-of-file, or an error).
    Read,
    /// Writable (or an error).
    Write,
}

/// Blocks until `fd` is ready for `ready`, or has an error or hang-up that
/// the next read or write reports. Retries on `EINTR`.
///
/// # Errors
///
/// `poll(2)`'s error.
pub(crate) fn wait(fd: &impl AsFd, ready: Ready) -> io::Result<()> {
    let events = match ready {
        Ready::Read => PollFlags::IN,
        Ready::Write => PollFlags::OUT,
    };
    let mut fds = [PollFd::new(fd, events)];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends from `buf` on a stream socket with `MSG_NOSIGNAL`, so a peer that
/// went away is an `EPIPE` error ([`io::ErrorKind::BrokenPipe`]) rather
/// than a `SIGPIPE`. Returns the bytes sent.
///
/// # Errors
///
/// `send(2)`'s error, `EINTR` included.
pub(crate) fn send_nosignal(socket: &impl AsFd, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(socket, buf, SendFlags::NOSIGNAL)?)
}

/// Receives at most `max` bytes from a stream socket into the spare
/// capacity of `buf`, and appends them to it without initializing the
/// spare capacity first. Returns the bytes received: 0 at end-of-file (or
/// when there is no room).
///
/// # Errors
///
/// `recv(2)`'s error, `EINTR` included.
pub(crate) fn recv_append(socket: &impl AsFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    let room = spare.len().min(max);
    if room == 0 {
        return Ok(0);
    }
    let ((received, _), _) = rustix::net::recv(socket, &mut spare[..room], RecvFlags::empty())?;
    let n = received.len();
    // SAFETY: recv initialized `received`, the first n bytes of the spare
    // capacity, and n <= room <= capacity - len.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// A pipe, close-on-exec: (read end, write end).
///
/// # Errors
///
/// `pipe2(2)`'s error.
#[cfg(test)]
pub(crate) fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_credentials_of_a_socket_pair_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (uid, pid) = peer_credentials(&a).unwrap();
        assert_eq!(uid, effective_uid());
        assert_eq!(pid, std::process::id() as i32);
    }

    #[test]
    fn peer_credentials_of_a_pipe_fail() {
        let (r, _w) = pipe().unwrap();
        assert!(peer_credentials(&r).is_err());
    }

    #[test]
    fn access_tells_read_and_write_ends_apart() {
        let (r, w) = pipe().unwrap();
        let both = |read, write| Access { read, write };
        assert_eq!(access(&r).unwrap(), both(true, false));
        assert_eq!(access(&w).unwrap(), both(false, true));
        let (s, _) = UnixStream::pair().unwrap();
        assert_eq!(access(&s).unwrap(), both(true, true));
    }

    #[test]
    fn set_blocking_clears_nonblocking() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        set_blocking(&a).unwrap();
        assert!(!rustix::fs::fcntl_getfl(&a)
            .unwrap()
            .contains(OFlags::NONBLOCK));
    }

    #[test]
    fn recv_append_stops_at_max_and_capacity() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[1; 100]).unwrap();
        let mut buf = Vec::with_capacity(64);
        buf.push(0);
        assert_eq!(recv_append(&a, &mut buf, 10).unwrap(), 10);
        assert_eq!(buf.len(), 11);
        let n = recv_append(&a, &mut buf, usize::MAX).unwrap();
        assert_eq!(buf.len(), 11 + n);
        assert!(buf.len() <= buf.capacity());
        drop(b);
        let mut rest = Vec::new();
        (&a).read_to_end(&mut rest).unwrap();
        assert_eq!(11 + n + rest.len(), 101);
    }

    #[test]
    fn send_nosignal_to_a_closed_peer_is_broken_pipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send_nosignal(&a, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn wait_returns_once_readable() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        wait(&a, Ready::Read).unwrap();
        wait(&a, Ready::Write).unwrap();
    }
}
