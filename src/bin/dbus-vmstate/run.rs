//! Runs a parsed command with the library, and maps errors to exit codes.

use std::sync::Arc;

use dbus_vmstate::helper::{self, FileState, State};

use crate::cli::{self, Command, HelperArgs};

/// A usage error found after parsing (a terminal where a stream should
/// go, a bad name): exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A stream that failed verification or cannot be converted: exit code 1.
#[derive(Debug)]
pub struct Rejected(pub String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

/// Runs `command`; returns the exit code.
pub fn run(command: Command, quiet: bool) -> anyhow::Result<i32> {
    match command {
        Command::Serve(args) => crate::serve::run(args),
        Command::Save(args) => crate::client::save(args, quiet),
        Command::Load(args) => crate::client::load(args, quiet),
        Command::Status(args) => crate::client::status(args),
        Command::Inspect(args) => crate::offline::inspect(args),
        Command::Convert(args) => crate::offline::convert(args, quiet),
        Command::Helper(args) => run_helper(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Completions(args) => crate::docs::completions(args),
        Command::Man(args) => crate::docs::man(args),
        Command::DemoHelper(args) => crate::demo::run_helper(args),
    }
}

fn run_helper(args: HelperArgs) -> anyhow::Result<i32> {
    let state: Arc<dyn State> = match args.state_file {
        Some(path) => Arc::new(FileState::new(args.id, path)),
        None => Arc::new(crate::exec::ExecState::new(
            args.id,
            args.save_cmd,
            args.load_cmd,
        )),
    };
    helper::serve_blocking(
        &args.socket,
        state,
        helper::Options::default().connect_timeout(args.connect_timeout),
    )?;
    Ok(cli::EXIT_OK)
}

/// The exit code for an error that ended a command: 1 when the migration
/// itself failed (a helper, a rejected stream), 2 for usage and I/O
/// errors.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    // Markers attached with `.context(...)` are found through the error
    // itself; errors that are causes, through the chain.
    if e.downcast_ref::<Usage>().is_some() {
        return cli::EXIT_USAGE;
    }
    if e.downcast_ref::<Rejected>().is_some() {
        return cli::EXIT_MIGRATION_FAILED;
    }
    for cause in e.chain() {
        if cause.is::<Usage>() {
            return cli::EXIT_USAGE;
        }
        if cause.is::<Rejected>() {
            return cli::EXIT_MIGRATION_FAILED;
        }
        if let Some(e) = cause.downcast_ref::<dbus_vmstate::control::Error>() {
            return if e.is_migration_failure() {
                cli::EXIT_MIGRATION_FAILED
            } else {
                cli::EXIT_USAGE
            };
        }
        if let Some(e) = cause.downcast_ref::<dbus_vmstate::Error>() {
            return match e {
                dbus_vmstate::Error::Config { .. }
                | dbus_vmstate::Error::Bind { .. }
                | dbus_vmstate::Error::SocketInUse { .. }
                | dbus_vmstate::Error::Connect { .. }
                | dbus_vmstate::Error::Io { .. } => cli::EXIT_USAGE,
                _ => cli::EXIT_MIGRATION_FAILED,
            };
        }
    }
    cli::EXIT_USAGE
}
