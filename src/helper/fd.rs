//! The helper's end of a streaming transfer: the descriptor the
//! coordinator passed, as the [`Write`] that [`State::save_to`] fills and
//! the [`Read`] that [`State::load_from`] drains.
//!
//! [`State::save_to`]: super::State::save_to
//! [`State::load_from`]: super::State::load_from

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use socket2::{SockRef, Socket};

use crate::sys;

/// A passed descriptor: a stream socket (what this crate's coordinator
/// passes) or anything else that reads and writes, such as a pipe.
#[derive(Debug)]
enum End {
    /// Written with `send(MSG_NOSIGNAL)`, so a peer that went away is an
    /// `EPIPE` error rather than a `SIGPIPE` that kills the helper.
    Socket(Socket),
    /// A pipe or other file. Writing to a pipe whose reader is gone raises
    /// `SIGPIPE`, which Rust programs ignore by default.
    Other(File),
}

impl End {
    /// Takes ownership of `fd` and puts it in blocking mode (the flag is
    /// shared with every copy of the descriptor, so a sender may have left
    /// it non-blocking).
    fn new(fd: OwnedFd) -> io::Result<Self> {
        if SockRef::from(&fd).r#type().is_ok() {
            let socket = Socket::from(fd);
            socket.set_nonblocking(false)?;
            Ok(End::Socket(socket))
        } else {
            sys::set_blocking(&fd)?;
            Ok(End::Other(File::from(fd)))
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            End::Socket(s) => sys::send_nosignal(s, buf),
            End::Other(f) => (&*f).write(buf),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            End::Socket(s) => (&*s).read(buf),
            End::Other(f) => (&*f).read(buf),
        }
    }
}

/// What [`State::save_to`](super::State::save_to) writes into on the
/// streaming path; counts the bytes for the `SaveFd` reply.
#[derive(Debug)]
pub(crate) struct FdWriter {
    end: End,
    written: u64,
}

impl FdWriter {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(FdWriter {
            end: End::new(fd)?,
            written: 0,
        })
    }

    /// Ends the state: shuts down the socket's writing side, so the
    /// coordinator sees end-of-file at once whatever copies of the
    /// descriptor still exist, and closes this copy. Returns the bytes
    /// written.
    pub(crate) fn finish(self) -> io::Result<u64> {
        if let End::Socket(s) = &self.end {
            match s.shutdown(std::net::Shutdown::Write) {
                Ok(()) => {}
                // The coordinator already closed its end; what it read is
                // for it to judge.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.written)
    }
}

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.end.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`State::load_from`](super::State::load_from) reads from on the
/// streaming path: exactly the announced size, then end-of-file.
///
/// Reading fails with [`io::ErrorKind::UnexpectedEof`] when the descriptor
/// ends early (the coordinator aborted) and with
/// [`io::ErrorKind::InvalidData`] when more bytes follow, so a `load_from`
/// that propagates read errors never loads a partial state.
#[derive(Debug)]
pub(crate) struct FdReader {
    end: End,
    size: u64,
    received: u64,
    eof: bool,
}

impl FdReader {
    pub(crate) fn new(fd: OwnedFd, size: u64) -> io::Result<Self> {
        Ok(FdReader {
            end: End::new(fd)?,
            size,
            received: 0,
            eof: false,
        })
    }

    /// Checks, after `load_from` returned, that it consumed the whole
    /// state and that end-of-file followed it.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if self.received < self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the state was loaded from {} of the {} bytes sent",
                    self.received, self.size
                ),
            ));
        }
        self.check_eof()
    }

    fn check_eof(&mut self) -> io::Result<()> {
        if self.eof {
            return Ok(());
        }
        let mut probe = [0u8; 1];
        loop {
            match self.end.read(&mut probe) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(_) => return more_data_error(self.size),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn more_data_error<T>(size: u64) -> io::Result<T> {
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("more than the announced {size} bytes arrived"),
    ))
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.size - self.received;
        if left == 0 {
            self.check_eof()?;
            return Ok(0);
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.end.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the descriptor ended after {} of the {} bytes announced",
                    self.received, self.size
                ),
            ));
        }
        self.received += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (OwnedFd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (OwnedFd::from(a), b)
    }

    #[test]
    fn writer_counts_and_ends_with_eof() {
        let (fd, mut peer) = pair();
        let mut w = FdWriter::new(fd).unwrap();
        w.write_all(b"hello").unwrap();
        assert_eq!(w.finish().unwrap(), 5);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
    }

    #[test]
    fn writer_to_a_closed_peer_is_an_error_not_a_signal() {
        let (fd, peer) = pair();
        drop(peer);
        let mut w = FdWriter::new(fd).unwrap();
        let err = w.write_all(&[0; 4096]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn reader_takes_exactly_the_announced_size() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abcdef").unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut r = FdReader::new(fd, 6).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcdef");
        r.finish().unwrap();
    }

    #[test]
    fn reader_rejects_early_eof() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abc").unwrap();
        drop(peer);
        let mut r = FdReader::new(fd, 6).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("3 of the 6"), "{err}");
    }

    #[test]
    fn reader_rejects_extra_bytes() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abcdefg").unwrap();
        drop(peer);
        let mut r = FdReader::new(fd, 6).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn finish_rejects_a_partly_consumed_state() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abcdef").unwrap();
        drop(peer);
        let mut r = FdReader::new(fd, 6).unwrap();
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert!(r.finish().unwrap_err().to_string().contains("2 of the 6"));
    }

    #[test]
    fn pipes_work_too() {
        let (mut rx, tx) = pipe();
        let mut w = FdWriter::new(tx).unwrap();
        w.write_all(b"xyz").unwrap();
        assert_eq!(w.finish().unwrap(), 3);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"xyz");
    }

    fn pipe() -> (File, OwnedFd) {
        let (rx, tx) = crate::sys::pipe().unwrap();
        (File::from(rx), tx)
    }
}
