//! `dbus-vmstate load`: a state stream from a file or stdin, through a
//! running `serve`, into every helper.

use std::fs::File;
use std::os::fd::AsFd;

use anyhow::Context;
use dbus_vmstate::control::{Client, LoadOptions, Report};

use crate::cli::LoadArgs;
use crate::exit;
use crate::output;
use crate::progress::{self, Progress, Pump};
use crate::stdio::Input;

/// `dbus-vmstate load`.
pub fn run(args: LoadArgs, quiet: bool) -> anyhow::Result<u8> {
    let mut options = LoadOptions::default();
    if let Some(f) = args.format {
        options = options.format(f.into());
    }
    if let Some(t) = args.timeout {
        options = options.connect_timeout(t);
    }
    let keys = crate::keys::read_options(&args.key)?;
    if let Some(key) = keys.key {
        options = options.key(key).allow_unencrypted(keys.allow_unencrypted);
    }
    let source = Input::open(&args.input, Some("--input FILE"))?;
    let show = progress::wanted(quiet);
    let report = futures::executor::block_on(async {
        let client = Client::connect(&args.control).await?;
        let result = if show {
            load_counted(&client, &source, &options).await
        } else {
            client.load(&source, &options).await.map_err(Into::into)
        };
        client.close().await;
        result
    })?;
    let summary = format!(
        "loaded {} from {} ({})",
        output::count(report.helpers.len() as u64, "helper", "helpers"),
        source.name(),
        report.format
    );
    output::print_report("load", &summary, &report, args.json, quiet, false)?;
    Ok(exit::OK)
}

/// Loads through a pipe, copying from `source` with a progress line.
async fn load_counted(
    client: &Client,
    source: &Input,
    options: &LoadOptions,
) -> anyhow::Result<Report> {
    let (r, w) = progress::pipe().context("cannot create a pipe")?;
    let from = File::from(source.as_fd().try_clone_to_owned()?);
    let pump = Pump::start(from, w, Progress::new("loading", source.size()))?;
    let result = client.load(&r, options).await;
    drop(r);
    let pumped = pump.join();
    let report = result?;
    pumped.context("cannot read the state stream")?;
    Ok(report)
}
