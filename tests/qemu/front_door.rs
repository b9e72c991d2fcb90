//! Unmodified QEMU behind `dbus-vmstate serve --qemu-socket`: QEMU takes
//! that socket for its bus, the helpers connect peer to peer (or as to a
//! bus) to their own sockets, and no `dbus-daemon` runs anywhere.

use crate::interop::pattern;
use crate::support::*;
use crate::util::qemu::{Config, Outcome, Qemu};
use crate::util::{require, rt, tmpdir, until, Fake, Requirement, Step};

/// Seed of the source helpers' state.
const SEED: u8 = 0x5c;

/// The two helpers every kind migrates: just over a page (QEMU once could
/// not load more than 4 KiB) and QEMU's cap of 1 MiB.
const SIZES: [(&str, usize); 2] = [("a", 4097), ("b", 1 << 20)];

/// Shows a failed outcome with what QEMU and `serve` said.
fn explain(outcome: &Outcome, qemu: &Qemu, side: &FrontDoor) -> String {
    format!(
        "{outcome:?}\nQEMU stderr:\n{}\nserve log:\n{}",
        qemu.stderr(),
        side.serve.log()
    )
}

/// A source QEMU saves `ids` (helpers already connected to `side`) into
/// `file`.
fn save(root: &std::path::Path, side: &FrontDoor, ids: &[&str]) -> (Qemu, Outcome) {
    let mut qemu = start_qemu(root, "src", &Config::new(&side.address(), ids));
    let file = root.join("migration");
    let outcome = qemu.migrate_to(&file);
    (qemu, outcome)
}

/// A destination QEMU loads `root/migration` into `ids` behind `side`.
fn load(root: &std::path::Path, side: &FrontDoor, ids: &[&str]) -> (Qemu, Outcome) {
    let config = Config::new(&side.address(), ids).incoming();
    let mut qemu = start_qemu(root, "dst", &config);
    let outcome = qemu.migrate_incoming(&root.join("migration"));
    (qemu, outcome)
}

/// An incoming QEMU loads `root/migration` into fresh, empty helpers a and
/// b of `kind` behind a `serve --qemu-socket`: each gets one `Load` and
/// then holds exactly the [`SIZES`] states of seed [`SEED`].
fn load_into_fresh_helpers(root: &std::path::Path, kind: Kind) {
    let ids = ["a", "b"];
    let dst = FrontDoor::start(root, "dst", &ids, &[]);
    let helpers = Helpers::start(kind, &dst.dir, &[("a", 0), ("b", 0)], 0);
    dst.wait_connected(&ids);
    let (qemu, outcome) = load(root, &dst, &ids);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &dst));
    for fake in &helpers.fakes {
        assert_eq!(fake.loads(), 1, "Load calls on {fake:?}");
    }
    assert_records(
        &dst.held(),
        &expected(&SIZES, SEED),
        "the destination helpers",
    );
}

/// Two helpers of `kind` migrate from one QEMU to another, a `serve
/// --qemu-socket` on each side: QEMU's file holds exactly their bytes, and
/// fresh, empty helpers on the destination hold exactly those bytes once
/// the incoming QEMU has loaded it.
fn migrate(kind: Kind) {
    if !require(Requirement::Qemu) || !kind.available() {
        return;
    }
    let ids = ["a", "b"];
    let tmp = tmpdir();
    let root = tmp.path();

    let src = FrontDoor::start(root, "src", &ids, &[]);
    let _helpers = Helpers::start(kind, &src.dir, &SIZES, SEED);
    src.wait_connected(&ids);
    let (qemu, outcome) = save(root, &src, &ids);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &src));
    assert_records(
        &saved_by_qemu(&root.join("migration")),
        &expected(&SIZES, SEED),
        "QEMU's migration file",
    );

    load_into_fresh_helpers(root, kind);
}

#[test]
fn library_helpers_migrate_between_two_qemus() {
    migrate(Kind::Library);
}

#[test]
fn gdbus_p2p_helpers_migrate_between_two_qemus() {
    migrate(Kind::GdbusP2p);
}

#[test]
fn gdbus_bus_style_helpers_migrate_between_two_qemus() {
    migrate(Kind::GdbusBus);
}

/// The committed QEMU 7.2 migration file (helpers idA and idB), with
/// `convert --to qemu-migration` putting the states of a and b in its
/// `dbus-vmstate` section, loads into a real QEMU: the destination
/// helpers hold exactly those states.
#[test]
fn a_migration_file_with_a_spliced_payload_loads_into_qemu() {
    if !require(Requirement::Qemu) {
        return;
    }
    let tmp = tmpdir();
    let root = tmp.path();
    let states = root.join("states.vmstate");
    let encoded = dbus_vmstate::stream::native::encode(&expected(&SIZES, SEED));
    std::fs::write(&states, encoded.expect("encode the states")).expect("write the states");
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/qemu-7.2-two-helpers.migration");
    let migration = root.join("migration");
    let mut args = vec!["convert", "--to", "qemu-migration", "--base"];
    args.extend([&base, &states, &migration].map(|p| p.to_str().expect("UTF-8 path")));
    let out = crate::util::process::run_bin(args);
    assert!(out.status.success(), "convert: {out:?}");

    load_into_fresh_helpers(root, Kind::Library);
}

/// `serve` has helpers a, b and c; QEMU's `id-list` names a and b. QEMU
/// saves a and b, and c never sees a `Save`.
#[test]
fn helper_outside_qemus_id_list_never_sees_save() {
    if !require(Requirement::Qemu) {
        return;
    }
    let tmp = tmpdir();
    let root = tmp.path();
    let side = FrontDoor::start(root, "src", &["a", "b", "c"], &[]);
    let fakes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| Fake::new(id, pattern(100, SEED)))
        .collect();
    let _helpers = Helpers::library(&side.dir, &fakes.iter().collect::<Vec<_>>());
    side.wait_connected(&["a", "b", "c"]);
    let (qemu, outcome) = save(root, &side, &["a", "b"]);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &side));
    assert_records(
        &saved_by_qemu(&root.join("migration")),
        &expected(&[("a", 100), ("b", 100)], SEED),
        "QEMU's migration file",
    );
    let saves: Vec<usize> = fakes.iter().map(|f| f.saves()).collect();
    assert_eq!(saves, [1, 1, 0], "Save calls on a, b, c");
}

/// The destination's `serve` lists a and b, but only a connects: the
/// incoming QEMU's load fails, saying b is missing, and a sees no `Load`.
#[test]
fn required_helper_missing_on_destination_fails_the_load_before_any_load() {
    if !require(Requirement::Qemu) {
        return;
    }
    let ids = ["a", "b"];
    let tmp = tmpdir();
    let root = tmp.path();
    let src = FrontDoor::start(root, "src", &ids, &[]);
    let _helpers = Helpers::start(Kind::Library, &src.dir, &SIZES, SEED);
    src.wait_connected(&ids);
    let (qemu, outcome) = save(root, &src, &ids);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &src));

    // A short connect timeout: b is not coming.
    let dst = FrontDoor::start(root, "dst", &ids, &["--connect-timeout", "1"]);
    let a = Fake::new("a", Vec::new());
    let _helpers = Helpers::library(&dst.dir, &[&a]);
    dst.wait_connected(&["a"]);
    let (qemu, outcome) = load(root, &dst, &ids);
    assert!(!outcome.completed(), "{}", explain(&outcome, &qemu, &dst));
    assert_eq!(a.loads(), 0, "a saw a Load");
    assert!(a.data().is_empty(), "a holds state");
    let said = qemu.stderr();
    assert!(
        said.contains(r#"helper "b""#) || said.contains("missing: b"),
        "QEMU's stderr does not name b:\n{}",
        explain(&outcome, &qemu, &dst)
    );
}

/// b's `Save` fails. QEMU's stderr names b and carries its message, and
/// the migration does not succeed: either the source fails it, or (QEMU
/// 7.2, whose dbus-vmstate logs a failed `Save` and completes anyway,
/// leaving the entry out but counting it) the incoming QEMU refuses the
/// file, and b on the destination sees no `Load`.
#[test]
fn helper_whose_save_fails_fails_the_migration_and_is_named() {
    if !require(Requirement::Qemu) {
        return;
    }
    let ids = ["a", "b"];
    let tmp = tmpdir();
    let root = tmp.path();
    let src = FrontDoor::start(root, "src", &ids, &[]);
    let a = Fake::new("a", pattern(100, SEED));
    let b = Fake::new("b", pattern(100, SEED)).fail_save("disk on fire");
    let _helpers = Helpers::library(&src.dir, &[&a, &b]);
    src.wait_connected(&ids);
    let (qemu, outcome) = save(root, &src, &ids);
    let said = qemu.stderr();
    assert!(
        said.contains(r#"helper "b""#) && said.contains("disk on fire"),
        "QEMU's stderr does not name b and its error:\n{}",
        explain(&outcome, &qemu, &src)
    );
    if !outcome.completed() {
        assert_eq!(
            outcome.status,
            "failed",
            "{}",
            explain(&outcome, &qemu, &src)
        );
        return;
    }

    let dst = FrontDoor::start(root, "dst", &ids, &[]);
    let a2 = Fake::new("a", Vec::new());
    let b2 = Fake::new("b", Vec::new());
    let _helpers = Helpers::library(&dst.dir, &[&a2, &b2]);
    dst.wait_connected(&ids);
    let (qemu, outcome) = load(root, &dst, &ids);
    assert!(
        !outcome.completed(),
        "the destination loaded a migration whose Save of b failed: {}",
        explain(&outcome, &qemu, &dst)
    );
    assert_eq!(b2.loads(), 0, "b saw a Load");
}

/// QEMU calls `Save` on one helper after another and waits for each; the
/// front door saves them all at QEMU's first `Save`. Here a and b each
/// hold their `Save` until both have been called, which only a
/// coordinator that saves them at once can bring about (one that saves a
/// first waits for it forever and the test times out).
#[test]
fn helpers_are_saved_at_once_at_qemus_first_save() {
    if !require(Requirement::Qemu) {
        return;
    }
    let ids = ["a", "b"];
    let tmp = tmpdir();
    let root = tmp.path();
    let side = FrontDoor::start(root, "src", &ids, &[]);
    let a = Fake::new("a", pattern(100, SEED)).save_does(Step::Held);
    let b = Fake::new("b", pattern(100, SEED)).save_does(Step::Held);
    let _helpers = Helpers::library(&side.dir, &[&a, &b]);
    side.wait_connected(&ids);
    let mut qemu = start_qemu(root, "src", &Config::new(&side.address(), &ids));
    qemu.start_migration(&format!("exec:cat > {}", root.join("migration").display()));
    // Well before the 25 s after which QEMU's GDBus gives up on a's Save
    // and would call b.
    rt::block_on(until("Save calls on both a and b", || {
        a.saves() == 1 && b.saves() == 1
    }));
    a.release();
    b.release();
    let outcome = qemu.wait_migration();
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &side));
    assert_records(
        &saved_by_qemu(&root.join("migration")),
        &expected(&[("a", 100), ("b", 100)], SEED),
        "QEMU's migration file",
    );
}

/// QEMU's socket, like every other, is open to its owner only.
#[test]
fn qemu_socket_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tmpdir();
    let side = FrontDoor::start(tmp.path(), "s", &["a"], &[]);
    let mode = std::fs::metadata(&side.qemu_socket)
        .expect("the QEMU socket exists once serve is ready")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

/// b's `Load` fails on the destination: the incoming QEMU's load fails,
/// and its stderr names b and carries b's message.
#[test]
fn helper_whose_load_fails_fails_the_load_and_is_named() {
    if !require(Requirement::Qemu) {
        return;
    }
    let ids = ["a", "b"];
    let tmp = tmpdir();
    let root = tmp.path();
    let src = FrontDoor::start(root, "src", &ids, &[]);
    let _helpers = Helpers::start(Kind::Library, &src.dir, &SIZES, SEED);
    src.wait_connected(&ids);
    let (qemu, outcome) = save(root, &src, &ids);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &src));

    let dst = FrontDoor::start(root, "dst", &ids, &[]);
    let a = Fake::new("a", Vec::new());
    let b = Fake::new("b", Vec::new()).fail_load("nvram locked");
    let _helpers = Helpers::library(&dst.dir, &[&a, &b]);
    dst.wait_connected(&ids);
    let (qemu, outcome) = load(root, &dst, &ids);
    assert!(!outcome.completed(), "{}", explain(&outcome, &qemu, &dst));
    assert_eq!(b.loads(), 1, "Load calls on b");
    let said = qemu.stderr();
    assert!(
        said.contains(r#"helper "b""#) && said.contains("nvram locked"),
        "QEMU's stderr does not name b and its error:\n{}",
        explain(&outcome, &qemu, &dst)
    );
}

/// QEMU connects once and keeps its connection; a new QEMU process on
/// the same front door (QEMU restarted) replaces the old one and
/// migrates the same helpers again.
#[test]
fn a_restarted_qemu_is_served_on_the_same_front_door() {
    if !require(Requirement::Qemu) {
        return;
    }
    let ids = ["a", "b"];
    let tmp = tmpdir();
    let root = tmp.path();
    let side = FrontDoor::start(root, "src", &ids, &[]);
    let helpers = Helpers::start(Kind::Library, &side.dir, &SIZES, SEED);
    side.wait_connected(&ids);
    let (qemu, outcome) = save(root, &side, &ids);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &side));
    drop(qemu);

    for fake in &helpers.fakes {
        fake.set_data(pattern(64, 0x33));
    }
    let (qemu, outcome) = save(root, &side, &ids);
    assert!(outcome.completed(), "{}", explain(&outcome, &qemu, &side));
    assert_records(
        &saved_by_qemu(&root.join("migration")),
        &expected(&[("a", 64), ("b", 64)], 0x33),
        "the second QEMU's migration file",
    );
}
