//! The `dbus-vmstate` command.

mod activation;
mod cli;
mod client;
mod demo;
mod docs;
mod exec;
mod interrupt;
mod offline;
mod output;
mod progress;
mod run;
mod serve;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // A coordinator process logs helper connections by default.
    let base = u8::from(matches!(cli.command, cli::Command::Serve(_)));
    init_logging(base.saturating_add(cli.verbose), cli.quiet);
    let code = match run::run(cli.command, cli.quiet) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            run::exit_code(&e)
        }
    };
    std::process::exit(code);
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
