//! Decoders never allocate beyond their caps, whatever the input claims:
//! a counting allocator measures the peak of each decode on this thread.

// A global allocator is unsafe by nature; it is this binary's only unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dbus_vmstate::stream::native::{ReadOptions, WriteOptions};
use dbus_vmstate::stream::{self, native, qemu, Key, Limits, Record};
use proptest::collection::vec;
use proptest::prelude::*;

/// Counts live bytes and their peak, per thread (tests run in parallel).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: the caller upholds `GlobalAlloc`'s contract; passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated (above the level at the start) while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    (out, peak.max(0) as usize)
}

const LIMITS: Limits = Limits {
    max_blob_bytes: 64 << 10,
    max_helpers: 16,
};

/// What a decode of `input_len` bytes may allocate: the input's own size
/// twice over (records kept, buffers grown by doubling), one blob at the
/// cap, and a fixed allowance for bookkeeping.
fn bound(input_len: usize) -> usize {
    2 * input_len + LIMITS.max_blob_bytes as usize + (64 << 10)
}

/// What a decode that rejects a length over the cap may allocate: the
/// input twice over and bookkeeping, far below the smallest claim tested
/// (the cap plus 1 KiB), so a claim allocated in full does not pass.
fn claim_bound(input_len: usize) -> usize {
    2 * input_len + (16 << 10)
}

/// What a decode of a claim within the caps may allocate, the input being
/// `input_len` bytes: one writer chunk (the native reader's buffer grows to
/// that once the bytes fill what it has, then by doubling; QEMU's cap is
/// the same 1 MiB), twice the bytes that arrived, and bookkeeping. Below
/// the claims tested, so a claim allocated before its bytes arrive fails.
fn arriving_bound(input_len: usize) -> usize {
    native::CHUNK_BYTES + 2 * input_len + (16 << 10)
}

/// A native header followed by one record header claiming `len` payload
/// bytes that never come.
fn native_claiming(len: u32, kind: u8) -> Vec<u8> {
    let mut bytes = native::encode(&[]).unwrap()[..native::HEADER_BYTES].to_vec();
    if kind != 1 {
        bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'a']);
        let crc = crc32c::crc32c(&bytes[native::HEADER_BYTES..]);
        bytes.extend_from_slice(&crc.to_le_bytes());
    }
    bytes.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// A QEMU payload whose one entry claims `len` data bytes.
fn qemu_claiming(nelem: u32, len: u32) -> Vec<u8> {
    let mut bytes = nelem.to_be_bytes().to_vec();
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.push(b'a');
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

/// Decodes `input` with both native decoders: for each, its name, whether
/// it rejected the input, and the peak it allocated.
fn native_decodes(input: &[u8], limits: Limits) -> [(&'static str, bool, usize); 2] {
    let (result, read_all) = peak_during(|| native::read_all(input, limits));
    let read_all_rejected = result.is_err();
    let (result, inspect) = peak_during(|| native::inspect(input, limits));
    [
        ("read_all", read_all_rejected, read_all),
        ("inspect", result.is_err(), inspect),
    ]
}

#[test]
fn the_counting_allocator_sees_allocations() {
    let (v, peak) = peak_during(|| vec![1u8; 3 << 20]);
    assert!(peak >= 3 << 20, "peak {peak}");
    drop(v);
    let (_, peak) = peak_during(|| ());
    assert!(peak < 1024, "peak {peak}");
}

#[test]
fn lying_lengths_allocate_nothing_near_what_they_claim() {
    for len in [
        u32::MAX,
        1 << 31,
        16 << 20,
        (16 << 20) + 1,
        1 << 20,
        65 << 10,
    ] {
        for kind in [1u8, 2] {
            let input = native_claiming(len, kind);
            for (decoder, rejected, peak) in native_decodes(&input, LIMITS) {
                assert!(rejected, "{decoder}: claim {len} kind {kind}");
                assert!(
                    peak <= claim_bound(input.len()),
                    "{decoder} claim {len} kind {kind}: peak {peak}"
                );
            }
        }
        let input = qemu_claiming(1, len);
        let (result, peak) = peak_during(|| qemu::decode(&input, LIMITS));
        assert!(result.is_err(), "qemu claim {len}");
        assert!(
            peak <= claim_bound(input.len()),
            "qemu claim {len}: peak {peak}"
        );
    }
    for nelem in [u32::MAX, 1 << 20, 17] {
        let input = qemu_claiming(nelem, 1);
        let (result, peak) = peak_during(|| qemu::decode(&input, LIMITS));
        assert!(result.is_err(), "qemu nelem {nelem}");
        assert!(
            peak <= claim_bound(input.len()),
            "qemu nelem {nelem}: peak {peak}"
        );
    }
}

#[test]
fn claims_within_the_caps_are_allocated_as_their_bytes_arrive() {
    let limits = Limits::default();
    for len in [2 << 20, native::MAX_CHUNK_PAYLOAD_BYTES] {
        for arrived in [0, 1, 3 << 20] {
            let mut input = native_claiming(len as u32, 2);
            input.extend(std::iter::repeat_n(7u8, arrived));
            for (decoder, rejected, peak) in native_decodes(&input, limits) {
                assert!(rejected, "{decoder}: claim {len}, {arrived} bytes");
                assert!(
                    peak <= arriving_bound(input.len()),
                    "{decoder} claim {len}, {arrived} bytes arrived: peak {peak}"
                );
            }
        }
    }
    // QEMU's decoder allocates a checked claim in full before reading it:
    // bounded by its cap, which this bound allows, not by what arrived.
    let input = qemu_claiming(1, qemu::MAX_QEMU_BLOB_BYTES as u32);
    let (result, peak) = peak_during(|| qemu::decode(&input, limits));
    assert!(result.is_err());
    assert!(
        peak <= arriving_bound(input.len()),
        "qemu claim at its cap: peak {peak}"
    );
}

#[test]
fn a_valid_stream_decodes_within_the_bound() {
    let records = vec![
        Record::new("a", vec![7; 60 << 10]),
        Record::new("b", vec![]),
    ];
    let input = native::encode(&records).unwrap();
    let (result, peak) = peak_during(|| native::read_all(&input[..], LIMITS));
    assert_eq!(result.unwrap(), records);
    assert!(peak <= bound(input.len()), "peak {peak}");
}

/// One record with its CRC.
fn record(kind: u8, encoding: u8, helper: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, encoding, 0, 0];
    r.extend_from_slice(&helper.to_le_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(payload);
    let crc = crc32c::crc32c(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    r
}

/// A compressed (version 2, unencrypted) stream: header, `BEGIN "a"`,
/// and one zstd `CHUNK` whose decoded-length prefix says `claim`, with
/// `frame` after it; nothing after the chunk (the decoder must refuse
/// the chunk itself, not the missing rest).
fn compressed_claiming(claim: u32, frame: &[u8]) -> Vec<u8> {
    let options = WriteOptions {
        compress: true,
        ..WriteOptions::default()
    };
    let mut bytes = native::encode_with(&[], &options).unwrap()[..native::HEADER_BYTES].to_vec();
    assert_eq!(&bytes[12..16], &native::FLAG_COMPRESSED.to_le_bytes());
    bytes.extend(record(1, 0, 0, b"a"));
    let mut payload = claim.to_le_bytes().to_vec();
    payload.extend_from_slice(frame);
    bytes.extend(record(2, 1, 0, &payload));
    bytes
}

/// Decodes `input` as a compressed stream with both decoders that
/// decompress: whether each rejected it, and its peak.
fn compressed_decodes(input: &[u8], limits: Limits) -> [(&'static str, bool, usize); 2] {
    let options = ReadOptions::default();
    let (result, read_all) = peak_during(|| native::read_all_with(input, limits, &options));
    let read_all_rejected = result.is_err();
    let (result, inspect) = peak_during(|| native::inspect_with(input, limits, &options));
    [
        ("read_all", read_all_rejected, read_all),
        ("inspect", result.is_err(), inspect),
    ]
}

#[test]
fn compressed_chunks_claiming_too_much_allocate_nothing_near_it() {
    let frame = zstd::bulk::compress(&[0u8; 1000], 1).unwrap();
    for claim in [u32::MAX, (16 << 20) + 1, 1 << 31] {
        let input = compressed_claiming(claim, &frame);
        // The claim is over the chunk cap whatever the blob limit.
        for limits in [LIMITS, Limits::default()] {
            for (decoder, rejected, peak) in compressed_decodes(&input, limits) {
                assert!(rejected, "{decoder}: claim {claim}");
                assert!(
                    peak <= claim_bound(input.len()),
                    "{decoder} claim {claim}: peak {peak}"
                );
            }
        }
        match native::read_all(&input[..], Limits::default()).unwrap_err() {
            stream::Error::OverLimit { what, .. } => assert_eq!(what, "decompressed chunk"),
            err => panic!("claim {claim}: {err:?}"),
        }
    }
}

#[test]
fn a_zstd_bomb_over_the_blob_limit_allocates_nothing_near_it() {
    // 1 MiB of zeros in a frame of a few dozen bytes, its prefix honest.
    let zeros = vec![0u8; 1 << 20];
    let frame = zstd::bulk::compress(&zeros, 19).unwrap();
    drop(zeros);
    assert!(frame.len() < 1024, "{} bytes", frame.len());
    let input = compressed_claiming(1 << 20, &frame);
    for (decoder, rejected, peak) in compressed_decodes(&input, LIMITS) {
        assert!(rejected, "{decoder}");
        assert!(
            peak <= bound(input.len()),
            "{decoder}: peak {peak} for a blob limit of {}",
            LIMITS.max_blob_bytes
        );
    }
    match native::read_all(&input[..], LIMITS).unwrap_err() {
        stream::Error::OverLimit { what, limit, .. } => {
            assert_eq!((what, limit), ("blob", LIMITS.max_blob_bytes));
        }
        err => panic!("{err:?}"),
    }
    // The same chunk within a limit that allows it is read: the refusal
    // above is the limit's, not the frame's.
    let limits = Limits {
        max_blob_bytes: 1 << 20,
        ..LIMITS
    };
    let mut input = input;
    let end_payload = {
        let mut p = (1u64 << 20).to_le_bytes().to_vec();
        p.extend_from_slice(&crc32c::crc32c(&vec![0u8; 1 << 20]).to_le_bytes());
        p
    };
    input.extend(record(3, 0, 0, &end_payload));
    let mut stream_end = 1u32.to_le_bytes().to_vec();
    stream_end.extend_from_slice(&(1u64 << 20).to_le_bytes());
    input.extend(record(0xFF, 0, u32::MAX, &stream_end));
    let records = native::read_all(&input[..], limits).unwrap();
    assert_eq!(records, [Record::new("a", vec![0u8; 1 << 20])]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn mutated_compressed_encrypted_streams_never_panic_nor_overallocate(
        data in vec(any::<u8>(), 0..3000),
        zeros in 0usize..(200 << 10),
        at in vec(any::<prop::sample::Index>(), 1..4),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let key = Key::from_bytes([0x42; 32]);
        // "z" inflates past the blob limit when it is over 64 KiB.
        let records = vec![
            Record::new("a", data),
            Record::new("z", vec![0; zeros]),
            Record::new("b", vec![1, 2, 3]),
        ];
        let options = WriteOptions { compress: true, key: Some(key.clone()), ..WriteOptions::default() };
        let good = native::encode_with(&records, &options).unwrap();
        let mut bad = good.clone();
        if truncate {
            bad.truncate(cut.index(good.len()));
        } else {
            for at in &at {
                bad[at.index(good.len())] ^= xor;
            }
        }
        let read = ReadOptions::with_key(key);
        let (result, peak) = peak_during(|| native::read_all_with(&bad[..], LIMITS, &read));
        prop_assert!(peak <= bound(bad.len()), "peak {}", peak);
        match result {
            Err(_) => {}
            Ok(decoded) => {
                prop_assert!(zeros <= LIMITS.max_blob_bytes as usize);
                prop_assert_eq!(decoded, records, "a changed stream decoded to other content");
            }
        }
        // The survey reads a claimed record into a buffer of up to one
        // writer chunk before its bytes arrive, as the record reader does
        // (`arriving_bound`).
        let (_, peak) = peak_during(|| native::survey(&bad[..], LIMITS));
        prop_assert!(peak <= arriving_bound(bad.len()), "survey peak {}", peak);
    }
}

proptest! {
    #[test]
    fn arbitrary_input_allocates_within_the_bound(bytes in vec(any::<u8>(), 0..4096)) {
        let (_, peak) = peak_during(|| native::read_all(&bytes[..], LIMITS));
        prop_assert!(peak <= bound(bytes.len()), "native peak {}", peak);
        let (_, peak) = peak_during(|| qemu::decode(&bytes, LIMITS));
        prop_assert!(peak <= bound(bytes.len()), "qemu peak {}", peak);
        let (_, peak) = peak_during(|| stream::read_records(&bytes[..], LIMITS));
        prop_assert!(peak <= bound(bytes.len()), "auto peak {}", peak);
    }

    #[test]
    fn arbitrary_records_after_a_header_allocate_within_the_bound(tail in vec(any::<u8>(), 0..4096)) {
        let mut bytes = native::encode(&[]).unwrap()[..native::HEADER_BYTES].to_vec();
        bytes.extend_from_slice(&tail);
        let (result, peak) = peak_during(|| native::read_all(&bytes[..], LIMITS));
        prop_assert!(result.is_err());
        prop_assert!(peak <= bound(bytes.len()), "peak {}", peak);
    }

    #[test]
    fn mutated_native_streams_are_rejected_or_unchanged(
        data in vec(any::<u8>(), 0..3000),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let records = vec![Record::new("a", data), Record::new("b", vec![1, 2, 3])];
        let good = native::encode(&records).unwrap();
        let mut bad = good.clone();
        if truncate {
            bad.truncate(cut.index(good.len()));
        } else {
            bad[at.index(good.len())] ^= xor;
        }
        match native::read_all(&bad[..], LIMITS) {
            Err(_) => {}
            Ok(decoded) => prop_assert_eq!(decoded, records, "a changed stream decoded to other content"),
        }
    }
}
