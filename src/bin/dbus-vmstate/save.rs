//! `dbus-vmstate save`: every helper's state, through a running `serve`,
//! into a file (replaced atomically) or stdout.

use std::fs::File;
use std::os::fd::AsFd;

use anyhow::Context;
use async_signal::Signal;
use dbus_vmstate::control::{Client, Report, SaveOptions};
use futures::future::{select, Either};
use futures::StreamExt;

use crate::cli::SaveArgs;
use crate::exit;
use crate::interrupt;
use crate::output;
use crate::progress::{self, Progress, Pump};
use crate::stdio::Output;

/// How the save call ended.
enum Outcome {
    Done(Report),
    Interrupted(Signal),
}

/// `dbus-vmstate save`.
pub fn run(args: SaveArgs, quiet: bool) -> anyhow::Result<u8> {
    let mut options = SaveOptions::default()
        .format(args.format.into())
        .compress(args.compress);
    if let Some(t) = args.timeout {
        options = options.connect_timeout(t);
    }
    if let Some(path) = &args.key_file {
        options = options.key(dbus_vmstate::stream::Key::from_file(path)?);
    }
    let dest = Output::create(&args.output, Some("--output FILE"))?;
    let show = progress::wanted(quiet);
    let report = match futures::executor::block_on(call(&args, &dest, &options, show)) {
        Ok(Outcome::Done(report)) => report,
        Ok(Outcome::Interrupted(signal)) => {
            // Removes the temporary file before the signal ends the process.
            drop(dest);
            interrupt::reraise(signal)
        }
        Err(e) => return Err(e),
    };
    let to_stdout = dest.path().is_none();
    let place = match dest.path() {
        Some(path) => format!("into {}", path.display()),
        None => "to stdout".to_string(),
    };
    dest.commit()?;
    let summary = format!(
        "saved {} {place} ({}, {})",
        output::count(report.helpers.len() as u64, "helper", "helpers"),
        report.format,
        output::bytes(report.stream_bytes.unwrap_or(0))
    );
    output::print_report("save", &summary, &report, args.json, quiet, to_stdout)?;
    Ok(exit::OK)
}

/// Connects and saves into `dest`, unless a signal comes first.
async fn call(
    args: &SaveArgs,
    dest: &Output,
    options: &SaveOptions,
    show: bool,
) -> anyhow::Result<Outcome> {
    let mut signals = interrupt::signals()?;
    let client = Client::connect(&args.control).await?;
    let save = async {
        if show {
            save_counted(&client, dest, options).await
        } else {
            Ok(client.save(dest, options).await?)
        }
    };
    let outcome = match select(Box::pin(save), signals.next()).await {
        Either::Left((result, _)) => Outcome::Done(result?),
        Either::Right((Some(Ok(signal)), _)) => Outcome::Interrupted(signal),
        Either::Right(_) => anyhow::bail!("signal handling failed"),
    };
    client.close().await;
    Ok(outcome)
}

/// Saves through a pipe, copying into `dest` with a progress line.
async fn save_counted(
    client: &Client,
    dest: &Output,
    options: &SaveOptions,
) -> anyhow::Result<Report> {
    let (r, w) = progress::pipe().context("cannot create a pipe")?;
    let to = File::from(dest.as_fd().try_clone_to_owned()?);
    let pump = Pump::start(r, to, Progress::new("saving", None))?;
    let result = client.save(&w, options).await;
    drop(w);
    let pumped = pump.join();
    let report = result?;
    pumped.context("cannot write the state stream")?;
    Ok(report)
}
