//! Real QEMU (`qemu-system-x86_64 -M none` with a `dbus-vmstate` object)
//! migrating helpers' state from one QEMU process to another through a
//! file: behind `dbus-vmstate serve --qemu-socket` on each side (no bus
//! daemon anywhere), and, as the baseline, behind a private `dbus-daemon`
//! (QEMU's own design). Every test skips without QEMU
//! (`Requirement::Qemu`).

#[path = "../util/mod.rs"]
mod util;

/// The GDBus helper processes of the interop tests.
#[allow(dead_code)]
#[path = "../interop/support.rs"]
mod interop;

mod bus;
mod front_door;
mod support;
