//! Helper processes written on other D-Bus stacks: starting them, waiting
//! for them, and the data they serve.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::PYTHON;

/// How long a helper process may take to exit after its peer closed the
/// connection.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// A file under `tests/interop/`.
pub fn interop_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// The test pattern the helper scripts serve: byte `i` is
/// `(i % 251 + seed) mod 256`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

/// A Python helper script run by the system interpreter.
///
/// Tests that use one check `require(Requirement::PythonDbus)` first.
pub fn python_helper(script: &str) -> Command {
    let mut cmd = Command::new(PYTHON);
    // -B: leave no __pycache__ in the source tree.
    cmd.args(["-u", "-B"]).arg(interop_file(script));
    cmd
}

/// The sd-bus helper, compiled once per test run from
/// `tests/interop/sdbus_helper.c`. Tests that use it check
/// `require(Requirement::SdBus)` first (`cc`, `pkg-config`,
/// libsystemd-dev).
pub fn sdbus_helper() -> Command {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    let binary = BINARY.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdbus_helper");
        let flags = Command::new("pkg-config")
            .args(["--cflags", "--libs", "libsystemd"])
            .output()
            .expect("run pkg-config (install pkg-config)");
        assert!(
            flags.status.success(),
            "pkg-config finds no libsystemd (install libsystemd-dev): {}",
            String::from_utf8_lossy(&flags.stderr)
        );
        let flags = String::from_utf8(flags.stdout).expect("pkg-config output is UTF-8");
        let status = Command::new("cc")
            .args(["-std=c11", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(interop_file("sdbus_helper.c"))
            .args(flags.split_whitespace())
            .status()
            .expect("run cc");
        assert!(status.success(), "compiling sdbus_helper.c failed");
        out
    });
    Command::new(binary)
}

/// A running helper process, killed if the test drops it early.
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    /// Starts `cmd` with stderr captured.
    pub fn spawn(name: &str, mut cmd: Command) -> Process {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            child: Some(child),
        }
    }

    /// Waits for the process to exit and returns its status and stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("process not waited yet");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {EXIT_TIMEOUT:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }

    /// Waits for the process and asserts that it exited 0.
    pub fn expect_success(self) -> String {
        let name = self.name.clone();
        let (status, stderr) = self.wait();
        assert!(status.success(), "{name} exited with {status}:\n{stderr}");
        stderr
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
            // A test that failed early shows what the helper said.
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            if !stderr.is_empty() {
                eprintln!("--- {} stderr:\n{stderr}", self.name);
            }
        }
    }
}
