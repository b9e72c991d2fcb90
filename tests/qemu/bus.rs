//! The baseline: QEMU's own design, a private `dbus-daemon` on each side
//! and helpers on it that own `org.qemu.VMState1`. These tests show that
//! the harness (`util::qemu`) reads QEMU's outcomes right, with nothing of
//! this crate between QEMU and the helpers but the helpers' library.

use crate::interop::pattern;
use crate::support::*;
use crate::util::qemu::Config;
use crate::util::{require, tmpdir, Fake, Requirement};

/// Two library helpers, 4097 bytes and 1 MiB (QEMU's cap), migrate
/// through dbus-daemon from one QEMU to another.
#[test]
fn qemu_migrates_helpers_on_a_bus_daemon() {
    if !require(Requirement::Qemu) || !require(Requirement::DbusDaemon) {
        return;
    }
    let sizes = [("a", 4097), ("b", 1 << 20)];
    let tmp = tmpdir();
    let root = tmp.path();
    let file = root.join("migration");

    let bus = start_bus(root, "src");
    let a = Fake::new("a", pattern(4097, 1));
    let b = Fake::new("b", pattern(1 << 20, 1));
    let _tasks = serve_on_bus(&bus, &[&a, &b]);
    let mut src = start_qemu(root, "src", &Config::new(&bus.address, &["a", "b"]));
    let outcome = src.migrate_to(&file);
    assert!(outcome.completed(), "{outcome:?}\n{}", src.stderr());
    assert!(outcome.downtime_ms.is_some(), "{outcome:?}");
    assert_records(&saved_by_qemu(&file), &expected(&sizes, 1), "QEMU's file");
    assert_eq!((a.saves(), b.saves()), (1, 1));

    let bus = start_bus(root, "dst");
    let a2 = Fake::new("a", Vec::new());
    let b2 = Fake::new("b", Vec::new());
    let _tasks = serve_on_bus(&bus, &[&a2, &b2]);
    let mut dst = start_qemu(
        root,
        "dst",
        &Config::new(&bus.address, &["a", "b"]).incoming(),
    );
    let outcome = dst.migrate_incoming(&file);
    assert!(outcome.completed(), "{outcome:?}\n{}", dst.stderr());
    assert!(a2.data() == pattern(4097, 1), "a holds other bytes");
    assert!(b2.data() == pattern(1 << 20, 1), "b holds other bytes");
    assert_eq!((a2.loads(), b2.loads()), (1, 1));
}
