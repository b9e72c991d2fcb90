//! `completions` and `man`: generated from the command-line definition, so
//! they never drift from it.

use std::io::{self, Write};

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{self, Cli, CompletionsArgs, ManArgs};

/// `dbus-vmstate completions SHELL`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    let mut out = io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "dbus-vmstate", &mut out);
    out.flush()?;
    Ok(cli::EXIT_OK)
}

/// `dbus-vmstate man [--dir DIR]`.
pub fn man(args: ManArgs) -> anyhow::Result<i32> {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = io::stdout().lock();
            let written = clap_mangen::Man::new(cmd)
                .render(&mut out)
                .and_then(|()| out.flush());
            quiet_on_closed_pipe(written)?;
        }
    }
    Ok(cli::EXIT_OK)
}

/// A reader that stopped early (`dbus-vmstate man | head`) is not an error.
fn quiet_on_closed_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
