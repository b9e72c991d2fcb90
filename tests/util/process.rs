//! Running the real binary: `serve` processes that are waited on until
//! ready, helper processes, signals, deadlines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to get ready or to exit.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dbus-vmstate"))
}

/// Runs the binary to completion (under [`DEADLINE`]).
pub fn run_bin<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let child = bin()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dbus-vmstate");
    wait_output(child)
}

/// Waits for a child's output, killing it after [`DEADLINE`].
pub fn wait_output(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for dbus-vmstate"),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("dbus-vmstate (pid {pid}) did not finish within {DEADLINE:?}");
        }
    }
}

/// Waits for a child to exit, killing it after [`DEADLINE`].
pub fn wait(child: &mut Child) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("pid {} did not exit within {DEADLINE:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to process `pid`.
#[allow(unsafe_code)] // tests only: a raw kill(2)
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Text of captured output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `cond` every 10 ms until it holds, panicking after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `--save-cmd` that touches `started`, then blocks until its helper
/// process is gone (at most [`DEADLINE`]) and prints "late": a `Save` that
/// is under way once `started` exists, and stays so for the test.
pub fn blocking_save_cmd(started: &Path) -> String {
    let polls = DEADLINE.as_millis() / 10;
    format!(
        "touch {}; i=0; while kill -0 $PPID 2>/dev/null && [ $i -lt {polls} ]; \
         do sleep 0.01; i=$((i+1)); done; echo late",
        started.display()
    )
}

/// A running `dbus-vmstate serve`, killed if still running when dropped.
pub struct Serve {
    pub child: Child,
    /// Its first stdout line.
    pub ready: String,
    /// The socket directory.
    pub dir: PathBuf,
    /// Its stderr, captured in this file.
    pub log: PathBuf,
}

impl Serve {
    /// Starts `serve --socket-dir dir ARGS...` and waits for its ready line.
    pub fn start(dir: &Path, args: &[&str]) -> Serve {
        Self::start_with(bin(), dir, args)
    }

    /// As [`Serve::start`], from a prepared command (environment, fds).
    pub fn start_with(mut cmd: Command, dir: &Path, args: &[&str]) -> Serve {
        let log = dir.with_extension("log");
        let mut child = cmd
            .arg("serve")
            .arg("--socket-dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("serve printed nothing within {DEADLINE:?}");
            }
        };
        assert!(
            ready.starts_with("ready: "),
            "serve's first line: {ready:?}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Serve {
            child,
            ready,
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// The default control socket.
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The control socket as an argument.
    pub fn control_arg(&self) -> String {
        self.control().display().to_string()
    }

    /// Sends `sig` and waits for the exit.
    pub fn stop(mut self, sig: libc::c_int) -> ExitStatus {
        signal(self.child.id(), sig);
        wait(&mut self.child)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `dbus-vmstate helper` process, killed when dropped.
pub struct Helper(pub Child);

impl Helper {
    /// `helper --socket dir/ID.sock --id ID` plus `args`.
    pub fn start(dir: &Path, id: &str, args: &[&str]) -> Helper {
        let child = bin()
            .arg("helper")
            .arg("--socket")
            .arg(dir.join(format!("{id}.sock")))
            .args(["--id", id])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn helper");
        Helper(child)
    }

    /// A helper serving the file `state`.
    pub fn file(dir: &Path, id: &str, state: &Path) -> Helper {
        Self::start(
            dir,
            id,
            &["--state-file", state.to_str().expect("utf-8 path")],
        )
    }

    /// Waits for the helper to exit.
    pub fn wait(mut self) -> ExitStatus {
        wait(&mut self.0)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts a process's exit code, showing its output when it differs.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Names of the entries of `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
