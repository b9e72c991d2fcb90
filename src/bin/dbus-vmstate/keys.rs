//! `dbus-vmstate keygen`, and the key options of the commands that read or
//! write encrypted streams.

use anyhow::Context;
use dbus_vmstate::stream::native::{ReadOptions, WriteOptions};
use dbus_vmstate::stream::Key;

use crate::cli::{KeygenArgs, ReadKeyArgs};
use crate::exit;

/// `dbus-vmstate keygen`: a fresh key in a new file of mode 0600; prints
/// its id, never the key.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<u8> {
    let key = Key::generate()?;
    key.write_new(&args.file)?;
    println!("{}: new stream key, id {}", args.file.display(), key.id());
    Ok(exit::OK)
}

/// The reading options the key arguments ask for.
pub fn read_options(args: &ReadKeyArgs) -> anyhow::Result<ReadOptions> {
    let key = match &args.key_file {
        Some(path) => Some(Key::from_file(path)?),
        None => None,
    };
    Ok(ReadOptions {
        key,
        allow_unencrypted: args.allow_unencrypted,
    })
}

/// The writing options of `--compress` and a key file.
pub fn write_options(
    compress: bool,
    key_file: Option<&std::path::Path>,
) -> anyhow::Result<WriteOptions> {
    let key = key_file
        .map(|path| Key::from_file(path).context("cannot use the key for the output"))
        .transpose()?;
    Ok(WriteOptions {
        compress,
        key,
        ..WriteOptions::default()
    })
}
