//! The ends of a state stream: a file, or `-` for stdin or stdout. A
//! binary stream is never read from or written to a terminal.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use dbus_vmstate::atomic::{written_in_place, OutputFile};

use crate::exit::Usage;

/// Read buffer for stream files.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Whether `path` is `-`: stdin or stdout.
pub fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Which standard stream a state stream would use.
#[derive(Debug, Clone, Copy)]
enum Standard {
    In,
    Out,
}

/// Refuses a terminal as the standard stream `end`. With `flag` (the
/// option naming a file instead), the message says what to do.
fn refuse_terminal(end: Standard, flag: Option<&str>) -> Result<(), Usage> {
    let (terminal, action, name) = match end {
        Standard::In => (
            io::stdin().is_terminal(),
            "read a state stream from",
            "stdin",
        ),
        Standard::Out => (
            io::stdout().is_terminal(),
            "write a binary state stream to",
            "stdout",
        ),
    };
    if !terminal {
        return Ok(());
    }
    let hint = flag
        .map(|flag| format!(": redirect {name} or give {flag}"))
        .unwrap_or_default();
    Err(Usage(format!("refusing to {action} a terminal{hint}")))
}

/// Refuses `-` for an output when stdout is a terminal, as
/// [`Output::create`] does: for a command that checks before it does any
/// work.
///
/// # Errors
///
/// [`Usage`] for a terminal.
pub fn check_output(path: &Path, flag: Option<&str>) -> Result<(), Usage> {
    if is_dash(path) {
        refuse_terminal(Standard::Out, flag)?;
    }
    Ok(())
}

/// Where a state stream comes from.
#[derive(Debug)]
pub enum Input {
    /// Standard input (`-`).
    Stdin(io::Stdin),
    /// A file, and its size when it is a regular file.
    File {
        /// The open file.
        file: File,
        /// Its path.
        path: PathBuf,
        /// Its size, for a regular file.
        len: Option<u64>,
    },
}

impl Input {
    /// Opens `path`, or stdin for `-` unless it is a terminal (`flag` is
    /// the option for the message, as in [`refuse_terminal`]).
    ///
    /// # Errors
    ///
    /// [`Usage`] for a terminal or a directory; the open error otherwise.
    pub fn open(path: &Path, flag: Option<&str>) -> anyhow::Result<Input> {
        if is_dash(path) {
            refuse_terminal(Standard::In, flag)?;
            return Ok(Input::Stdin(io::stdin()));
        }
        let cannot = || format!("cannot open {}", path.display());
        let file = File::open(path).with_context(cannot)?;
        let meta = file.metadata().with_context(cannot)?;
        if meta.is_dir() {
            return Err(Usage(format!("{} is a directory", path.display())).into());
        }
        let len = meta.is_file().then_some(meta.len());
        Ok(Input::File {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    /// What to call it in messages: `stdin` or the path.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin(_) => "stdin".to_string(),
            Input::File { path, .. } => path.display().to_string(),
        }
    }

    /// Its size, when it is a regular file.
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::Stdin(_) => None,
            Input::File { len, .. } => *len,
        }
    }

    /// A buffered reader of it.
    pub fn into_reader(self) -> Box<dyn Read> {
        match self {
            Input::Stdin(stdin) => Box::new(stdin.lock()),
            Input::File { file, .. } => Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, file)),
        }
    }
}

impl AsFd for Input {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Input::Stdin(stdin) => stdin.as_fd(),
            Input::File { file, .. } => file.as_fd(),
        }
    }
}

/// Where a state stream goes: stdout, or a file replaced atomically (an
/// existing FIFO or device, such as `/dev/null`, written in place).
#[derive(Debug)]
pub enum Output {
    /// Standard output (`-`).
    Stdout(io::Stdout),
    /// A file, which appears only when [`Output::commit`] succeeds (unless
    /// it is written in place).
    File(OutputFile),
}

impl Output {
    /// Creates the temporary file beside `path`, or takes stdout for `-`
    /// unless it is a terminal (`flag` is the option for the message, as
    /// in [`refuse_terminal`]).
    ///
    /// # Errors
    ///
    /// [`Usage`] for a terminal or a path with no file name; the error
    /// creating the temporary file otherwise.
    pub fn create(path: &Path, flag: Option<&str>) -> anyhow::Result<Output> {
        check_output(path, flag)?;
        if is_dash(path) {
            return Ok(Output::Stdout(io::stdout()));
        }
        match OutputFile::create(path) {
            Ok(file) => Ok(Output::File(file)),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(Usage(e.to_string()).into()),
            Err(e) if written_in_place(path) => {
                Err(anyhow::Error::new(e).context(format!("cannot open {}", path.display())))
            }
            Err(e) => {
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                Err(anyhow::Error::new(e).context(format!(
                    "cannot create a temporary file in {}",
                    dir.display()
                )))
            }
        }
    }

    /// The file path, or `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Output::Stdout(_) => None,
            Output::File(file) => Some(file.path()),
        }
    }

    /// Flushes stdout, or syncs the file and renames it over its path.
    ///
    /// # Errors
    ///
    /// When flushing, syncing or renaming fails.
    pub fn commit(self) -> anyhow::Result<()> {
        match self {
            Output::Stdout(mut stdout) => stdout.flush().context("cannot write to stdout"),
            Output::File(file) => {
                let what = format!("cannot write {}", file.path().display());
                file.commit().context(what)
            }
        }
    }
}

impl AsFd for Output {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Output::Stdout(stdout) => stdout.as_fd(),
            Output::File(file) => file.as_file().as_fd(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(stdout) => stdout.write(buf),
            Output::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(stdout) => stdout.flush(),
            Output::File(file) => file.flush(),
        }
    }
}
