//! Every raw system call of the library, and nothing else.
//!
//! The rest of the crate denies `unsafe_code`; what it needs from the
//! kernel beyond std and socket2 is here, as small safe functions. Most of
//! them are `rustix` calls, which are safe already (the kernel copies
//! `sendfile`, `splice` and `copy_file_range` among them); the `unsafe`
//! blocks are the `SO_PEERCRED` read (see [`peer_credentials`] for why not
//! rustix's), marking received bytes as initialized in [`recv_append`],
//! and the signal mask calls of [`without_sigpipe`].

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

/// Whether the peer of a readable `socket` closed it without sending a
/// byte, as a probe of whether something listens does. Never blocks.
pub(crate) fn closed_without_data(socket: &impl AsFd) -> bool {
    let mut byte = [0u8; 1];
    let peeked = rustix::net::recv(socket, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT);
    matches!(peeked, Ok((0, _)))
}

/// What a descriptor is, as far as choosing how to copy from or to it
/// goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file: `sendfile(2)` reads it, `copy_file_range(2)` copies
    /// between two of them.
    File,
    /// A pipe or FIFO: `splice(2)` moves pages in or out of it.
    Pipe,
    /// A socket, a terminal, a device.
    Other,
}

/// What `fd` is (`fstat(2)`).
///
/// # Errors
///
/// `fstat(2)`'s error.
pub(crate) fn kind(fd: &impl AsFd) -> io::Result<Kind> {
    let mode = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode);
    Ok(match mode {
        rustix::fs::FileType::RegularFile => Kind::File,
        rustix::fs::FileType::Fifo => Kind::Pipe,
        _ => Kind::Other,
    })
}

/// `sendfile(2)`: copies at most `count` bytes from the regular file `from`,
/// starting at its file offset (which it advances), to `to`, inside the
/// kernel. Returns the bytes copied: 0 at the end of the file.
///
/// # Errors
///
/// `sendfile(2)`'s error: `EINVAL` or `ENOSYS` where `to` cannot take it.
pub(crate) fn sendfile(to: &impl AsFd, from: &impl AsFd, count: usize) -> io::Result<usize> {
    Ok(rustix::fs::sendfile(to, from, None, count)?)
}

/// `copy_file_range(2)`: copies at most `count` bytes between two regular
/// files at their file offsets, inside the kernel (sharing extents where
/// the file system can). Returns the bytes copied: 0 at the end of `from`.
///
/// # Errors
///
/// `copy_file_range(2)`'s error: `EXDEV`, `EINVAL`, `EOPNOTSUPP` or
/// `ENOSYS` where the pair cannot take it.
pub(crate) fn copy_file_range(from: &impl AsFd, to: &impl AsFd, count: usize) -> io::Result<usize> {
    Ok(rustix::fs::copy_file_range(from, None, to, None, count)?)
}

/// `splice(2)`: moves at most `count` bytes from `from` to `to`, one of
/// which is a pipe, without copying them through user space. Returns the
/// bytes moved: 0 at end-of-file.
///
/// # Errors
///
/// `splice(2)`'s error: `EINVAL` where neither end is a pipe or the other
/// end does not support it.
pub(crate) fn splice(from: &impl AsFd, to: &impl AsFd, count: usize) -> io::Result<usize> {
    let flags = rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::MORE;
    Ok(rustix::pipe::splice(from, None, to, None, count, flags)?)
}

/// Asks for a pipe capacity of `bytes` (`F_SETPIPE_SZ`); returns the
/// capacity the pipe has now.
///
/// # Errors
///
/// `fcntl(2)`'s error: `EPERM` over the user's limit, `EBADF` for a
/// descriptor that is not a pipe.
pub(crate) fn set_pipe_size(pipe: &impl AsFd, bytes: usize) -> io::Result<usize> {
    rustix::pipe::fcntl_setpipe_size(pipe, bytes)?;
    Ok(rustix::pipe::fcntl_getpipe_size(pipe)?)
}

/// Runs `copy` with `SIGPIPE` blocked on this thread, and discards the
/// `SIGPIPE` that an `EPIPE` from it raised: `sendfile(2)` and `splice(2)`
/// into a socket or pipe whose reader is gone raise the signal (they have
/// no `MSG_NOSIGNAL`), which would kill a process that did not ignore it.
/// Here the copy fails with `EPIPE` ([`io::ErrorKind::BrokenPipe`]) and
/// nothing else happens.
///
/// A `SIGPIPE` already pending before the call stays pending.
///
/// # Errors
///
/// What `copy` returns.
pub(crate) fn without_sigpipe<T>(copy: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let pipe = sigset_of(&[libc::SIGPIPE]);
    let mut old = sigset_of(&[]);
    // SAFETY: both sets are initialized `sigset_t`s that outlive the call;
    // pthread_sigmask only changes this thread's mask.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old) } == 0;
    let mut pending = sigset_of(&[]);
    // SAFETY: `pending` is an initialized `sigset_t` for sigpending to fill.
    let was_pending = blocked
        && unsafe { libc::sigpending(&mut pending) } == 0
        // SAFETY: `pending` is an initialized `sigset_t`.
        && unsafe { libc::sigismember(&pending, libc::SIGPIPE) } == 1;
    let result = copy();
    let broke = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EPIPE));
    if blocked && broke && !was_pending {
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `pipe` and `now` are initialized and outlive the call; a
        // null info pointer is allowed. With a zero timeout it only takes
        // the pending SIGPIPE, if any (EAGAIN otherwise, ignored).
        unsafe { libc::sigtimedwait(&pipe, std::ptr::null_mut(), &now) };
    }
    // SAFETY: `old` is the mask pthread_sigmask saved above.
    if blocked && unsafe { libc::sigismember(&old, libc::SIGPIPE) } == 0 {
        // SAFETY: `old` is initialized; restoring it touches this thread only.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    result
}

/// A signal set holding `signals`.
fn sigset_of(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the whole set it is given.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialized by sigemptyset just above.
    let mut set = unsafe { set.assume_init() };
    for &signal in signals {
        // SAFETY: `set` is initialized and `signal` a valid signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
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
    fn a_peer_that_closes_silently_is_told_from_one_that_speaks() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        assert!(!closed_without_data(&a), "nothing happened yet");
        drop(b);
        assert!(closed_without_data(&a));
        d.write_all(b"\0AUTH\r\n").unwrap();
        drop(d);
        assert!(!closed_without_data(&c), "it sent bytes before closing");
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

    /// Set in the copy of the test binary that
    /// [`without_sigpipe_keeps_a_process_with_the_default_action_alive`]
    /// runs: `wrapped` or `bare`.
    const SIGPIPE_CHILD: &str = "DBUS_VMSTATE_TEST_SIGPIPE_CHILD";

    /// Sends a file into a socket whose peer is gone, with SIGPIPE's
    /// default action (which kills), inside [`without_sigpipe`] or not.
    fn sendfile_to_a_closed_peer(wrapped: bool) {
        // SAFETY: sets SIGPIPE's disposition to the default action; no
        // handler is involved. Only ever in a child process of its own.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7; 65536]).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let sent = if wrapped {
            without_sigpipe(|| sendfile(&a, &file, 65536))
        } else {
            sendfile(&a, &file, 65536)
        };
        assert_eq!(sent.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    /// The test re-runs itself in a child process: there SIGPIPE kills,
    /// as in a program that does not ignore it (Rust programs do). The
    /// bare `sendfile` must die of it (or this test proves nothing), the
    /// wrapped one must not.
    #[test]
    fn without_sigpipe_keeps_a_process_with_the_default_action_alive() {
        use std::os::unix::process::ExitStatusExt;
        match std::env::var(SIGPIPE_CHILD).as_deref() {
            Ok("wrapped") => return sendfile_to_a_closed_peer(true),
            Ok(_) => return sendfile_to_a_closed_peer(false),
            Err(_) => {}
        }
        let run = |mode: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "sys::tests::without_sigpipe_keeps_a_process_with_the_default_action_alive",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(SIGPIPE_CHILD, mode)
                .output()
                .unwrap()
        };
        let bare = run("bare");
        assert_eq!(bare.status.signal(), Some(libc::SIGPIPE), "{bare:?}");
        let wrapped = run("wrapped");
        assert!(wrapped.status.success(), "{wrapped:?}");
        let stdout = String::from_utf8_lossy(&wrapped.stdout);
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn wait_returns_once_readable() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        wait(&a, Ready::Read).unwrap();
        wait(&a, Ready::Write).unwrap();
    }
}
