//! `save`, `load` and `status`: clients of a running `serve`.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::Context;
use dbus_vmstate::control::{Client, LoadOptions, Report, SaveOptions};
use dbus_vmstate::rt;
use futures::future::{select, Either};
use futures::StreamExt;
use tempfile::NamedTempFile;

use crate::cli::{self, LoadArgs, SaveArgs, StatusArgs};
use crate::interrupt;
use crate::output;
use crate::progress::{self, Progress, Pump};
use crate::run::Usage;

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Where a report goes: stdout, unless stdout carries the stream.
fn report_out(stdout_is_stream: bool) -> Box<dyn Write> {
    if stdout_is_stream {
        Box::new(io::stderr())
    } else {
        Box::new(io::stdout())
    }
}

fn print_report(
    operation: &str,
    summary: String,
    report: &Report,
    json: bool,
    quiet: bool,
    stdout_is_stream: bool,
) -> anyhow::Result<()> {
    let mut out = report_out(stdout_is_stream);
    if json {
        output::print_json(&mut out, &output::report_json(operation, report))?;
    } else if !quiet {
        output::write_report(&mut out, &summary, report)?;
    }
    out.flush()?;
    Ok(())
}

/// A temporary file in the directory of `path`, for an atomic replace.
pub fn temp_beside(path: &Path) -> anyhow::Result<NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Usage(format!("{} is not a file name", path.display())))?;
    tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// Syncs `temp` and renames it over `path`, durably.
pub fn persist(temp: NamedTempFile, path: &Path) -> anyhow::Result<()> {
    let what = || format!("cannot write {}", path.display());
    temp.as_file().sync_all().with_context(what)?;
    temp.persist(path).map_err(|e| e.error).with_context(what)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(what)?;
    Ok(())
}

/// How a save or load call ended.
enum Outcome<T> {
    Done(T),
    Interrupted(async_signal::Signal),
}

/// `dbus-vmstate save`.
pub fn save(args: SaveArgs, quiet: bool) -> anyhow::Result<i32> {
    let mut options = SaveOptions::default().format(args.format.into());
    if let Some(t) = args.timeout {
        options = options.connect_timeout(t);
    }
    let to_stdout = is_dash(&args.output);
    let stdout = io::stdout();
    let temp = if to_stdout {
        if stdout.is_terminal() {
            return Err(Usage(
                "refusing to write a binary state stream to a terminal: redirect stdout or give --output FILE"
                    .into(),
            )
            .into());
        }
        None
    } else {
        Some(temp_beside(&args.output)?)
    };
    let dest: BorrowedFd<'_> = match &temp {
        Some(t) => t.as_file().as_fd(),
        None => stdout.as_fd(),
    };
    let show = progress::wanted(quiet);

    let outcome = rt::block_on(async {
        let mut signals = interrupt::signals()?;
        let client = Client::connect(&args.control).await?;
        let call = async {
            if show {
                let (r, w) = progress::pipe().context("cannot create a pipe")?;
                let to = File::from(dest.try_clone_to_owned()?);
                let pump = Pump::start(r, to, Progress::new("saving", None))?;
                let result = client.save(&w, &options).await;
                drop(w);
                let pumped = pump.join();
                let report = result?;
                pumped.context("cannot write the state stream")?;
                Ok::<_, anyhow::Error>(report)
            } else {
                Ok(client.save(&dest, &options).await?)
            }
        };
        let outcome = match select(Box::pin(call), signals.next()).await {
            Either::Left((result, _)) => Outcome::Done(result?),
            Either::Right((signal, _)) => match signal {
                Some(Ok(signal)) => Outcome::Interrupted(signal),
                _ => anyhow::bail!("signal handling failed"),
            },
        };
        client.close().await;
        Ok::<_, anyhow::Error>(outcome)
    });
    let report = match outcome {
        Ok(Outcome::Done(report)) => report,
        Ok(Outcome::Interrupted(signal)) => {
            // Removes the temporary file before the signal ends the process.
            drop(temp);
            interrupt::reraise(signal)
        }
        Err(e) => return Err(e),
    };
    let summary = match temp {
        Some(temp) => {
            persist(temp, &args.output)?;
            format!(
                "saved {} helpers into {} ({}, {})",
                report.helpers.len(),
                args.output.display(),
                report.format,
                output::bytes(report.stream_bytes.unwrap_or(0))
            )
        }
        None => format!(
            "saved {} helpers to stdout ({}, {})",
            report.helpers.len(),
            report.format,
            output::bytes(report.stream_bytes.unwrap_or(0))
        ),
    };
    print_report("save", summary, &report, args.json, quiet, to_stdout)?;
    Ok(cli::EXIT_OK)
}

/// `dbus-vmstate load`.
pub fn load(args: LoadArgs, quiet: bool) -> anyhow::Result<i32> {
    let mut options = LoadOptions::default();
    if let Some(f) = args.format {
        options = options.format(f.into());
    }
    if let Some(t) = args.timeout {
        options = options.connect_timeout(t);
    }
    let from_stdin = is_dash(&args.input);
    let stdin = io::stdin();
    let (file, total) = if from_stdin {
        if stdin.is_terminal() {
            return Err(Usage(
                "refusing to read a state stream from a terminal: redirect stdin or give --input FILE"
                    .into(),
            )
            .into());
        }
        (None, None)
    } else {
        let file = File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        if meta.is_dir() {
            return Err(Usage(format!("{} is a directory", args.input.display())).into());
        }
        let total = meta.is_file().then_some(meta.len());
        (Some(file), total)
    };
    let source: BorrowedFd<'_> = match &file {
        Some(f) => f.as_fd(),
        None => stdin.as_fd(),
    };
    let show = progress::wanted(quiet);

    let report = rt::block_on(async {
        let client = Client::connect(&args.control).await?;
        let result: anyhow::Result<Report> = if show {
            let (r, w) = progress::pipe().context("cannot create a pipe")?;
            let from = File::from(source.try_clone_to_owned()?);
            let pump = Pump::start(from, w, Progress::new("loading", total))?;
            let result = client.load(&r, &options).await;
            drop(r);
            let pumped = pump.join();
            match result {
                Ok(report) => {
                    pumped.context("cannot read the state stream")?;
                    Ok(report)
                }
                Err(e) => Err(e.into()),
            }
        } else {
            client.load(&source, &options).await.map_err(Into::into)
        };
        client.close().await;
        result
    })?;
    let from = if from_stdin {
        "stdin".to_string()
    } else {
        args.input.display().to_string()
    };
    let summary = format!(
        "loaded {} helpers from {from} ({})",
        report.helpers.len(),
        report.format
    );
    print_report("load", summary, &report, args.json, quiet, false)?;
    Ok(cli::EXIT_OK)
}

/// `dbus-vmstate status`.
pub fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let helpers = rt::block_on(async {
        let client = Client::connect(&args.control).await?;
        let helpers = client.status().await;
        client.close().await;
        helpers
    })?;
    let mut out = io::stdout().lock();
    if args.json {
        output::print_json(&mut out, &output::status_json(&helpers))?;
    } else {
        output::write_status(&mut out, &helpers)?;
    }
    out.flush()?;
    Ok(cli::EXIT_OK)
}
