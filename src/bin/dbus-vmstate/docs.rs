//! `completions` and `man`: generated from the command-line definition, so
//! they never drift from it.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::exit;
use crate::output::Stdout;

/// `dbus-vmstate completions SHELL`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    let mut out = Stdout::new();
    clap_complete::generate(args.shell, &mut cmd, "dbus-vmstate", &mut out);
    out.flush()?;
    Ok(exit::OK)
}

/// `dbus-vmstate man [--dir DIR]`.
pub fn man(args: ManArgs) -> anyhow::Result<u8> {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Stdout::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(exit::OK)
}
