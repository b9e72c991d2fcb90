//! SIGINT, SIGTERM and SIGHUP as events, for commands that must clean up
//! (remove a temporary file, sockets) before they end.

use async_signal::{Signal, Signals};

use crate::sys;

/// The signals that end a command.
pub const ENDING: [Signal; 3] = [Signal::Int, Signal::Term, Signal::Hup];

/// Starts catching `signals`: from now on they arrive on the stream instead
/// of ending the process.
///
/// # Errors
///
/// When the handlers cannot be installed.
pub fn catch(signals: &[Signal]) -> std::io::Result<Signals> {
    Signals::new(signals)
}

/// Catches [`ENDING`].
///
/// # Errors
///
/// As [`catch`].
pub fn signals() -> std::io::Result<Signals> {
    catch(&ENDING)
}

/// Ends the process the way `signal` would have, once cleanup is done: the
/// default action is restored and the signal raised again, so the parent
/// sees the process killed by it.
pub fn reraise(signal: Signal) -> ! {
    let signo = signal as libc::c_int;
    sys::reraise(signo);
    // Not reached for the signals in ENDING, whose default is to terminate.
    std::process::exit(128 + signo)
}
