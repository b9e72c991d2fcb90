//! Tests that need a system stack the machine may lack. Such a test starts
//! with `if !require(Requirement::SdBus) { return; }`: where the stack is
//! missing it prints one line (past the harness's output capture, so a
//! plain `cargo test` shows it) naming the test and the Debian package that
//! enables it, and the test passes. CI sets [`REQUIRE_ALL`], which turns
//! every such skip into a failure with the same text.
//!
//! A new requirement is one variant and one arm in each of
//! [`Requirement::needs`] and [`Requirement::present`].

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Set (to anything) to fail instead of skipping.
pub const REQUIRE_ALL: &str = "DBUS_VMSTATE_REQUIRE_ALL_TESTS";

/// What a test can need of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Running as root (mounting a tmpfs, running a helper as another
    /// user).
    Root,
    /// sd-bus's headers and library, found by `pkg-config`, and `cc`.
    SdBus,
    /// `/usr/bin/python3` with PyGObject (GDBus) and dbus-python.
    PythonDbus,
    /// The `dbus-daemon` program.
    DbusDaemon,
    /// `qemu-system-x86_64`, which must run `--version`.
    Qemu,
    /// `/usr/bin/python3` with `cryptography` (AES-GCM, HKDF) and the
    /// `zstd` command, for the independent decoder of format version 2.
    PythonCrypto,
}

/// The system interpreter the Python helpers run under.
pub const PYTHON: &str = "/usr/bin/python3";

impl Requirement {
    /// What is missing and how to get it, as the skip line says it.
    pub fn needs(self) -> &'static str {
        match self {
            Requirement::Root => {
                "root (mounts a tmpfs or runs a helper as another user; CI runs as root)"
            }
            Requirement::SdBus => {
                "libsystemd-dev (sd-bus headers, found by pkg-config, compiled with cc; \
                 apt-get install libsystemd-dev pkg-config gcc)"
            }
            Requirement::PythonDbus => {
                "python3-gi and python3-dbus (PyGObject and dbus-python for /usr/bin/python3; \
                 apt-get install python3-gi gir1.2-glib-2.0 python3-dbus)"
            }
            Requirement::DbusDaemon => "dbus-daemon (apt-get install dbus-daemon)",
            Requirement::Qemu => "qemu-system-x86 (apt-get install qemu-system-x86)",
            Requirement::PythonCrypto => {
                "python3-cryptography and zstd (for /usr/bin/python3 and the zstd command; \
                 apt-get install python3-cryptography zstd)"
            }
        }
    }

    /// Whether the machine has it (checked afresh).
    fn present(self) -> bool {
        match self {
            Requirement::Root => super::euid() == 0,
            Requirement::SdBus => {
                succeeds(Command::new("pkg-config").args(["--exists", "libsystemd"]))
                    && succeeds(Command::new("cc").arg("--version"))
            }
            Requirement::PythonDbus => succeeds(Command::new(PYTHON).args([
                "-c",
                "import gi; gi.require_version('Gio', '2.0'); \
                 from gi.repository import Gio; import dbus, dbus.mainloop.glib",
            ])),
            Requirement::DbusDaemon => succeeds(Command::new("dbus-daemon").arg("--version")),
            Requirement::Qemu => succeeds(Command::new(super::qemu::PROGRAM).arg("--version")),
            Requirement::PythonCrypto => {
                succeeds(Command::new(PYTHON).args([
                    "-c",
                    "import cryptography.hazmat.primitives.ciphers.aead, \
                     cryptography.hazmat.primitives.kdf.hkdf",
                ])) && succeeds(Command::new("zstd").arg("--version"))
            }
        }
    }

    /// [`Requirement::present`], checked once per test binary.
    fn cached(self) -> bool {
        static SEEN: Mutex<Option<HashMap<Requirement, bool>>> = Mutex::new(None);
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        *seen
            .get_or_insert_with(HashMap::new)
            .entry(self)
            .or_insert_with(|| self.present())
    }
}

/// Whether `cmd` runs and exits 0 (its output discarded).
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if the machine has `what`. If not, prints
/// `skipped TEST: needs WHAT` to the real stderr and returns false, or
/// panics with that text when [`REQUIRE_ALL`] is set.
#[track_caller]
pub fn require(what: Requirement) -> bool {
    if what.cached() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("skipped {test}: needs {}", what.needs());
    if std::env::var_os(REQUIRE_ALL).is_some() {
        panic!("{line}");
    }
    // Not eprintln!: the harness captures that, and the line must show.
    let _ = writeln!(std::io::stderr(), "{line}");
    false
}
