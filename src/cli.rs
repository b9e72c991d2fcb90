//! The command line: argument definitions only. `main.rs` runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the migration failed (a helper failed, a stream was rejected,
/// the demo saw a mismatch).
pub const EXIT_MIGRATION_FAILED: i32 = 1;
/// Exit code: bad usage, or an I/O error outside the migration itself.
pub const EXIT_USAGE: i32 = 2;

/// Daemonless migration of VM helper-process state over peer-to-peer D-Bus.
#[derive(Debug, Parser)]
#[command(
    name = "dbus-vmstate",
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 migration failed, 2 usage or I/O error.\n\
                  Start with: dbus-vmstate demo"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate pseudo-random helper state end to end and verify every byte.
    #[command(after_help = "Example:\n  dbus-vmstate demo --helpers 4 --size 1M")]
    Demo(DemoArgs),
    /// Serve a file's bytes as helper state (Load replaces it atomically).
    #[command(
        after_help = "Example:\n  dbus-vmstate helper --socket /run/vm0/vmstate/slirp.sock --id slirp --state-file slirp.state"
    )]
    Helper(HelperArgs),
    /// A demo helper process (started by `demo`).
    #[command(hide = true)]
    DemoHelper(DemoHelperArgs),
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
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// `helper` arguments.
#[derive(Debug, Args)]
pub struct HelperArgs {
    /// The coordinator's socket for this helper.
    #[arg(long)]
    pub socket: PathBuf,
    /// The helper's Id (1 to 255 bytes).
    #[arg(long)]
    pub id: String,
    /// The file holding the state.
    #[arg(long)]
    pub state_file: PathBuf,
    /// How long to wait for the socket to appear, in seconds.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
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
