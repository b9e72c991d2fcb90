//! The socket pair of one streamed transfer: the coordinator keeps one end
//! and passes the other to the helper in `SaveFd` or `LoadFd`.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use socket2::{Domain, Socket, Type};

use crate::sys;

/// Send buffer asked for on both ends, so each wake-up of the reading side
/// finds up to this much data waiting. The kernel caps it at
/// `net.core.wmem_max`.
pub(crate) const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Both ends of a connected `AF_UNIX` stream socket pair, close-on-exec and
/// blocking.
#[derive(Debug)]
pub(crate) struct Pair {
    /// The coordinator's end.
    pub ours: Socket,
    /// The end passed to the helper.
    pub theirs: OwnedFd,
}

impl Pair {
    /// Creates the pair.
    ///
    /// # Errors
    ///
    /// `socketpair(2)`'s error (out of descriptors).
    pub(crate) fn new() -> io::Result<Self> {
        let (ours, theirs) = Socket::pair(Domain::UNIX, Type::STREAM, None)?;
        for end in [&ours, &theirs] {
            // A smaller buffer only costs speed.
            let _ = end.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        }
        Ok(Pair {
            ours,
            theirs: theirs.into(),
        })
    }
}

/// Wakes whatever blocks on the coordinator's end and makes every further
/// read or write on it fail or see end-of-file.
pub(crate) fn abort(end: &Socket) {
    // ENOTCONN when the peer is gone already, which is the same outcome.
    let _ = end.shutdown(Shutdown::Both);
}

/// Receives into the spare capacity of `buf` until it holds `want` bytes
/// (at most its capacity) or the peer ends the stream. Returns whether
/// end-of-file was seen.
///
/// # Errors
///
/// `recv(2)`'s error.
pub(crate) fn fill(end: &Socket, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    let target = want.min(buf.capacity());
    while buf.len() < target {
        match sys::recv_append(end, buf, target - buf.len()) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Sends all of `data`, with `MSG_NOSIGNAL` so a helper that went away is
/// an `EPIPE` error and never a `SIGPIPE`.
///
/// # Errors
///
/// `send(2)`'s error.
pub(crate) fn send_all(end: &Socket, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match sys::send_nosignal(end, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn fill_reads_until_full_or_eof() {
        let pair = Pair::new().unwrap();
        let mut theirs = std::os::unix::net::UnixStream::from(pair.theirs);
        theirs.write_all(&[7; 100]).unwrap();
        let mut buf = Vec::with_capacity(64);
        assert!(!fill(&pair.ours, &mut buf, 1000).unwrap());
        assert_eq!(buf, vec![7; 64]);
        buf.clear();
        drop(theirs);
        assert!(fill(&pair.ours, &mut buf, 1000).unwrap());
        assert_eq!(buf.len(), 36);
    }

    #[test]
    fn send_to_a_closed_peer_is_epipe() {
        let pair = Pair::new().unwrap();
        drop(pair.theirs);
        let err = send_all(&pair.ours, &[0; 1 << 16]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn abort_wakes_a_blocked_reader() {
        let pair = Pair::new().unwrap();
        let control = pair.ours.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(16);
            fill(&pair.ours, &mut buf, 16).map(|eof| (eof, buf.len()))
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        abort(&control);
        assert_eq!(reader.join().unwrap().unwrap(), (true, 0));
        let mut theirs = std::os::unix::net::UnixStream::from(pair.theirs);
        assert_eq!(theirs.read(&mut [0; 4]).unwrap(), 0);
    }
}
