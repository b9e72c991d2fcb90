//! The helper's end of a streaming transfer: the descriptor the
//! coordinator passed, as the [`StreamOut`] that
//! [`State::save_to_stream`] fills and the [`StreamIn`] that
//! [`State::load_from_stream`] drains.
//!
//! [`State::save_to_stream`]: super::State::save_to_stream
//! [`State::load_from_stream`]: super::State::load_from_stream

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use socket2::{SockRef, Socket};

use super::copy;
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

impl AsFd for End {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            End::Socket(s) => s.as_fd(),
            End::Other(f) => f.as_fd(),
        }
    }
}

/// The helper's end of a streaming save (`SaveFd`): what
/// [`State::save_to_stream`](super::State::save_to_stream) writes the
/// state into, a [`Write`] straight into the coordinator's socket.
///
/// Every [`Write::write`] is one system call, so write large blocks. A
/// state that is in a file or comes out of a pipe moves without passing
/// through user space at all with [`StreamOut::copy_from`].
#[derive(Debug)]
pub struct StreamOut {
    end: End,
    written: u64,
}

impl StreamOut {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(StreamOut {
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

    /// Sends everything `input` yields until its end, and returns the
    /// bytes sent. The kernel copies them: `sendfile(2)` from a regular
    /// file (from its file offset, which advances), `splice(2)` from a
    /// pipe (enlarged to 1 MiB first where the system allows); anything
    /// else goes through one 1 MiB buffer.
    ///
    /// # Errors
    ///
    /// The failing call's error: [`io::ErrorKind::BrokenPipe`] when the
    /// coordinator closed its end (never a `SIGPIPE`), or a read error of
    /// `input`. Callers name `input` in the error they return.
    pub fn copy_from(&mut self, input: &impl AsFd) -> io::Result<u64> {
        let (n, _) = copy::copy(input, &self.end, u64::MAX)?;
        self.written += n;
        Ok(n)
    }
}

impl AsFd for StreamOut {
    /// The socket (or pipe) to the coordinator, for a helper that moves
    /// its state with system calls of its own. Bytes written through it
    /// are not counted in the size `SaveFd` replies with, which the
    /// coordinator checks against what it received: write through
    /// [`Write`] or [`StreamOut::copy_from`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.as_fd()
    }
}

impl Write for StreamOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.end.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The helper's end of a streaming load (`LoadFd`): what
/// [`State::load_from_stream`](super::State::load_from_stream) reads the
/// state from, a [`Read`] of exactly the announced size, then
/// end-of-file.
///
/// Reading fails with [`io::ErrorKind::UnexpectedEof`] when the descriptor
/// ends early (the coordinator aborted) and with
/// [`io::ErrorKind::InvalidData`] when more bytes follow, so a load that
/// propagates read errors never loads a partial state.
/// [`Read::read_to_end`] reserves the announced size at once and reads in
/// large blocks; [`StreamIn::copy_to`] lets the kernel move the state into
/// a pipe, or through one 1 MiB buffer into a file.
#[derive(Debug)]
pub struct StreamIn {
    end: End,
    size: u64,
    received: u64,
    eof: bool,
}

impl StreamIn {
    pub(crate) fn new(fd: OwnedFd, size: u64) -> io::Result<Self> {
        Ok(StreamIn {
            end: End::new(fd)?,
            size,
            received: 0,
            eof: false,
        })
    }

    /// The size of the state, as the coordinator announced it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes the rest of the state into `out` and returns the bytes
    /// written; fails, as a read does, unless the announced size and then
    /// end-of-file arrived. `splice(2)` moves the bytes into a pipe (a
    /// command's stdin, say) inside the kernel; into a file or socket they
    /// go through one 1 MiB buffer. A regular file is written at its file
    /// offset.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::UnexpectedEof`] or [`io::ErrorKind::InvalidData`]
    /// as for a read; a write error of `out` (such as
    /// [`io::ErrorKind::BrokenPipe`] when a command stopped reading, never
    /// a `SIGPIPE`). Callers name `out` in the error they return.
    pub fn copy_to(&mut self, out: &impl AsFd) -> io::Result<u64> {
        let left = self.size - self.received;
        let (n, _) = copy::copy(&self.end, out, left)?;
        self.received += n;
        if n < left {
            return Err(self.early_eof());
        }
        self.check_eof()?;
        Ok(n)
    }

    fn early_eof(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the descriptor ended after {} of the {} bytes announced",
                self.received, self.size
            ),
        )
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

impl AsFd for StreamIn {
    /// The socket (or pipe) from the coordinator, for a helper that moves
    /// its state with system calls of its own. Bytes read through it are
    /// not counted: the load then fails as one that did not consume the
    /// state. Read through [`Read`] or [`StreamIn::copy_to`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.as_fd()
    }
}

impl Read for StreamIn {
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
            return Err(self.early_eof());
        }
        self.received += n as u64;
        Ok(n)
    }

    /// Reserves the rest of the announced size at once and receives into
    /// it without zero-filling it first: what the default
    /// [`State::load_from`](super::State::load_from) does with the whole
    /// state.
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let left = usize::try_from(self.size - self.received).map_err(|_| too_large(self.size))?;
        buf.try_reserve_exact(left)
            .map_err(|_| too_large(self.size))?;
        let start = buf.len();
        while buf.len() - start < left {
            let want = left - (buf.len() - start);
            let n = match &self.end {
                End::Socket(s) => sys::recv_append(s, buf, want),
                End::Other(_) => {
                    let at = buf.len();
                    buf.resize(at + want.min(copy::BLOCK_BYTES), 0);
                    let read = self.end.read(&mut buf[at..]);
                    buf.truncate(at + *read.as_ref().unwrap_or(&0));
                    read
                }
            };
            match n {
                Ok(0) => return Err(self.early_eof()),
                Ok(n) => self.received += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.check_eof()?;
        Ok(left)
    }
}

fn too_large(size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("cannot hold a state of {size} bytes in memory"),
    )
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
        let mut w = StreamOut::new(fd).unwrap();
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
        let mut w = StreamOut::new(fd).unwrap();
        let err = w.write_all(&[0; 4096]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn reader_takes_exactly_the_announced_size() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abcdef").unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut r = StreamIn::new(fd, 6).unwrap();
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
        let mut r = StreamIn::new(fd, 6).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("3 of the 6"), "{err}");
    }

    #[test]
    fn reader_rejects_extra_bytes() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abcdefg").unwrap();
        drop(peer);
        let mut r = StreamIn::new(fd, 6).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn finish_rejects_a_partly_consumed_state() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abcdef").unwrap();
        drop(peer);
        let mut r = StreamIn::new(fd, 6).unwrap();
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert!(r.finish().unwrap_err().to_string().contains("2 of the 6"));
    }

    #[test]
    fn pipes_work_too() {
        let (mut rx, tx) = pipe();
        let mut w = StreamOut::new(tx).unwrap();
        w.write_all(b"xyz").unwrap();
        assert_eq!(w.finish().unwrap(), 3);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"xyz");
    }

    #[test]
    fn read_to_end_takes_the_announced_size_in_one_reservation() {
        let data: Vec<u8> = (0..(3 << 20) + 1).map(|i| i as u8).collect();
        let (fd, mut peer) = pair();
        let sent = data.clone();
        let writer = std::thread::spawn(move || peer.write_all(&sent));
        let mut r = StreamIn::new(fd, data.len() as u64).unwrap();
        let mut got = b"kept".to_vec();
        assert_eq!(r.read_to_end(&mut got).unwrap(), data.len());
        writer.join().unwrap().unwrap();
        assert_eq!(&got[..4], b"kept");
        assert_eq!(&got[4..], &data[..]);
        r.finish().unwrap();
    }

    #[test]
    fn read_to_end_rejects_early_eof_and_extra_bytes() {
        for (sent, size, wanted) in [(3, 6, "3 of the 6"), (7, 6, "more than the announced 6")] {
            let (fd, mut peer) = pair();
            peer.write_all(&vec![1; sent]).unwrap();
            drop(peer);
            let mut r = StreamIn::new(fd, size).unwrap();
            let err = r.read_to_end(&mut Vec::new()).unwrap_err();
            assert!(err.to_string().contains(wanted), "{err}");
        }
    }

    #[test]
    fn read_to_end_from_a_pipe() {
        let (rx, tx) = crate::sys::pipe().unwrap();
        let mut tx = File::from(tx);
        tx.write_all(b"piped state").unwrap();
        drop(tx);
        let mut r = StreamIn::new(rx, 11).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"piped state");
    }

    #[test]
    fn copy_to_a_pipe_moves_exactly_the_state() {
        let data: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i % 13) as u8).collect();
        let (fd, mut peer) = pair();
        let sent = data.clone();
        std::thread::spawn(move || peer.write_all(&sent));
        let (mut rx, tx) = pipe();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        let mut r = StreamIn::new(fd, data.len() as u64).unwrap();
        assert_eq!(r.copy_to(&tx).unwrap(), data.len() as u64);
        drop(tx);
        r.finish().unwrap();
        assert_eq!(reader.join().unwrap(), data);
    }

    #[test]
    fn copy_to_names_a_short_state() {
        let (fd, mut peer) = pair();
        peer.write_all(b"abc").unwrap();
        drop(peer);
        let mut r = StreamIn::new(fd, 6).unwrap();
        let out = tempfile::tempfile().unwrap();
        let err = r.copy_to(&out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("3 of the 6"), "{err}");
    }

    #[test]
    fn copy_from_a_file_counts_what_it_sent() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[9; 5000]).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let (fd, mut peer) = pair();
        let mut w = StreamOut::new(fd).unwrap();
        w.write_all(b"head").unwrap();
        assert_eq!(w.copy_from(&file).unwrap(), 5000);
        assert_eq!(w.finish().unwrap(), 5004);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 5004);
    }

    fn pipe() -> (File, OwnedFd) {
        let (rx, tx) = crate::sys::pipe().unwrap();
        (File::from(rx), tx)
    }
}
