//! The `dbus-vmstate` command.
//!
//! One module per command (`serve`, `save`, `load`, `status`, `inspect`,
//! `convert`, `helper`, `demo`, `docs` for `completions` and `man`), each a
//! `run` function returning the exit code; `main` parses the arguments with
//! `cli`, dispatches, and turns an error into its exit code with `exit`.
//! Shared by several commands: `stdio` (stream ends), `detect` (stream
//! files), `output`, `progress`, `interrupt`. Unsafe code lives only in
//! `sys`.

#![deny(unsafe_code)]

mod activation;
mod cli;
mod convert;
mod demo;
mod detect;
mod docs;
mod exec;
mod exit;
mod helper;
mod inspect;
mod interrupt;
mod keys;
mod load;
mod output;
mod progress;
mod save;
mod serve;
mod status;
mod stdio;
mod sys;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Command;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A coordinator process logs helper connections by default.
    let base = u8::from(matches!(cli.command, Command::Serve(_)));
    init_logging(base.saturating_add(cli.verbose), cli.quiet);
    match run(cli.command, cli.quiet) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Each cause once: a cause that repeats the end of the message
            // before it (an I/O error wrapped by zbus) is left out.
            let cause: &(dyn std::error::Error + 'static) = e.as_ref();
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                dbus_vmstate::error::chain(cause)
            );
            ExitCode::from(exit::code(&e))
        }
    }
}

/// Runs `command`; returns the exit code.
fn run(command: Command, quiet: bool) -> anyhow::Result<u8> {
    match command {
        Command::Serve(args) => serve::run(args),
        Command::Save(args) => save::run(args, quiet),
        Command::Load(args) => load::run(args, quiet),
        Command::Status(args) => status::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args, quiet),
        Command::Keygen(args) => keys::keygen(args),
        Command::Helper(args) => helper::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::DemoHelper(args) => demo::run_helper(args),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("DBUS_VMSTATE_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("dbus_vmstate={level},warn"))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
