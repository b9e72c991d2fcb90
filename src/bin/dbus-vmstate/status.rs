//! `dbus-vmstate status`: the helpers of a running `serve`.

use std::io::Write;

use dbus_vmstate::control::Client;

use crate::cli::StatusArgs;
use crate::exit;
use crate::output::{self, Stdout};

/// `dbus-vmstate status`.
pub fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let (helpers, qemu) = futures::executor::block_on(async {
        let client = Client::connect(&args.control).await?;
        let helpers = client.status().await;
        let qemu = client.qemu_status().await;
        client.close().await;
        Ok::<_, dbus_vmstate::control::Error>((helpers?, qemu?))
    })?;
    let mut out = Stdout::new();
    if args.json {
        output::print_json(&mut out, &output::status_json(&helpers, qemu.as_ref()))?;
    } else {
        output::write_status(&mut out, &helpers)?;
        if let Some(qemu) = &qemu {
            output::write_qemu_status(&mut out, qemu)?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}
