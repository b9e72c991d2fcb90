//! A progress line on stderr for long saves and loads, shown only when
//! stderr is a terminal.
//!
//! The coordinator reads or writes the stream through the descriptor the
//! client passes, so the client sees no bytes. To count them, the client
//! passes one end of a pipe instead and copies between the pipe and the
//! real file in a thread (a [`Pump`]). That costs one more copy, which is
//! why it is done only when a terminal is there to show the count.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{output, sys};

/// Transfers smaller than this show no progress line.
const SHOW_FROM_BYTES: u64 = 4 << 20;
/// Time between two redraws.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Copy buffer of a pump.
const PUMP_BUFFER_BYTES: usize = 1 << 20;
/// Pipe capacity asked for (the default 64 KiB makes many small copies).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Whether to show progress: stderr is a terminal and `-q` was not given.
pub fn wanted(quiet: bool) -> bool {
    !quiet && io::stderr().is_terminal()
}

/// The progress line of one transfer.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A progress line for `label` ("saving", "loading") of `total` bytes
    /// when known.
    pub fn new(label: &'static str, total: Option<u64>) -> Self {
        Progress {
            label,
            total,
            started: Instant::now(),
            last_draw: None,
        }
    }

    /// Redraws the line (at most every [`REDRAW_EVERY`]) once the transfer
    /// is known to be large.
    pub fn update(&mut self, done: u64) {
        let large = done >= SHOW_FROM_BYTES || self.total.is_some_and(|t| t >= SHOW_FROM_BYTES);
        let due = self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW_EVERY);
        if large && due {
            self.draw(done);
        }
    }

    fn draw(&mut self, done: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = output::bytes((done as f64 / secs) as u64);
        let line = match self.total {
            Some(total) if total > 0 => {
                let fraction = (done as f64 / total as f64).min(1.0);
                let filled = (fraction * 30.0) as usize;
                format!(
                    "{} [{:<30}] {:>3}% {} of {}, {rate}/s",
                    self.label,
                    "#".repeat(filled),
                    (fraction * 100.0) as u32,
                    output::bytes(done),
                    output::bytes(total)
                )
            }
            _ => format!("{} {}, {rate}/s", self.label, output::bytes(done)),
        };
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
        self.last_draw = Some(Instant::now());
    }

    /// Erases the line, if one was drawn.
    pub fn finish(&mut self) {
        if self.last_draw.take().is_some() {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// A pipe: (read end, write end), both close-on-exec, as large as the
/// system lets this user have it.
///
/// # Errors
///
/// When no pipe can be created.
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = sys::pipe()?;
    // Best effort: a smaller pipe only means more, smaller copies.
    let _ = sys::set_pipe_size(w.as_fd(), PIPE_BYTES);
    Ok((File::from(r), File::from(w)))
}

/// A thread copying from a reader to a writer and counting.
pub struct Pump(JoinHandle<io::Result<u64>>);

impl Pump {
    /// Starts copying everything from `from` into `to`, drawing `progress`.
    pub fn start<R, W>(mut from: R, mut to: W, mut progress: Progress) -> io::Result<Pump>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let thread = std::thread::Builder::new()
            .name("progress-pump".into())
            .spawn(move || {
                let mut buf = vec![0u8; PUMP_BUFFER_BYTES];
                let mut done = 0u64;
                let result = loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) => break Ok(done),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => break Err(e),
                    };
                    if let Err(e) = to.write_all(&buf[..n]) {
                        break Err(e);
                    }
                    done += n as u64;
                    progress.update(done);
                };
                progress.finish();
                result.and_then(|n| to.flush().map(|()| n))
            })?;
        Ok(Pump(thread))
    }

    /// Waits for the copy to end; returns the bytes copied.
    ///
    /// # Errors
    ///
    /// The read or write error that stopped it.
    pub fn join(self) -> io::Result<u64> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the progress thread panicked")))
    }
}
