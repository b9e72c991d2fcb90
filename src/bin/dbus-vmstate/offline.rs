//! `inspect` and `convert`: state streams on their own, no coordinator.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context;
use dbus_vmstate::stream::{self, native, qemu, Format, Limits};
use serde_json::json;

use crate::cli::{self, ConvertArgs, InspectArgs};
use crate::client::persist;
use crate::output;
use crate::run::{Rejected, Usage};

/// Read buffer for stream files.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Opens `path`, or stdin for `-`; the name to show for it.
fn open(path: &Path) -> anyhow::Result<(Box<dyn Read>, String)> {
    if path.as_os_str() == "-" {
        if io::stdin().is_terminal() {
            return Err(Usage("refusing to read a state stream from a terminal".into()).into());
        }
        return Ok((Box::new(io::stdin().lock()), "stdin".to_string()));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(Usage(format!("{} is a directory", path.display())).into());
    }
    Ok((
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, file)),
        path.display().to_string(),
    ))
}

/// Reads the first bytes and tells the format, unless it was given.
fn detect(
    mut input: Box<dyn Read>,
    given: Option<Format>,
    name: &str,
) -> anyhow::Result<(Format, Box<dyn Read>)> {
    let mut prefix = Vec::with_capacity(native::MAGIC.len());
    (&mut input)
        .take(native::MAGIC.len() as u64)
        .read_to_end(&mut prefix)
        .with_context(|| format!("cannot read {name}"))?;
    let format = match given {
        Some(f) => f,
        None => Format::detect(&prefix).ok_or_else(|| {
            Rejected(format!(
                "{name}: not a state stream (neither the native magic nor a QEMU payload)"
            ))
        })?,
    };
    Ok((format, Box::new(io::Cursor::new(prefix).chain(input))))
}

/// A stream error: a rejected stream (exit 1), unless reading failed.
fn stream_error(name: &str, e: stream::Error) -> anyhow::Error {
    match e {
        stream::Error::Io(e) => anyhow::Error::new(e).context(format!("cannot read {name}")),
        e => anyhow::Error::new(e).context(Rejected(format!("{name}: state stream rejected"))),
    }
}

/// `dbus-vmstate inspect`.
pub fn inspect(args: InspectArgs) -> anyhow::Result<i32> {
    let (input, name) = open(&args.file)?;
    let (format, input) = detect(input, args.format.map(Into::into), &name)?;
    // Inspecting keeps no blob of a native stream, so no blob size cap.
    let limits = Limits {
        max_blob_bytes: u64::MAX,
        ..Limits::default()
    };
    let mut out = io::stdout().lock();
    match format {
        Format::Native => {
            let summary = native::inspect(input, limits).map_err(|e| stream_error(&name, e))?;
            if args.json {
                let doc = json!({
                    "file": name,
                    "format": "native",
                    "version": summary.version,
                    "helpers": summary.helpers.iter().map(|h| json!({
                        "id": h.id,
                        "bytes": h.bytes,
                        "chunks": h.chunks,
                        "crc32c": format!("{:08x}", h.crc32c),
                    })).collect::<Vec<_>>(),
                    "total_bytes": summary.total_bytes,
                    "stream_bytes": summary.stream_bytes,
                    "checksums_verified": true,
                });
                output::print_json(&mut out, &doc)?;
            } else {
                writeln!(
                    out,
                    "{name}: native stream, version {}, {} helpers, {} of state, {} stream; checksums verified",
                    summary.version,
                    summary.helpers.len(),
                    output::bytes(summary.total_bytes),
                    output::bytes(summary.stream_bytes),
                )?;
                let width = id_width(summary.helpers.iter().map(|h| h.id.as_str()));
                writeln!(
                    out,
                    "  {:<width$}  {:>12}  {:>7}  crc32c",
                    "helper", "bytes", "chunks"
                )?;
                for h in &summary.helpers {
                    writeln!(
                        out,
                        "  {:<width$}  {:>12}  {:>7}  {:08x}",
                        h.id, h.bytes, h.chunks, h.crc32c
                    )?;
                }
            }
        }
        Format::Qemu => {
            let decoded = qemu::read(input, limits).map_err(|e| stream_error(&name, e))?;
            let total: u64 = decoded.records.iter().map(|r| r.data.len() as u64).sum();
            if args.json {
                let doc = json!({
                    "file": name,
                    "format": "qemu",
                    "version": null,
                    "helpers": decoded.records.iter().map(|r| json!({
                        "id": r.id,
                        "bytes": r.data.len(),
                    })).collect::<Vec<_>>(),
                    "total_bytes": total,
                    "trailing_bytes": decoded.trailing_bytes,
                    "checksums_verified": false,
                });
                output::print_json(&mut out, &doc)?;
            } else {
                writeln!(
                    out,
                    "{name}: QEMU dbus-vmstate payload, {} helpers, {} of state, {} trailing bytes; \
                     this format has no checksums",
                    decoded.records.len(),
                    output::bytes(total),
                    decoded.trailing_bytes,
                )?;
                let width = id_width(decoded.records.iter().map(|r| r.id.as_str()));
                writeln!(out, "  {:<width$}  {:>12}", "helper", "bytes")?;
                for r in &decoded.records {
                    writeln!(out, "  {:<width$}  {:>12}", r.id, r.data.len())?;
                }
            }
        }
    }
    out.flush()?;
    Ok(cli::EXIT_OK)
}

fn id_width<'a>(ids: impl Iterator<Item = &'a str>) -> usize {
    ids.map(str::len).max().unwrap_or(0).max(6)
}

/// `dbus-vmstate convert`.
pub fn convert(args: ConvertArgs, quiet: bool) -> anyhow::Result<i32> {
    let to: Format = args.to.into();
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && io::stdout().is_terminal() {
        return Err(Usage("refusing to write a binary state stream to a terminal".into()).into());
    }
    let (input, name) = open(&args.input)?;
    let (from, input) = detect(input, args.from.map(Into::into), &name)?;
    let records = match from {
        Format::Native => native::read_all(input, Limits::default()),
        Format::Qemu => qemu::read(input, Limits::default()).map(|d| d.records),
    }
    .map_err(|e| stream_error(&name, e))?;
    if to == Format::Qemu {
        qemu::check_for_qemu(&records).map_err(|e| {
            anyhow::Error::new(e).context(Rejected(format!(
                "{name}: cannot be written as a QEMU payload"
            )))
        })?;
    }
    let write_error = |e: stream::Error| match e {
        stream::Error::Io(e) => anyhow::Error::new(e).context("cannot write the converted stream"),
        e => anyhow::Error::new(e).context(Rejected("cannot convert the stream".into())),
    };
    if to_stdout {
        let mut out = BufWriter::new(io::stdout().lock());
        stream::write_records(&mut out, to, &records).map_err(write_error)?;
        out.flush().context("cannot write the converted stream")?;
    } else {
        let temp = crate::client::temp_beside(&args.output)?;
        {
            let mut out = BufWriter::new(temp.as_file());
            stream::write_records(&mut out, to, &records).map_err(write_error)?;
            out.flush()
                .with_context(|| format!("cannot write {}", args.output.display()))?;
        }
        persist(temp, &args.output)?;
    }
    if !quiet {
        let line = format!(
            "converted {} helpers from {from} to {to}: {name} -> {}",
            records.len(),
            if to_stdout {
                "stdout".to_string()
            } else {
                args.output.display().to_string()
            }
        );
        if to_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(cli::EXIT_OK)
}
