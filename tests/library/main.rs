//! The library through its public API, in one process: coordinators,
//! helpers built on the library (and fakes that misbehave below it),
//! streams, the control interface. One test binary for all of them, so CI
//! links it once.

#[path = "../util/mod.rs"]
mod util;

mod budget;
mod bus;
mod control;
mod executors;
mod faults;
mod hostile;
mod introspection;
mod io_faults;
mod pipeline;
mod qemu_compat;
mod qemu_door;
mod roundtrip;
mod scenarios;
mod stream_golden;
mod stream_props;
mod stream_v2;
mod streaming;
