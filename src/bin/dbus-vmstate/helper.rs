//! `dbus-vmstate helper`: a file's bytes, or a command's output (through
//! the exec adapter), served as a helper's state.

use std::sync::Arc;

use dbus_vmstate::helper::{self, FileState, State};

use crate::cli::HelperArgs;
use crate::exec::ExecState;
use crate::exit;

/// `dbus-vmstate helper`: serves until the coordinator hangs up.
pub fn run(args: HelperArgs) -> anyhow::Result<u8> {
    let state: Arc<dyn State> = match args.state_file {
        Some(path) => Arc::new(FileState::new(args.id, path)),
        None => Arc::new(ExecState::new(args.id, args.save_cmd, args.load_cmd)),
    };
    if !args.socket.exists() {
        // Not an error yet: the coordinator may still be starting.
        tracing::warn!(
            "{} does not exist yet: waiting up to {} s for a coordinator to listen on it",
            args.socket.display(),
            args.connect_timeout.as_secs_f64()
        );
    }
    helper::serve_blocking(
        &args.socket,
        state,
        helper::Options::default().connect_timeout(args.connect_timeout),
    )?;
    Ok(exit::OK)
}
