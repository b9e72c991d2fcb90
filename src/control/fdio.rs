//! Reading and writing a file descriptor a caller passed: any kind (file,
//! pipe, socket), blocking or not, and cut off once the call is cancelled.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::sys::{self, Ready};

/// Which way a passed descriptor is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// The coordinator writes the stream into it (`Save`).
    Write,
    /// The coordinator reads the stream from it (`Load`).
    Read,
}

/// Checks that `fd` was opened for `direction`, so that a wrong descriptor
/// fails before any helper is called.
///
/// # Errors
///
/// A message saying what is wrong.
pub(super) fn check_access(fd: &impl AsFd, direction: Direction) -> Result<(), String> {
    let access = sys::access(fd).map_err(|e| format!("cannot query the file descriptor: {e}"))?;
    match direction {
        Direction::Write if !access.write => {
            Err("the file descriptor is not open for writing".to_string())
        }
        Direction::Read if !access.read => {
            Err("the file descriptor is not open for reading".to_string())
        }
        _ => Ok(()),
    }
}

/// A flag that cuts a [`Passed`] descriptor off: once it is set, every read
/// and write fails. Set it before dropping a save in progress, so that the
/// stream writer cannot finish the stream with helpers missing.
#[derive(Debug, Clone, Default)]
pub(super) struct CutOff(Arc<AtomicBool>);

impl CutOff {
    pub fn cut(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::Acquire) {
            Err(io::Error::other("the call was cancelled"))
        } else {
            Ok(())
        }
    }
}

/// A passed descriptor as a [`Read`] and [`Write`]. A non-blocking
/// descriptor (a shared pipe, say) is waited on with `poll(2)` instead of
/// failing with `EAGAIN`.
#[derive(Debug)]
pub(super) struct Passed {
    file: File,
    cut_off: CutOff,
    written: u64,
}

impl Passed {
    pub fn new(fd: OwnedFd, cut_off: CutOff) -> Self {
        Passed {
            file: File::from(fd),
            cut_off,
            written: 0,
        }
    }

    /// Bytes written through it so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

impl Read for Passed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.cut_off.check()?;
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sys::wait(&self.file, Ready::Read)?
                }
                other => return other,
            }
        }
    }
}

/// Seeks a regular file; fails on a pipe or socket (`ESPIPE`), which a
/// load then reads once.
impl Seek for Passed {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.cut_off.check()?;
        self.file.seek(pos)
    }
}

impl Write for Passed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.cut_off.check()?;
            match self.file.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sys::wait(&self.file, Ready::Write)?
                }
                Ok(n) => {
                    self.written += n as u64;
                    return Ok(n);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.cut_off.check()
    }
}

/// Runs a future and cuts its descriptor off when the future is dropped
/// before finishing, before the future itself is dropped.
pub(super) struct CutOffOnDrop<F> {
    cut_off: CutOff,
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> CutOffOnDrop<F> {
    pub fn new(cut_off: CutOff, inner: F) -> Self {
        CutOffOnDrop {
            cut_off,
            inner: Some(Box::pin(inner)),
        }
    }
}

impl<F: Future> Future for CutOffOnDrop<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.inner.as_mut() {
            Some(inner) => {
                let out = inner.as_mut().poll(cx);
                if out.is_ready() {
                    self.inner = None;
                }
                out
            }
            None => Poll::Pending,
        }
    }
}

impl<F> Drop for CutOffOnDrop<F> {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.cut_off.cut();
            self.inner = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_mode_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let ro = File::open(&path).unwrap();
        assert!(check_access(&ro, Direction::Read).is_ok());
        assert!(check_access(&ro, Direction::Write)
            .unwrap_err()
            .contains("not open for writing"));
        let wo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(check_access(&wo, Direction::Write).is_ok());
        assert!(check_access(&wo, Direction::Read).is_err());
    }

    #[test]
    fn nonblocking_descriptor_is_waited_on() {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        w.set_nonblocking(true).unwrap();
        let mut passed = Passed::new(OwnedFd::from(w), CutOff::default());
        let data = vec![7u8; 4 << 20]; // more than the socket buffers hold
        let reader = std::thread::spawn(move || {
            let mut r = r;
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        passed.write_all(&data).unwrap();
        assert_eq!(passed.bytes_written(), data.len() as u64);
        drop(passed);
        assert_eq!(reader.join().unwrap(), data);
    }

    #[test]
    fn cut_off_fails_writes_once_dropped_early() {
        let cut_off = CutOff::default();
        let (_r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut passed = Passed::new(OwnedFd::from(w), cut_off.clone());
        passed.write_all(b"before").unwrap();
        let pending = CutOffOnDrop::new(cut_off.clone(), futures::future::pending::<()>());
        drop(pending);
        assert!(passed.write_all(b"after").is_err());
        assert!(passed.flush().is_err());
    }
}
