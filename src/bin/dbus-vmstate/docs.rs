//! `completions` and `man`: generated from the command-line definition, so
//! they never drift from it.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use clap::{Command, CommandFactory};
use clap_mangen::Man;

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
    // No `help` subcommand: it has no page, so no page may refer to one.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_pages(&cmd, &dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Stdout::new();
            render(&cmd, &mut out)?;
            out.flush()?;
        }
    }
    Ok(exit::OK)
}

/// One page per visible command, named as clap_mangen names them.
fn write_pages(cmd: &Command, dir: &Path) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let man = Man::new(cmd.clone());
    let mut file = std::fs::File::create(dir.join(man.get_filename()))?;
    render(cmd, &mut file)?;
    file.flush()
}

/// A page as clap_mangen renders it, except that the text after the
/// options (examples, exit codes) goes into a NOTES section verbatim, lines
/// kept as written: a reflowed example is a broken command.
fn render(cmd: &Command, out: &mut dyn Write) -> io::Result<()> {
    let man = Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    if let Some(notes) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        writeln!(out, ".SH NOTES\n.nf")?;
        for line in notes.to_string().lines() {
            writeln!(out, "{}", roff_line(line))?;
        }
        writeln!(out, ".fi")?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// One line of text for roff: backslashes and minus signs escaped, a
/// leading dot or quote kept from being read as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_keep_their_lines_and_no_page_names_a_help_command() {
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let mut page = Vec::new();
        render(cmd.find_subcommand("save").unwrap(), &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".SH NOTES\n.nf\n"), "{page}");
        assert!(!page.contains(".SH EXTRA"), "{page}");
        // The example stays one line.
        assert!(
            page.lines()
                .any(|l| l.starts_with("  dbus\\-vmstate save \\-\\-control")
                    && l.contains("\\-\\-output")),
            "{page}"
        );
        let mut top = Vec::new();
        render(&cmd, &mut top).unwrap();
        let top = String::from_utf8(top).unwrap();
        assert!(!top.contains("help(1)"), "{top}");
        assert!(top.contains("dbus\\-vmstate\\-save(1)"), "{top}");
    }

    #[test]
    fn roff_requests_are_not_triggered_by_text() {
        assert_eq!(roff_line(".hidden"), "\\&.hidden");
        assert_eq!(roff_line("a-b \\n"), "a\\-b \\en");
    }
}
