//! `dbus-vmstate inspect`: verify a state stream and list what it holds,
//! without restoring anything.

use std::io::{Read, Write};

use dbus_vmstate::stream::{native, qemu, Format, Limits};
use serde_json::json;

use crate::cli::InspectArgs;
use crate::detect;
use crate::exit;
use crate::output::{self, Stdout};
use crate::stdio::Input;

/// `dbus-vmstate inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<u8> {
    let input = Input::open(&args.file, None)?;
    let name = input.name();
    let (format, input) = detect::format(input.into_reader(), args.format.map(Into::into), &name)?;
    let mut out = Stdout::new();
    match format {
        Format::Native => native_stream(input, &name, args.json, &mut out)?,
        Format::Qemu => qemu_payload(input, &name, args.json, &mut out)?,
    }
    out.flush()?;
    Ok(exit::OK)
}

/// Inspecting keeps no blob of a native stream, so no blob size cap.
fn limits() -> Limits {
    Limits {
        max_blob_bytes: u64::MAX,
        ..Limits::default()
    }
}

fn native_stream(
    input: Box<dyn Read>,
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let summary = native::inspect(input, limits()).map_err(|e| detect::read_error(name, e))?;
    if json {
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
        output::print_json(out, &doc)?;
        return Ok(());
    }
    writeln!(
        out,
        "{name}: native stream, version {}, {}, {} of state, {} stream; checksums verified",
        summary.version,
        output::count(summary.helpers.len() as u64, "helper", "helpers"),
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
    Ok(())
}

fn qemu_payload(
    input: Box<dyn Read>,
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let decoded = qemu::read(input, limits()).map_err(|e| detect::read_error(name, e))?;
    let total: u64 = decoded.records.iter().map(|r| r.data.len() as u64).sum();
    if json {
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
        output::print_json(out, &doc)?;
        return Ok(());
    }
    writeln!(
        out,
        "{name}: QEMU dbus-vmstate payload, {}, {} of state, {} trailing bytes; \
         this format has no checksums",
        output::count(decoded.records.len() as u64, "helper", "helpers"),
        output::bytes(total),
        decoded.trailing_bytes,
    )?;
    let width = id_width(decoded.records.iter().map(|r| r.id.as_str()));
    writeln!(out, "  {:<width$}  {:>12}", "helper", "bytes")?;
    for r in &decoded.records {
        writeln!(out, "  {:<width$}  {:>12}", r.id, r.data.len())?;
    }
    Ok(())
}

fn id_width<'a>(ids: impl Iterator<Item = &'a str>) -> usize {
    ids.map(str::len).max().unwrap_or(0).max(6)
}
