//! Moving a state between two descriptors in as few system calls as the
//! kernel allows: `copy_file_range(2)` between regular files,
//! `sendfile(2)` out of a regular file, `splice(2)` into or out of a pipe,
//! and otherwise (a socket into a file, say) [`BLOCK_BYTES`] at a time
//! through one buffer.
//!
//! Each kernel path falls back to the next when its first call says the
//! pair cannot take it (`EINVAL`, `ENOSYS`, `EXDEV`, `EOPNOTSUPP`), before
//! any byte moved. Every copy runs with `SIGPIPE` blocked
//! ([`sys::without_sigpipe`]): a reader that went away is an
//! [`io::ErrorKind::BrokenPipe`] error, never a signal.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use crate::sys::{self, Kind};

/// The buffer of a copy that goes through user space, and the most one
/// kernel call is asked to move at once is [`KERNEL_CALL_BYTES`].
pub(crate) const BLOCK_BYTES: usize = 1 << 20;

/// The most one `sendfile`, `splice` or `copy_file_range` call is asked
/// for: under the kernel's own cap of 2 GiB less a page.
const KERNEL_CALL_BYTES: usize = 1 << 30;

/// The pipe capacity asked for before splicing through a pipe: a splice
/// moves at most what the pipe holds.
const PIPE_BYTES: usize = 1 << 20;

/// How the bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    CopyFileRange,
    Sendfile,
    Splice,
    Buffer,
}

/// Copies from `from` to `to` until `from` ends or `limit` bytes moved;
/// returns the bytes moved and how. Regular files are read and written at
/// their file offsets, which advance.
///
/// # Errors
///
/// The first failing call's error; the bytes moved before it are lost to
/// the caller, which gives up on the whole state anyway.
pub(crate) fn copy(from: &impl AsFd, to: &impl AsFd, limit: u64) -> io::Result<(u64, Method)> {
    let (from_kind, to_kind) = (sys::kind(from)?, sys::kind(to)?);
    sys::without_sigpipe(|| {
        let mut plan = Vec::with_capacity(3);
        if from_kind == Kind::File && to_kind == Kind::File {
            plan.push(Method::CopyFileRange);
        }
        if from_kind == Kind::File {
            plan.push(Method::Sendfile);
        }
        if from_kind == Kind::Pipe || to_kind == Kind::Pipe {
            plan.push(Method::Splice);
            // Best effort: a larger pipe means fewer, larger splices.
            for (fd, kind) in [(from.as_fd(), from_kind), (to.as_fd(), to_kind)] {
                if kind == Kind::Pipe {
                    let _ = sys::set_pipe_size(&fd, PIPE_BYTES);
                }
            }
        }
        for method in plan {
            match kernel_copy(method, from, to, limit) {
                Some(done) => return done.map(|n| (n, method)),
                None => continue,
            }
        }
        buffered(from, to, limit).map(|n| (n, Method::Buffer))
    })
}

/// One kernel path to the end; `None` when its first call says this pair
/// of descriptors cannot take it, so nothing moved and the next may try.
fn kernel_copy(
    method: Method,
    from: &impl AsFd,
    to: &impl AsFd,
    limit: u64,
) -> Option<io::Result<u64>> {
    let mut moved = 0u64;
    loop {
        let want = usize::try_from(limit - moved)
            .unwrap_or(usize::MAX)
            .min(KERNEL_CALL_BYTES);
        if want == 0 {
            return Some(Ok(moved));
        }
        let step = match method {
            Method::CopyFileRange => sys::copy_file_range(from, to, want),
            Method::Sendfile => sys::sendfile(to, from, want),
            Method::Splice => sys::splice(from, to, want),
            Method::Buffer => unreachable!("not a kernel path"),
        };
        match step {
            Ok(0) => return Some(Ok(moved)),
            Ok(n) => moved += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if moved == 0 && unsupported(&e) => return None,
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Whether a kernel copy's error means "not for this pair of descriptors".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP)
    )
}

/// Reads `from` into one [`BLOCK_BYTES`] buffer and writes each read out
/// whole, until `from` ends or `limit` bytes moved.
fn buffered(from: &impl AsFd, to: &impl AsFd, limit: u64) -> io::Result<u64> {
    let mut reader = std::fs::File::from(from.as_fd().try_clone_to_owned()?);
    let mut writer = std::fs::File::from(to.as_fd().try_clone_to_owned()?);
    copy_blocks(&mut (&mut reader).take(limit), &mut writer)
}

/// [`io::copy`] with a 1 MiB buffer (std's is 8 KiB, and it cannot see
/// the descriptors behind a `dyn Read` or `dyn Write`): one read and one
/// write per block, or per what a read returns. Returns the bytes moved.
///
/// # Errors
///
/// The first failing read's or write's error.
pub fn copy_blocks(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(moved),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        moved += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Seek, SeekFrom};
    use std::os::unix::net::UnixStream;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn pipe() -> (File, File) {
        let (r, w) = sys::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    /// Drains `peer` on a thread, so a copy larger than the socket
    /// buffer completes.
    fn drain(mut peer: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        })
    }

    #[test]
    fn file_to_socket_uses_sendfile_and_moves_every_byte() {
        let data = pattern(3 * BLOCK_BYTES + 17);
        let file = file_with(&data);
        let (a, b) = UnixStream::pair().unwrap();
        let got = drain(b);
        let (n, how) = copy(&file, &a, u64::MAX).unwrap();
        drop(a);
        assert_eq!((n, how), (data.len() as u64, Method::Sendfile));
        assert_eq!(got.join().unwrap(), data);
    }

    #[test]
    fn file_to_file_uses_copy_file_range() {
        let data = pattern(BLOCK_BYTES + 1);
        let (from, mut to) = (file_with(&data), tempfile::tempfile().unwrap());
        let (n, how) = copy(&from, &to, u64::MAX).unwrap();
        assert_eq!((n, how), (data.len() as u64, Method::CopyFileRange));
        let mut got = Vec::new();
        to.seek(SeekFrom::Start(0)).unwrap();
        to.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn socket_to_file_goes_through_a_buffer_and_stops_at_the_limit() {
        let data = pattern(2 * BLOCK_BYTES + 5);
        let (a, mut b) = UnixStream::pair().unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || b.write_all(&data))
        };
        let mut to = tempfile::tempfile().unwrap();
        let limit = data.len() as u64 - 5;
        let (n, how) = copy(&a, &to, limit).unwrap();
        assert_eq!((n, how), (limit, Method::Buffer));
        writer.join().unwrap().unwrap();
        // What is past the limit is still in the socket.
        let mut rest = [0u8; 5];
        (&a).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, &data[data.len() - 5..]);
        let mut got = Vec::new();
        to.seek(SeekFrom::Start(0)).unwrap();
        to.read_to_end(&mut got).unwrap();
        assert_eq!(got, &data[..data.len() - 5]);
    }

    #[test]
    fn pipe_to_socket_and_socket_to_pipe_splice() {
        let data = pattern(BLOCK_BYTES + 3);
        let (r, mut w) = pipe();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || w.write_all(&data))
        };
        let (a, b) = UnixStream::pair().unwrap();
        let forward = std::thread::spawn(move || copy(&r, &a, u64::MAX).unwrap());
        // The other way: out of the socket into a second pipe.
        let (r2, w2) = pipe();
        let got = drain(r2);
        let (n, how) = copy(&b, &w2, data.len() as u64).unwrap();
        drop(w2);
        writer.join().unwrap().unwrap();
        assert_eq!(forward.join().unwrap(), (data.len() as u64, Method::Splice));
        assert_eq!((n, how), (data.len() as u64, Method::Splice));
        assert_eq!(got.join().unwrap(), data);
    }

    #[test]
    fn short_and_empty_files_end_the_copy() {
        for len in [0, 1, 4095, 4096, 4097] {
            let data = pattern(len);
            let (a, b) = UnixStream::pair().unwrap();
            let got = drain(b);
            let (n, _) = copy(&file_with(&data), &a, u64::MAX).unwrap();
            drop(a);
            assert_eq!(n, len as u64);
            assert_eq!(got.join().unwrap(), data, "{len} bytes");
        }
    }

    #[test]
    fn a_reader_gone_is_broken_pipe_on_every_path() {
        let file = file_with(&pattern(BLOCK_BYTES));
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = copy(&file, &a, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "sendfile: {e}");
        let (r, mut w) = pipe();
        w.write_all(b"state").unwrap();
        drop(w);
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = copy(&r, &a, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "splice: {e}");
    }

    #[test]
    fn copy_from_a_write_only_descriptor_fails() {
        let (_r, w) = pipe();
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(copy(&w, &a, u64::MAX).is_err());
    }

    #[test]
    fn copy_blocks_moves_everything_in_large_writes() {
        /// Records the size of every write.
        struct Sizes(Vec<usize>);
        impl Write for Sizes {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = pattern(2 * BLOCK_BYTES + 1);
        let mut sizes = Sizes(Vec::new());
        let n = copy_blocks(&mut data.as_slice(), &mut sizes).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(sizes.0, [BLOCK_BYTES, BLOCK_BYTES, 1]);
    }
}
