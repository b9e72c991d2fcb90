//! `dbus-vmstate convert`: a state stream from one format to the other.

use std::io::{self, BufWriter, Write};

use anyhow::Context;
use dbus_vmstate::stream::{self, native, qemu, Format, Limits, Record};

use crate::cli::ConvertArgs;
use crate::detect;
use crate::exit::{self, Rejected};
use crate::output::{self, Stdout};
use crate::stdio::{self, Input, Output};

/// `dbus-vmstate convert`.
pub fn run(args: ConvertArgs, quiet: bool) -> anyhow::Result<u8> {
    let to: Format = args.to.into();
    stdio::check_output(&args.output, None)?;
    let input = Input::open(&args.input, None)?;
    let name = input.name();
    let (from, input) = detect::format(input.into_reader(), args.from.map(Into::into), &name)?;
    let records = match from {
        Format::Native => native::read_all(input, Limits::default()),
        Format::Qemu => qemu::read(input, Limits::default()).map(|d| d.records),
    }
    .map_err(|e| detect::read_error(&name, e))?;
    if to == Format::Qemu {
        qemu::check_for_qemu(&records).map_err(|e| {
            anyhow::Error::new(e).context(Rejected(format!(
                "{name}: cannot be written as a QEMU payload"
            )))
        })?;
    }
    let out = Output::create(&args.output, None)?;
    let place = match out.path() {
        Some(path) => path.display().to_string(),
        None => "stdout".to_string(),
    };
    let to_stdout = out.path().is_none();
    write(out, to, &records)?;
    if !quiet {
        let line = format!(
            "converted {} from {from} to {to}: {name} -> {place}",
            output::count(records.len() as u64, "helper", "helpers"),
        );
        if to_stdout {
            writeln!(io::stderr(), "{line}")?;
        } else {
            writeln!(Stdout::new(), "{line}")?;
        }
    }
    Ok(exit::OK)
}

/// Writes `records` in format `to` and commits the output.
fn write(mut out: Output, to: Format, records: &[Record]) -> anyhow::Result<()> {
    let cannot = match out.path() {
        Some(path) => format!("cannot write {}", path.display()),
        None => "cannot write the converted stream".to_string(),
    };
    {
        let mut buffered = BufWriter::new(&mut out);
        stream::write_records(&mut buffered, to, records).map_err(|e| match e {
            stream::Error::Io(e) => {
                anyhow::Error::new(e).context("cannot write the converted stream")
            }
            e => anyhow::Error::new(e).context(Rejected("cannot convert the stream".into())),
        })?;
        buffered.flush().context(cannot)?;
    }
    out.commit()
}
