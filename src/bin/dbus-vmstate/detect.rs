//! Reading a stream file on its own, for `inspect` and `convert`: telling
//! its format, and what a stream error means for the exit code.

use std::io::{self, Read};

use anyhow::Context;
use dbus_vmstate::stream::{self, native, qemu::migration, Format};

use crate::exit::Rejected;

/// Reads the first bytes and tells the format, unless it was given;
/// returns it with a reader of the whole stream, those bytes included.
///
/// # Errors
///
/// [`Rejected`] when the bytes are no known format, or a QEMU migration
/// file (which only `convert` reads); the read error.
pub fn format(
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
        None if prefix.starts_with(&migration::MAGIC) => {
            return Err(Rejected(format!(
                "{name}: a QEMU migration file, not a state stream \
                 (`dbus-vmstate convert --to native {name} OUT` takes its dbus-vmstate payload out)"
            ))
            .into())
        }
        None => Format::recognize(&prefix).map_err(|e| Rejected(format!("{name}: {e}")))?,
    };
    Ok((format, Box::new(io::Cursor::new(prefix).chain(input))))
}

/// A stream error: a rejected stream (exit 1), unless reading failed.
pub fn read_error(name: &str, e: stream::Error) -> anyhow::Error {
    match e {
        stream::Error::Io(e) => anyhow::Error::new(e).context(format!("cannot read {name}")),
        e => anyhow::Error::new(e).context(Rejected(format!("{name}: state stream rejected"))),
    }
}
