//! Save/load cycles with 16 helpers, some failing at random and some
//! reconnecting, for a bounded number of rounds: the coordinator keeps
//! working and its file descriptors and memory do not grow.

// A global allocator is unsafe by nature; it is this binary's only unsafe code.
#![allow(unsafe_code)]

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use util::*;

const HELPERS: usize = 16;
const WARMUP_ROUNDS: usize = 30;
const ROUNDS: usize = 90;
const STATE_BYTES: usize = 64 << 10;
/// Rounds at each end of the measured ones whose lowest heap reading is
/// taken (see [`heap_growth`]).
const WINDOW_ROUNDS: usize = 10;
/// Heap growth allowed between the two windows: 50 rounds apart, a leak of
/// 64 bytes per helper per round would be 50 KiB, of 20 bytes 16 KiB. At
/// the quiet end of a round the heap in use varies by about 2 KiB.
const HEAP_SLACK_BYTES: isize = 16 << 10;
/// How long closed connections may take to give their descriptors back.
const SETTLE: Duration = Duration::from_secs(10);

/// A helper's script for one round.
fn script(fail: bool, msg: &str) -> Step {
    if fail {
        Step::Fail(msg.to_string())
    } else {
        Step::Whole
    }
}

/// xorshift64*: deterministic "random" choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Counts the bytes allocated and not yet freed, process-wide: unlike RSS,
/// this does not depend on what the allocator keeps cached.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// How much the heap in use grew from the first `WINDOW_ROUNDS` readings
/// to the last, each taken at the end of a round. Closing connections
/// hold buffers for a while after some rounds; the lowest reading of each
/// window is one without them.
fn heap_growth(readings: &[isize]) -> isize {
    let floor = |w: &[isize]| w.iter().copied().min().expect("readings");
    let last = readings.len() - WINDOW_ROUNDS;
    floor(&readings[last..]) - floor(&readings[..WINDOW_ROUNDS])
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn save_load_cycles_with_random_failures_do_not_leak() {
    run(async {
        let dir = tmpdir();
        let ids: Vec<String> = (0..HELPERS).map(|i| format!("h{i}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let c = builder(dir.path(), &id_refs)
            .call_timeout(Duration::from_secs(10))
            .bind()
            .unwrap();
        let helpers: Vec<Arc<Fake>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Fake::new(id, pattern(STATE_BYTES, i as u8)))
            .collect();
        for h in &helpers {
            drop(h.spawn_in(dir.path()));
        }
        connected(&c).await;

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut saves_ok, mut saves_failed, mut loads_ok, mut loads_failed) = (0, 0, 0, 0);
        let mut baseline = None;
        let mut heap = Vec::new();
        for round in 0..ROUNDS {
            if round == WARMUP_ROUNDS {
                baseline = Some((open_fds(), rss_kib()));
            }
            // Some helpers reconnect (the new connection replaces the old).
            for h in &helpers {
                if rng.chance(5) {
                    drop(h.spawn_in(dir.path()));
                }
            }
            connected(&c).await;
            let mut expect_save_ok = true;
            for h in &helpers {
                let fail = rng.chance(3);
                h.set_save(script(fail, "injected save failure"));
                expect_save_ok &= !fail;
            }
            match c.save(Vec::new()).await {
                Ok((stream, report)) => {
                    assert!(expect_save_ok, "round {round}: save should have failed");
                    assert_eq!(report.helpers.len(), HELPERS);
                    saves_ok += 1;
                    let mut expect_load_ok = true;
                    for h in &helpers {
                        let fail = rng.chance(3);
                        h.set_load(script(fail, "injected load failure"));
                        expect_load_ok &= !fail;
                    }
                    let loaded = c.load(std::io::Cursor::new(stream), None).await;
                    assert_eq!(loaded.is_ok(), expect_load_ok, "round {round}: {loaded:?}");
                    if loaded.is_ok() {
                        loads_ok += 1;
                    } else {
                        loads_failed += 1;
                    }
                }
                Err(e) => {
                    assert!(!expect_save_ok, "round {round}: unexpected failure: {e}");
                    assert!(
                        e.to_string().contains("injected save failure")
                            || dbus_vmstate::error::chain(&e).contains("injected save failure")
                    );
                    saves_failed += 1;
                }
            }
            if round >= WARMUP_ROUNDS {
                heap.push(live_bytes());
            }
        }
        connected(&c).await;
        let (fds_before, rss_before) = baseline.unwrap();
        // Replaced connections finish closing in the background: wait for
        // the descriptors to come back (a leak times out here).
        let settled = util::rt::timeout(SETTLE, async {
            while open_fds() > fds_before {
                util::rt::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok();
        let (fds_after, rss_after) = (open_fds(), rss_kib());
        let growth = heap_growth(&heap);
        eprintln!(
            "saves ok/failed {saves_ok}/{saves_failed}, loads ok/failed {loads_ok}/{loads_failed}; \
             fds {fds_before} -> {fds_after}; heap in use grew by {growth} bytes; \
             rss {rss_before} -> {rss_after} KiB (allocator caches included)"
        );
        assert!(saves_ok > 5 && saves_failed > 5, "both outcomes exercised");
        assert!(loads_ok > 2 && loads_failed > 2, "both outcomes exercised");
        assert!(
            settled && fds_after <= fds_before,
            "file descriptors grew from {fds_before} to {fds_after} (waited {SETTLE:?})"
        );
        assert!(
            growth < HEAP_SLACK_BYTES,
            "heap in use grew by {growth} bytes over {} rounds (allowed: {HEAP_SLACK_BYTES})",
            heap.len() - WINDOW_ROUNDS
        );
        for (i, h) in helpers.iter().enumerate() {
            assert_eq!(h.data(), pattern(STATE_BYTES, i as u8));
        }
    });
}
