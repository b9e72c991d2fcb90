//! `dbus-vmstate convert`: a state stream from one format to the other, or
//! out of and into the `dbus-vmstate` section of a QEMU migration file.

use std::io::{self, BufWriter, Cursor, Read, Write};

use anyhow::Context;
use dbus_vmstate::stream::qemu::migration::{self, Section};
use dbus_vmstate::stream::{self, native, qemu, Format, Limits, Record};

use crate::cli::{ConvertArgs, ConvertFormat};
use crate::detect;
use crate::exit::{self, Rejected, Usage};
use crate::keys;
use crate::output::{self, Stdout};
use crate::stdio::{self, Input, Output};

/// `dbus-vmstate convert`.
pub fn run(args: ConvertArgs, quiet: bool) -> anyhow::Result<u8> {
    let to = args.to;
    if args.base.is_some() && to != ConvertFormat::QemuMigration {
        return Err(Usage("--base is only for --to qemu-migration".into()).into());
    }
    if args.base.as_deref().is_some_and(stdio::is_dash) && stdio::is_dash(&args.input) {
        return Err(Usage("IN and --base cannot both be stdin".into()).into());
    }
    if (args.compress || args.output_key_file.is_some()) && to != ConvertFormat::Native {
        return Err(
            Usage("--compress and --output-key-file are only for --to native".into()).into(),
        );
    }
    let read_options = keys::read_options(&args.key)?;
    let write_options = keys::write_options(args.compress, args.output_key_file.as_deref())?;
    stdio::check_output(&args.output, None)?;
    let input = Input::open(&args.input, None)?;
    let name = input.name();
    let (from, records) = read(input, args.from, &name, &read_options)?;
    if to != ConvertFormat::Native {
        qemu::check_for_qemu(&records).map_err(|e| {
            anyhow::Error::new(e).context(Rejected(format!(
                "{name}: cannot be written as a QEMU payload"
            )))
        })?;
    }
    let base = match &args.base {
        Some(path) => Some(Base::read(Input::open(path, Some("--base"))?)?),
        None => None,
    };
    let out = Output::create(&args.output, None)?;
    let place = match out.path() {
        Some(path) => path.display().to_string(),
        None => "stdout".to_string(),
    };
    let to_stdout = out.path().is_none();
    write(out, to, &records, base.as_ref(), &write_options)?;
    if !quiet {
        let base = base.map(|b| format!(" (the rest from {})", b.name));
        let line = format!(
            "converted {} from {} to {}: {name} -> {place}{}",
            output::count(records.len() as u64, "helper", "helpers"),
            format_name(from),
            format_name(to),
            base.unwrap_or_default(),
        );
        if to_stdout {
            writeln!(io::stderr(), "{line}")?;
        } else {
            writeln!(Stdout::new(), "{line}")?;
        }
    }
    Ok(exit::OK)
}

/// What a format is called on the command line.
fn format_name(format: ConvertFormat) -> &'static str {
    match format {
        ConvertFormat::Native => "native",
        ConvertFormat::Qemu => "qemu",
        ConvertFormat::QemuMigration => "qemu-migration",
    }
}

/// Reads the input's records in the format given, or the one its first
/// bytes show: [`migration::MAGIC`] for a migration file, otherwise as
/// [`detect::format`] tells.
fn read(
    input: Input,
    given: Option<ConvertFormat>,
    name: &str,
    options: &native::ReadOptions,
) -> anyhow::Result<(ConvertFormat, Vec<Record>)> {
    let mut reader = input.into_reader();
    let mut prefix = Vec::with_capacity(native::MAGIC.len());
    (&mut reader)
        .take(native::MAGIC.len() as u64)
        .read_to_end(&mut prefix)
        .with_context(|| format!("cannot read {name}"))?;
    let reader = Cursor::new(prefix).chain(reader);
    let given = given.or_else(|| {
        reader
            .get_ref()
            .0
            .get_ref()
            .starts_with(&migration::MAGIC)
            .then_some(ConvertFormat::QemuMigration)
    });
    let given = match given {
        Some(ConvertFormat::QemuMigration) => {
            let base = Base::read_from(Box::new(reader), name)?;
            return Ok((ConvertFormat::QemuMigration, base.section.decoded.records));
        }
        Some(ConvertFormat::Native) => Some(Format::Native),
        Some(ConvertFormat::Qemu) => Some(Format::Qemu),
        None => None,
    };
    let (from, input) = detect::format(Box::new(reader), given, name)?;
    let records = match from {
        Format::Native => native::read_all_with(input, Limits::default(), options),
        Format::Qemu => qemu::read(input, Limits::default()).map(|d| d.records),
    }
    .map_err(|e| detect::read_error(name, e))?;
    let from = match from {
        Format::Native => ConvertFormat::Native,
        Format::Qemu => ConvertFormat::Qemu,
    };
    Ok((from, records))
}

/// A QEMU migration file in memory, with its `dbus-vmstate` section found.
struct Base {
    name: String,
    bytes: Vec<u8>,
    section: Section,
}

impl Base {
    /// Reads `input` whole and finds its section.
    fn read(input: Input) -> anyhow::Result<Base> {
        let name = input.name();
        Base::read_from(input.into_reader(), &name)
    }

    /// Reads `reader` (called `name`) whole and finds its section.
    fn read_from(mut reader: Box<dyn Read>, name: &str) -> anyhow::Result<Base> {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {name}"))?;
        let section = migration::locate(&bytes).map_err(|e| {
            anyhow::Error::new(e).context(Rejected(format!(
                "{name}: no dbus-vmstate payload can be taken from it"
            )))
        })?;
        Ok(Base {
            name: name.to_string(),
            bytes,
            section,
        })
    }
}

/// Writes `records` in format `to` (into `base` for a migration file) and
/// commits the output.
fn write(
    mut out: Output,
    to: ConvertFormat,
    records: &[Record],
    base: Option<&Base>,
    options: &native::WriteOptions,
) -> anyhow::Result<()> {
    let cannot = match out.path() {
        Some(path) => format!("cannot write {}", path.display()),
        None => "cannot write the converted stream".to_string(),
    };
    {
        let mut buffered = BufWriter::new(&mut out);
        let written = match (to, base) {
            (ConvertFormat::Native, _) => native::write_with(&mut buffered, records, options),
            (ConvertFormat::Qemu, _) => stream::write_records(&mut buffered, Format::Qemu, records),
            (ConvertFormat::QemuMigration, Some(base)) => qemu::encode(records)
                .and_then(|p| migration::splice(&mut buffered, &base.bytes, &base.section, &p)),
            (ConvertFormat::QemuMigration, None) => {
                return Err(Usage("--to qemu-migration needs --base FILE".into()).into())
            }
        };
        written.map_err(|e| match e {
            stream::Error::Io(e) => {
                anyhow::Error::new(e).context("cannot write the converted stream")
            }
            e => anyhow::Error::new(e).context(Rejected("cannot convert the stream".into())),
        })?;
        buffered.flush().context(cannot)?;
    }
    out.commit()
}
