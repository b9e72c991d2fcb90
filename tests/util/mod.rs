//! Shared test support: short temporary socket directories, the scripted
//! fake helpers ([`Fake`] on the library, [`Raw`] on bare zbus), waiting
//! for events under a deadline, skipping what the machine cannot run, the
//! tests' own runtime, and real processes ([`process`], and QEMU in
//! [`qemu`]).

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbus_vmstate::coordinator;

mod fake;
pub mod process;
pub mod qemu;
mod raw;
mod require;
pub mod rt;

// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use fake::{Fake, Step};
#[allow(unused_imports)]
pub use raw::Raw;
#[allow(unused_imports)]
pub use require::{require, Requirement, PYTHON, REQUIRE_ALL};

/// Every socket test runs under this deadline, so a hang fails the test
/// instead of stalling CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Short timeouts so that tests of missing or hung helpers finish quickly.
pub const SHORT: Duration = Duration::from_millis(500);

/// How long [`until`] waits for an event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `body` on the tests' runtime, failing the test if it takes longer
/// than [`TEST_TIMEOUT`].
pub fn run<F: Future<Output = T>, T>(body: F) -> T {
    rt::block_on(async {
        match rt::timeout(TEST_TIMEOUT, body).await {
            Ok(v) => v,
            Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
        }
    })
}

/// Waits until `cond` holds, checking every 5 ms, failing the test after
/// [`EVENT_TIMEOUT`].
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < EVENT_TIMEOUT,
            "timed out after {EVENT_TIMEOUT:?} waiting for {what}"
        );
        rt::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `future`, failing the test if it takes longer than
/// [`EVENT_TIMEOUT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    rt::timeout(EVENT_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"))
}

/// A temporary directory under /tmp with a short name (`sun_path` is 108
/// bytes), removed when dropped.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dv")
        .tempdir_in("/tmp")
        .expect("create temporary directory")
}

/// Deterministic test data of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// This process's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A coordinator builder for `ids` in `dir`, with short timeouts.
pub fn builder(dir: &Path, ids: &[&str]) -> coordinator::Builder {
    coordinator::Builder::new()
        .socket_dir(dir, ids.iter().copied())
        .connect_timeout(Duration::from_secs(10))
        .call_timeout(Duration::from_secs(10))
}

/// Socket path of `id` in `dir`.
pub fn sock(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.sock"))
}

/// Waits until the coordinator sees every required helper.
pub async fn connected(c: &coordinator::Coordinator) {
    c.wait_connected(Duration::from_secs(10))
        .await
        .expect("helpers connect");
}

/// A state no stream of the tests holds: given to helpers before a load
/// that must fail, so that one completed by mistake shows.
pub const OLD: &[u8] = b"old state";

/// Gives every helper the [`OLD`] state.
pub fn give_old<'a>(fakes: impl IntoIterator<Item = &'a std::sync::Arc<Fake>>) {
    for f in fakes {
        f.set_data(OLD.to_vec());
    }
}

/// Checks that every helper still holds the [`OLD`] state after `what`.
pub fn assert_all_old<'a>(fakes: impl IntoIterator<Item = &'a std::sync::Arc<Fake>>, what: &str) {
    for f in fakes {
        assert!(
            f.data() == OLD,
            "{what}: helper {:?} completed a load from a stream that failed",
            dbus_vmstate::helper::State::id(f.as_ref())
        );
    }
}

/// Checks that `c` still serves after a fault: with `helpers` scripted to
/// behave (their scripts reset to [`Step::Whole`], fresh state each), a
/// save succeeds and the load of that stream restores exactly that state.
/// Not for a helper left in a [`Step::Hang`] (its thread stays blocked).
pub async fn assert_still_serves(c: &coordinator::Coordinator, helpers: &[&std::sync::Arc<Fake>]) {
    let mut held = Vec::new();
    for (i, h) in helpers.iter().enumerate() {
        h.set_save(Step::Whole);
        h.set_load(Step::Whole);
        let data = pattern(100 + i, 0xA0 ^ i as u8);
        h.set_data(data.clone());
        held.push(data);
    }
    let (bytes, report) = c
        .save(Vec::new())
        .await
        .expect("the coordinator still saves after the fault");
    assert_eq!(report.helpers.len(), helpers.len(), "{report:?}");
    for h in helpers {
        h.set_data(b"not loaded".to_vec());
    }
    c.load(std::io::Cursor::new(bytes), None)
        .await
        .expect("the coordinator still loads after the fault");
    for (h, data) in helpers.iter().zip(held) {
        assert_eq!(h.data(), data, "state restored after the fault");
    }
}
