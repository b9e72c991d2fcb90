//! `dbus-vmstate inspect`: verify a state stream and list what it holds,
//! without restoring anything.

use std::io::{Read, Write};

use dbus_vmstate::stream::{native, qemu, Format, KeyId, Limits};
use serde_json::json;

use crate::cli::InspectArgs;
use crate::detect;
use crate::exit;
use crate::keys;
use crate::output::{self, Stdout};
use crate::stdio::Input;

/// `dbus-vmstate inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<u8> {
    let input = Input::open(&args.file, None)?;
    let name = input.name();
    let (format, input) = detect::format(input.into_reader(), args.format.map(Into::into), &name)?;
    let options = keys::read_options(&args.key)?;
    let mut out = Stdout::new();
    match format {
        Format::Native if options.key.is_none() => {
            let (encrypted, input) = is_encrypted(input, &name)?;
            if encrypted {
                sealed_stream(input, &name, args.json, &mut out)?;
            } else {
                native_stream(input, &name, args.json, &options, &mut out)?;
            }
        }
        Format::Native => native_stream(input, &name, args.json, &options, &mut out)?,
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

/// Reads the stream header to tell whether the stream is encrypted;
/// returns the input with the header put back.
fn is_encrypted(mut input: Box<dyn Read>, name: &str) -> anyhow::Result<(bool, Box<dyn Read>)> {
    let mut header = Vec::with_capacity(native::HEADER_BYTES);
    (&mut input)
        .take(native::HEADER_BYTES as u64)
        .read_to_end(&mut header)
        .map_err(|e| detect::read_error(name, e.into()))?;
    let field = |at: usize| {
        header
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let encrypted = field(8) == 2 && field(12) & native::FLAG_ENCRYPTED != 0;
    Ok((
        encrypted,
        Box::new(std::io::Cursor::new(header).chain(input)),
    ))
}

/// What the stream's features and sizes say, in words.
fn encoding(version: u32, compressed: bool, key_id: Option<KeyId>) -> String {
    let mut parts = vec![format!("version {version}")];
    if compressed {
        parts.push("compressed".to_string());
    }
    if let Some(id) = key_id {
        parts.push(format!("encrypted with key {id}"));
    }
    parts.join(", ")
}

/// Stored size over state size, as "x.yz:1" (state bytes per stored byte).
fn ratio(state: u64, stored: u64) -> String {
    if stored == 0 {
        "-".to_string()
    } else {
        format!("{:.2}:1", state as f64 / stored as f64)
    }
}

fn native_stream(
    input: Box<dyn Read>,
    name: &str,
    json: bool,
    options: &native::ReadOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let summary =
        native::inspect_with(input, limits(), options).map_err(|e| detect::read_error(name, e))?;
    let stored: u64 = summary.helpers.iter().map(|h| h.stored_bytes).sum();
    let verified = if summary.key_id.is_some() {
        "checksums and authentication verified"
    } else {
        "checksums verified"
    };
    if json {
        let doc = json!({
            "file": name,
            "format": "native",
            "version": summary.version,
            "compressed": summary.compressed,
            "encrypted": summary.key_id.is_some(),
            "key_id": summary.key_id.map(|id| id.to_string()),
            "helpers": summary.helpers.iter().map(|h| json!({
                "id": h.id,
                "bytes": h.bytes,
                "stored_bytes": h.stored_bytes,
                "chunks": h.chunks,
                "compressed_chunks": h.compressed_chunks,
                "crc32c": format!("{:08x}", h.crc32c),
            })).collect::<Vec<_>>(),
            "total_bytes": summary.total_bytes,
            "stored_bytes": stored,
            "stream_bytes": summary.stream_bytes,
            "checksums_verified": true,
            "authenticated": summary.key_id.is_some(),
        });
        output::print_json(out, &doc)?;
        return Ok(());
    }
    let v2 = summary.version > 1;
    let ratio = if v2 {
        format!(" (state/stored {})", ratio(summary.total_bytes, stored))
    } else {
        String::new()
    };
    writeln!(
        out,
        "{name}: native stream, {}, {}, {} of state, {} stream{ratio}; {verified}",
        encoding(summary.version, summary.compressed, summary.key_id),
        output::count(summary.helpers.len() as u64, "helper", "helpers"),
        output::bytes(summary.total_bytes),
        output::bytes(summary.stream_bytes),
    )?;
    let width = id_width(summary.helpers.iter().map(|h| h.id.as_str()));
    if v2 {
        writeln!(
            out,
            "  {:<width$}  {:>12}  {:>12}  {:>7}  crc32c",
            "helper", "bytes", "stored", "chunks"
        )?;
    } else {
        writeln!(
            out,
            "  {:<width$}  {:>12}  {:>7}  crc32c",
            "helper", "bytes", "chunks"
        )?;
    }
    for h in &summary.helpers {
        if v2 {
            writeln!(
                out,
                "  {:<width$}  {:>12}  {:>12}  {:>7}  {:08x}",
                h.id, h.bytes, h.stored_bytes, h.chunks, h.crc32c
            )?;
        } else {
            writeln!(
                out,
                "  {:<width$}  {:>12}  {:>7}  {:08x}",
                h.id, h.bytes, h.chunks, h.crc32c
            )?;
        }
    }
    Ok(())
}

/// An encrypted stream without its key: what its framing shows.
fn sealed_stream(
    input: Box<dyn Read>,
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let survey = native::survey(input, limits()).map_err(|e| detect::read_error(name, e))?;
    let stored: u64 = survey.helpers.iter().map(|h| h.stored_bytes).sum();
    let not_verified = "without the key (--key-file), the Ids, state sizes and state \
                        checksums cannot be read, and nothing is authenticated: the record \
                        checksums catch corruption, not tampering";
    if json {
        let doc = json!({
            "file": name,
            "format": "native",
            "version": survey.version,
            "compressed": survey.features.compressed,
            "encrypted": true,
            "key_id": survey.key_id.map(|id| id.to_string()),
            "helpers": survey.helpers.iter().enumerate().map(|(i, h)| json!({
                "index": i,
                "stored_bytes": h.stored_bytes,
                "chunks": h.chunks,
                "compressed_chunks": h.compressed_chunks,
            })).collect::<Vec<_>>(),
            "stored_bytes": stored,
            "records": survey.records,
            "stream_bytes": survey.stream_bytes,
            "checksums_verified": true,
            "authenticated": false,
            "not_verified": not_verified,
        });
        output::print_json(out, &doc)?;
        return Ok(());
    }
    writeln!(
        out,
        "{name}: native stream, {}, {}, {} stream; record checksums verified",
        encoding(survey.version, survey.features.compressed, survey.key_id),
        output::count(survey.helpers.len() as u64, "helper", "helpers"),
        output::bytes(survey.stream_bytes),
    )?;
    writeln!(out, "  {not_verified}")?;
    writeln!(out, "  {:<6}  {:>12}  {:>7}", "helper", "stored", "chunks")?;
    for (i, h) in survey.helpers.iter().enumerate() {
        writeln!(
            out,
            "  {:<6}  {:>12}  {:>7}",
            format!("#{i}"),
            h.stored_bytes,
            h.chunks
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
