//! The command line: argument definitions only. `main.rs` runs them; the
//! exit codes the help text documents are in `exit.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Daemonless migration of VM helper-process state over peer-to-peer D-Bus.
#[derive(Debug, Parser)]
#[command(
    name = "dbus-vmstate",
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 migration failed (a helper failed, a stream was rejected),\n\
                  2 usage or I/O error; ended by SIGINT, SIGTERM or SIGHUP after cleaning up,\n\
                  a command dies of that signal (a shell shows 130, 143, 129).\n\
                  Start with: dbus-vmstate demo"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 1000)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        display_order = 1001
    )]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator: one socket per helper, plus a control socket.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Save every helper through a running `serve`, into a file or stdout.
    #[command(after_help = SAVE_HELP)]
    Save(SaveArgs),
    /// Load a state stream from a file or stdin through a running `serve`.
    #[command(after_help = LOAD_HELP)]
    Load(LoadArgs),
    /// Show the helpers of a running `serve`: connected, pid, uid, last transfers.
    #[command(
        after_help = "Example:\n  dbus-vmstate status --control /run/vm0/vmstate/control.sock"
    )]
    Status(StatusArgs),
    /// Verify a state stream and list what it holds, without restoring anything.
    #[command(after_help = INSPECT_HELP)]
    Inspect(InspectArgs),
    /// Convert a state stream between the native and QEMU formats, or
    /// take it out of or put it into a QEMU migration file.
    #[command(after_help = CONVERT_HELP)]
    Convert(ConvertArgs),
    /// Write a fresh stream key into a new file (mode 0600).
    #[command(after_help = KEYGEN_HELP)]
    Keygen(KeygenArgs),
    /// Serve a file's bytes, or a command's output, as a helper's state.
    #[command(after_help = HELPER_HELP)]
    Helper(HelperArgs),
    /// Migrate pseudo-random helper state end to end and verify every byte.
    #[command(after_help = "Example:\n  dbus-vmstate demo --helpers 4 --size 1M")]
    Demo(DemoArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
    /// Print the manual page, or write one page per command into a directory.
    #[command(after_help = MAN_HELP)]
    Man(ManArgs),
    /// A demo helper process (started by `demo`).
    #[command(hide = true)]
    DemoHelper(DemoHelperArgs),
}

const SERVE_HELP: &str = "\
Prints one line on stdout once every socket is bound (\"ready: ...\"), then
logs helper connections, disconnections and rejections, saves and loads on
stderr (-v for more, -q for errors only) until SIGTERM or SIGINT, when it
closes the connections and removes its socket files.

Socket activation: sockets passed by systemd (LISTEN_FDS, LISTEN_PID,
LISTEN_FDNAMES) are used instead of binding; name each one after its helper
Id, \"control\" for the control socket, or \"qemu\" for QEMU's socket
(FileDescriptorName=).

With --qemu-socket PATH, an unmodified QEMU started with
  -object dbus-vmstate,id=dv0,addr=unix:path=PATH,id-list=slirp,,swtpm
takes this coordinator for its D-Bus bus: QEMU's migration saves (all
helpers at once) and loads the helpers connected on their sockets, with no
dbus-daemon. Start serve first: QEMU refuses to start if nothing listens.

Example:
  dbus-vmstate serve --socket-dir /run/vm0/vmstate --id-list slirp,swtpm --optional swtpm";

const SAVE_HELP: &str = "\
A file output is atomic: the stream goes to a temporary file beside it,
which is synced and renamed only when the save succeeded.

Examples:
  dbus-vmstate save --control /run/vm0/vmstate/control.sock --output helpers.vmstate
  dbus-vmstate save --control src.sock --output - | ssh dst dbus-vmstate load --control dst.sock --input -";

const LOAD_HELP: &str = "\
The whole stream is read and verified before any helper is called.

Example:
  dbus-vmstate load --control /run/vm0/vmstate/control.sock --input helpers.vmstate";

const INSPECT_HELP: &str = "\
Exits 1 when the stream fails verification, saying what and where.

Example:
  dbus-vmstate inspect helpers.vmstate";

const CONVERT_HELP: &str = "\
The output file is written atomically. QEMU's format holds at most 1 MiB per
helper and has no checksums.

A QEMU migration file (what QEMU's migrate \"exec:cat > FILE\" writes, which
starts with QEVM) is read as its dbus-vmstate section's payload, and
--to qemu-migration --base FILE writes FILE again with the input's helpers
as that payload, every other byte unchanged. The file must hold exactly one
dbus-vmstate section and section footers (QEMU 7.x, any machine type since
2.5); the whole file is read into memory.

Examples:
  dbus-vmstate convert --to qemu helpers.vmstate helpers.payload
  dbus-vmstate convert --to native vm.migration helpers.vmstate
  dbus-vmstate convert --to qemu-migration --base vm.migration helpers.vmstate new.migration";

const HELPER_HELP: &str = "\
With --save-cmd, Save runs the command (with /bin/sh -c) and its stdout is
the state; with --load-cmd, Load runs the command with the state on its
stdin. A command that exits non-zero fails the call with its exit status.

Examples:
  dbus-vmstate helper --socket /run/vm0/vmstate/slirp.sock --id slirp --state-file slirp.state
  dbus-vmstate helper --socket /run/vm0/vmstate/db.sock --id db \\
      --save-cmd 'mydb dump' --load-cmd 'mydb restore'";

const COMPLETIONS_HELP: &str = "\
Example:
  dbus-vmstate completions bash > /etc/bash_completion.d/dbus-vmstate";

const MAN_HELP: &str = "\
Examples:
  dbus-vmstate man | man -l -
  dbus-vmstate man --dir /usr/local/share/man/man1";

/// What `convert` reads or writes: a stream format, or a whole QEMU
/// migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvertFormat {
    /// dbus-vmstate's versioned, checksummed format.
    Native,
    /// The payload of QEMU's dbus-vmstate migration section.
    Qemu,
    /// A whole QEMU migration file: its dbus-vmstate section's payload.
    QemuMigration,
}

/// A stream format, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// dbus-vmstate's versioned, checksummed format.
    Native,
    /// The payload of QEMU's dbus-vmstate migration section.
    Qemu,
}

impl From<FormatArg> for dbus_vmstate::stream::Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Native => dbus_vmstate::stream::Format::Native,
            FormatArg::Qemu => dbus_vmstate::stream::Format::Qemu,
        }
    }
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of the sockets, created (mode 0700) if missing.
    #[arg(long, value_name = "DIR")]
    pub socket_dir: PathBuf,
    /// The helpers to expect, one socket DIR/<ID>.sock each.
    #[arg(long, value_name = "ID,...", value_delimiter = ',', required = true)]
    pub id_list: Vec<String>,
    /// Helpers that may be absent: skipped with a warning.
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub optional: Vec<String>,
    /// The control socket [default: DIR/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Also listen for QEMU here: QEMU's `-object
    /// dbus-vmstate,addr=unix:path=PATH,...` then uses this coordinator as
    /// its D-Bus bus, with no dbus-daemon.
    #[arg(long, value_name = "PATH")]
    pub qemu_socket: Option<PathBuf>,
    /// Also accept helpers running as this uid (repeatable); by default
    /// only this process's own uid.
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// How long one helper's Save or Load call may take, in seconds.
    #[arg(long, default_value = "30", value_parser = parse_seconds, value_name = "SECONDS")]
    pub timeout: Duration,
    /// How long a save or load waits for required helpers to connect, in
    /// seconds (a client's --timeout overrides it).
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "SECONDS")]
    pub connect_timeout: Duration,
    /// The most memory the states of plain helpers (those without the
    /// streaming extension) may hold at once (bytes; K, M, G suffixes are
    /// powers of 1024); a load keeps the rest in a temporary file.
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "BYTES")]
    pub memory_limit: u64,
}

/// `save` arguments.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The control socket of the `serve` to save through.
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
    /// Where the state stream goes: a file, or - for stdout.
    #[arg(long, value_name = "FILE|-")]
    pub output: PathBuf,
    /// The stream format to write [default: native].
    #[arg(long, value_enum, default_value_t = FormatArg::Native, hide_default_value = true)]
    pub format: FormatArg,
    /// Compress each chunk with zstd when that makes it shorter (native
    /// format version 2).
    #[arg(long)]
    pub compress: bool,
    /// Encrypt and authenticate the stream with this key file (see
    /// `keygen`; /dev/fd/N for a key passed on a descriptor).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// How long to wait for every required helper to connect, in seconds
    /// [default: the serve's --connect-timeout].
    #[arg(long, value_parser = parse_seconds, value_name = "SECONDS")]
    pub timeout: Option<Duration>,
    /// Print the report as JSON (on stdout, or on stderr when stdout
    /// carries the stream).
    #[arg(long)]
    pub json: bool,
}

/// `load` arguments.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The control socket of the `serve` to load through.
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
    /// Where the state stream comes from: a file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub input: PathBuf,
    /// The stream's format [default: detected from its first bytes].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    #[command(flatten)]
    pub key: ReadKeyArgs,
    /// How long to wait for every required helper to connect, in seconds
    /// [default: the serve's --connect-timeout].
    #[arg(long, value_parser = parse_seconds, value_name = "SECONDS")]
    pub timeout: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The control socket of the `serve` to ask.
    #[arg(long, value_name = "PATH")]
    pub control: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keygen` arguments.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key file to create; an existing file is never overwritten.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

const KEYGEN_HELP: &str = "\
The key is 64 hexadecimal digits and a newline; `save --key-file` encrypts
and authenticates a stream with it, `load`, `inspect` and `convert` read
such a stream with it. Only the key's id is ever printed.

Example:
  dbus-vmstate keygen /etc/vmstate/migration.key";

/// Reading an encrypted stream.
#[derive(Debug, Args)]
pub struct ReadKeyArgs {
    /// The key file of an encrypted stream (64 hex digits or 32 bytes,
    /// private to its owner; /dev/fd/N for a key passed on a descriptor).
    /// With a key, an unencrypted stream is refused.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// With --key-file, accept an unencrypted stream too.
    #[arg(long, requires = "key_file")]
    pub allow_unencrypted: bool,
}

/// `inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The stream file, or - for stdin.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
    #[command(flatten)]
    pub key: ReadKeyArgs,
    /// The stream's format [default: detected from its first bytes].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `convert` arguments.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The format to write.
    #[arg(long, value_enum)]
    pub to: ConvertFormat,
    /// The input's format [default: detected from its first bytes].
    #[arg(long, value_enum)]
    pub from: Option<ConvertFormat>,
    /// With --to qemu-migration: the QEMU migration file whose
    /// dbus-vmstate section the output replaces (or - for stdin).
    #[arg(long, value_name = "FILE", required_if_eq("to", "qemu-migration"))]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub key: ReadKeyArgs,
    /// With --to native: compress the output (format version 2).
    #[arg(long)]
    pub compress: bool,
    /// With --to native: encrypt the output with this key file (format
    /// version 2).
    #[arg(long, value_name = "FILE")]
    pub output_key_file: Option<PathBuf>,
    /// The input stream file, or - for stdin.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// The output file (written atomically), or - for stdout.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
}

/// `completions` arguments.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man` arguments.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write dbus-vmstate.1 and one dbus-vmstate-COMMAND.1 per command into
    /// this directory instead of printing dbus-vmstate.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of helper processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub helpers: u32,
    /// State size of each helper (bytes; K, M, G suffixes are powers of 1024).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub size: u64,
    /// Work directory for sockets and the stream file (default: a new
    /// temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Timeout of each Save and Load call, in seconds.
    #[arg(long, default_value = "60", value_parser = parse_seconds, value_name = "SECONDS")]
    pub timeout: Duration,
    /// Helpers serve only QEMU's org.qemu.VMState1 (state inside one D-Bus
    /// message, at most 128 MiB), not the streaming extension.
    #[arg(long)]
    pub plain: bool,
}

/// `helper` arguments.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("state").required(true).multiple(true).args(["state_file", "save_cmd", "load_cmd"])
))]
pub struct HelperArgs {
    /// The coordinator's socket for this helper.
    #[arg(long)]
    pub socket: PathBuf,
    /// The helper's Id (1 to 255 bytes).
    #[arg(long)]
    pub id: String,
    /// The file holding the state.
    #[arg(long, conflicts_with_all = ["save_cmd", "load_cmd"], value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Save runs this shell command; its stdout is the state.
    #[arg(long, value_name = "CMD")]
    pub save_cmd: Option<String>,
    /// Load runs this shell command with the state on its stdin.
    #[arg(long, value_name = "CMD")]
    pub load_cmd: Option<String>,
    /// How long to wait for the socket to appear, in seconds.
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "SECONDS")]
    pub connect_timeout: Duration,
}

/// Hidden `demo-helper` arguments.
#[derive(Debug, Args)]
pub struct DemoHelperArgs {
    /// The coordinator's socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The helper's Id.
    #[arg(long)]
    pub id: String,
    /// State size in bytes.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Seed of the pseudo-random state.
    #[arg(long)]
    pub seed: u64,
    /// Start empty and verify what is loaded instead of serving generated
    /// state.
    #[arg(long)]
    pub destination: bool,
    /// Serve only org.qemu.VMState1, not the streaming extension.
    #[arg(long)]
    pub plain: bool,
}

/// Parses a byte count: digits with an optional K, M, G or T suffix
/// (powers of 1024; `KiB`, `MiB`, ... and `B` are accepted too).
///
/// # Errors
///
/// A message saying what is wrong.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (e.g. 4096, 64K, 16M, 1G)"));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses seconds (fractions allowed).
///
/// # Errors
///
/// A message saying what is wrong.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4097"), Ok(4097));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("x").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
