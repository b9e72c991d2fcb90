//! Runs a parsed command with the library.

use std::sync::Arc;

use dbus_vmstate::helper::{self, FileState};

use crate::cli::{self, Command, HelperArgs};

/// Runs `command`; returns the exit code.
pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Demo(args) => crate::demo::run(args),
        Command::DemoHelper(args) => crate::demo::run_helper(args),
        Command::Helper(args) => run_helper(args),
    }
}

fn run_helper(args: HelperArgs) -> anyhow::Result<i32> {
    let state = Arc::new(FileState::new(args.id, args.state_file));
    helper::serve_blocking(
        &args.socket,
        state,
        helper::Options::default().connect_timeout(args.connect_timeout),
    )?;
    Ok(cli::EXIT_OK)
}

/// The exit code for an error that ended a command.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<dbus_vmstate::Error>() {
        Some(dbus_vmstate::Error::Config { .. })
        | Some(dbus_vmstate::Error::Bind { .. })
        | Some(dbus_vmstate::Error::SocketInUse { .. })
        | Some(dbus_vmstate::Error::Connect { .. }) => cli::EXIT_USAGE,
        Some(_) => cli::EXIT_MIGRATION_FAILED,
        None => cli::EXIT_USAGE,
    }
}
