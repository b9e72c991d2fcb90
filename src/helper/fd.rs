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
use crate::iface;
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

/// The helper's end of a streaming load: what
/// [`State::load_from_stream`](super::State::load_from_stream) reads the
/// state from, a [`Read`] of the whole state, then end-of-file.
///
/// The state comes in one of two ways, and a reader fails unless it came
/// whole:
///
/// - **Announced** (`org.dbusvmstate.Stream1.LoadFd`): exactly the size
///   the coordinator announced ([`StreamIn::size`]), then end-of-file.
/// - **Sealed** (`org.dbusvmstate.SealedLoad1.LoadFd`, a load that starts
///   before the size is known): the state, then a 16-byte trailer (the
///   call's seal and the state's size), then end-of-file. The trailer is
///   never handed out as state: the reader keeps the last 16 bytes it
///   received back until end-of-file tells what they are.
///
/// Reading fails with [`io::ErrorKind::UnexpectedEof`] when the descriptor
/// ends early or without its seal (the coordinator aborted) and with
/// [`io::ErrorKind::InvalidData`] when more bytes follow, so a load that
/// propagates read errors never loads a partial state.
/// [`Read::read_to_end`] reserves an announced size at once and reads in
/// large blocks; [`StreamIn::copy_to`] lets the kernel move an announced
/// state into a pipe, or goes through one 1 MiB buffer.
#[derive(Debug)]
pub struct StreamIn {
    end: End,
    length: Length,
    received: u64,
    eof: bool,
}

/// How a [`StreamIn`] knows where the state ends.
#[derive(Debug)]
enum Length {
    /// The state is this many bytes.
    Announced(u64),
    /// The state ends with the trailer of this seal; `tail` holds the last
    /// `held` bytes received, not handed out yet.
    Sealed {
        seal: u64,
        tail: [u8; iface::SEAL_TRAILER_BYTES],
        held: usize,
    },
}

impl StreamIn {
    /// The end of an announced load of `size` bytes.
    pub(crate) fn new(fd: OwnedFd, size: u64) -> io::Result<Self> {
        Self::with(fd, Length::Announced(size))
    }

    /// The end of a sealed load whose call carried `seal`.
    pub(crate) fn sealed(fd: OwnedFd, seal: u64) -> io::Result<Self> {
        let tail = [0; iface::SEAL_TRAILER_BYTES];
        Self::with(
            fd,
            Length::Sealed {
                seal,
                tail,
                held: 0,
            },
        )
    }

    fn with(fd: OwnedFd, length: Length) -> io::Result<Self> {
        Ok(StreamIn {
            end: End::new(fd)?,
            length,
            received: 0,
            eof: false,
        })
    }

    /// The size of the state as the coordinator announced it before the
    /// first byte, or `None` for a sealed load, whose size is known only
    /// at its end.
    pub fn size(&self) -> Option<u64> {
        match self.length {
            Length::Announced(size) => Some(size),
            Length::Sealed { .. } => None,
        }
    }

    /// Writes the rest of the state into `out` and returns the bytes
    /// written; fails, as a read does, unless the whole state and then
    /// end-of-file arrived. `splice(2)` moves an announced state into a
    /// pipe (a command's stdin, say) inside the kernel; into a file or a
    /// socket, and a sealed state anywhere, the bytes go through one 1 MiB
    /// buffer (a sealed state's last 16 bytes must not reach `out` before
    /// they are known to be its seal). A regular file is written at its
    /// file offset.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::UnexpectedEof`] or [`io::ErrorKind::InvalidData`]
    /// as for a read; a write error of `out` (such as
    /// [`io::ErrorKind::BrokenPipe`] when a command stopped reading, never
    /// a `SIGPIPE`). Callers name `out` in the error they return.
    pub fn copy_to(&mut self, out: &impl AsFd) -> io::Result<u64> {
        let size = match self.length {
            Length::Announced(size) => size,
            Length::Sealed { .. } => {
                let mut out = File::from(out.as_fd().try_clone_to_owned()?);
                return copy::copy_blocks(self, &mut out);
            }
        };
        let left = size - self.received;
        let (n, _) = copy::copy(&self.end, out, left)?;
        self.received += n;
        if n < left {
            return Err(self.early_eof());
        }
        self.check_eof()?;
        Ok(n)
    }

    fn early_eof(&self) -> io::Error {
        let message = match self.length {
            Length::Announced(size) => format!(
                "the descriptor ended after {} of the {size} bytes announced",
                self.received
            ),
            Length::Sealed { .. } => format!(
                "the descriptor ended after {} bytes without the seal that commits the load \
                 (the coordinator aborted it)",
                self.received
            ),
        };
        io::Error::new(io::ErrorKind::UnexpectedEof, message)
    }

    /// Checks, after `load_from` returned, that it consumed the whole
    /// state and that end-of-file followed it.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        match self.length {
            Length::Announced(size) if self.received < size => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the state was loaded from {} of the {size} bytes sent",
                    self.received
                ),
            )),
            Length::Announced(_) => self.check_eof(),
            Length::Sealed { .. } if !self.eof => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the state was loaded from the first {} bytes sent, not up to its seal",
                    self.received
                ),
            )),
            Length::Sealed { .. } => Ok(()),
        }
    }

    /// After an announced state: checks that end-of-file follows.
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
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("more than the announced {} bytes arrived", self.received),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A sealed read: fills `buf` with state bytes, keeping the last
    /// [`iface::SEAL_TRAILER_BYTES`] received back; at end-of-file checks
    /// that they are the seal and the size.
    fn read_sealed(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const TRAILER: usize = iface::SEAL_TRAILER_BYTES;
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        let mut small = [0u8; 2 * TRAILER];
        let short = buf.len() <= TRAILER;
        loop {
            let Length::Sealed { seal, tail, held } = &mut self.length else {
                unreachable!("read_sealed on an announced state");
            };
            // The held bytes first, then what arrives behind them: into
            // `buf` itself, unless it is too short to take both.
            let into: &mut [u8] = if short {
                &mut small[..TRAILER + buf.len()]
            } else {
                &mut *buf
            };
            into[..*held].copy_from_slice(&tail[..*held]);
            let n = match self.end.read(&mut into[*held..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                let expected = iface::seal_trailer(*seal, self.received);
                let sealed = *held == TRAILER && tail[..] == expected[..];
                if sealed {
                    self.eof = true;
                    return Ok(0);
                }
                return Err(self.early_eof());
            }
            let have = *held + n;
            let out = have.saturating_sub(TRAILER);
            tail[..have - out].copy_from_slice(&into[out..have]);
            *held = have - out;
            if out > 0 {
                if short {
                    buf[..out].copy_from_slice(&small[..out]);
                }
                self.received += out as u64;
                return Ok(out);
            }
        }
    }
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
        let size = match self.length {
            Length::Announced(size) => size,
            Length::Sealed { .. } => return self.read_sealed(buf),
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let left = size - self.received;
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

    /// Reserves the rest of an announced size at once and receives into
    /// it without zero-filling it first: what the default
    /// [`State::load_from`](super::State::load_from) does with the whole
    /// state. A sealed state grows the buffer as it comes.
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let size = match self.length {
            Length::Announced(size) => size,
            Length::Sealed { .. } => return read_sealed_to_end(self, buf),
        };
        let left = usize::try_from(size - self.received).map_err(|_| too_large(size))?;
        buf.try_reserve_exact(left).map_err(|_| too_large(size))?;
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

/// [`Read::read_to_end`] of a sealed state, in large blocks.
fn read_sealed_to_end(input: &mut StreamIn, buf: &mut Vec<u8>) -> io::Result<usize> {
    let start = buf.len();
    loop {
        let at = buf.len();
        if buf.capacity() - at < copy::BLOCK_BYTES {
            buf.try_reserve(copy::BLOCK_BYTES)
                .map_err(|_| too_large(input.received + copy::BLOCK_BYTES as u64))?;
        }
        buf.resize(at + copy::BLOCK_BYTES, 0);
        let read = input.read_sealed(&mut buf[at..]);
        buf.truncate(at + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => return Ok(buf.len() - start),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
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

    /// A sealed load's end with `state` sent, then `trailer`, then
    /// end-of-file.
    fn sealed_in(state: &[u8], trailer: &[u8]) -> StreamIn {
        let (fd, mut peer) = pair();
        let (state, trailer) = (state.to_vec(), trailer.to_vec());
        std::thread::spawn(move || {
            peer.write_all(&state).unwrap();
            peer.write_all(&trailer).unwrap();
        });
        StreamIn::sealed(fd, 0x5EA1).unwrap()
    }

    #[test]
    fn a_sealed_reader_hands_out_the_state_without_its_trailer() {
        let data: Vec<u8> = (0..(2 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let seal = iface::seal_trailer(0x5EA1, data.len() as u64);
        let mut r = sealed_in(&data, &seal);
        assert_eq!(r.size(), None);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert!(got == data);
        r.finish().unwrap();
        // Read a few bytes at a time, shorter than the trailer.
        let mut r = sealed_in(&data[..100], &iface::seal_trailer(0x5EA1, 100));
        let mut got = Vec::new();
        let mut small = [0u8; 3];
        loop {
            match r.read(&mut small).unwrap() {
                0 => break,
                n => got.extend_from_slice(&small[..n]),
            }
        }
        assert_eq!(got, &data[..100]);
        r.finish().unwrap();
        // An empty state is its trailer alone.
        let mut r = sealed_in(&[], &iface::seal_trailer(0x5EA1, 0));
        assert_eq!(r.read_to_end(&mut Vec::new()).unwrap(), 0);
        r.finish().unwrap();
    }

    #[test]
    fn a_sealed_reader_fails_without_its_exact_seal() {
        let data = vec![7u8; 5000];
        let wrong_seal = iface::seal_trailer(0x5EA2, 5000);
        let wrong_size = iface::seal_trailer(0x5EA1, 4999);
        let cases: [(&str, &[u8], &[u8]); 4] = [
            ("no trailer (aborted)", &data, &[]),
            ("another call's seal", &data, &wrong_seal),
            ("another size", &data, &wrong_size),
            ("a short trailer", &data, &wrong_seal[..15]),
        ];
        for (what, state, trailer) in cases {
            let mut r = sealed_in(state, trailer);
            let err = r.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{what}");
            assert!(
                err.to_string().contains("without the seal"),
                "{what}: {err}"
            );
        }
        // Nothing at all.
        let mut r = sealed_in(&[], &[]);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_sealed_state_is_copied_without_its_trailer() {
        let data: Vec<u8> = (0..(1 << 20) + 9).map(|i| (i % 7) as u8).collect();
        let mut r = sealed_in(&data, &iface::seal_trailer(0x5EA1, data.len() as u64));
        let (mut rx, tx) = pipe();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        assert_eq!(r.copy_to(&tx).unwrap(), data.len() as u64);
        drop(tx);
        r.finish().unwrap();
        assert!(reader.join().unwrap() == data);
        // Unsealed, the copy fails.
        let mut r = sealed_in(&data, &[]);
        let out = tempfile::tempfile().unwrap();
        assert_eq!(
            r.copy_to(&out).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn finish_rejects_a_sealed_state_not_read_to_its_seal() {
        let data = vec![1u8; 64];
        let mut r = sealed_in(&data, &iface::seal_trailer(0x5EA1, 64));
        let mut some = [0u8; 8];
        r.read_exact(&mut some).unwrap();
        assert!(r
            .finish()
            .unwrap_err()
            .to_string()
            .contains("not up to its seal"));
    }

    fn pipe() -> (File, OwnedFd) {
        let (rx, tx) = crate::sys::pipe().unwrap();
        (File::from(rx), tx)
    }
}
