//! The `dbus-vmstate` binary run as a user, a service manager or a VMM
//! would run it: real processes, exit codes and messages. One test binary
//! for all of them, so CI links it once.

#[path = "../util/mod.rs"]
mod util;

mod cli;
mod cli_extras;
mod cli_faults;
mod keys;
mod offline;
mod serve;
mod serve_lifecycle;
