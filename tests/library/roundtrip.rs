//! Save and load round trips at blob sizes around the boundaries that have
//! broken implementations before (QEMU once could not load over 4 KiB).

use crate::util::*;

fn round_trip(size: usize) {
    run(async move {
        let dir = tmpdir();
        let stream = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["big", "small"]).bind().unwrap();
        let original = pattern(size, 0x5a);
        let big = Fake::new("big", original.clone());
        let small = Fake::new("small", vec![7]);
        let tb = big.spawn(sock(dir.path(), "big"));
        let ts = small.spawn(sock(dir.path(), "small"));
        let saved = c.save_to_path(&stream).await.unwrap();
        let big_report = saved.helpers.iter().find(|h| h.id == "big").unwrap();
        assert_eq!(big_report.transfer.bytes, size as u64);

        // Wipe, then restore from the file.
        big.set_data(vec![0xee; 3]);
        small.set_data(Vec::new());
        let loaded = c.load_from_path(&stream, None).await.unwrap();
        assert_eq!(loaded.helpers.len(), 2);
        assert!(
            big.data() == original,
            "state of {size} bytes came back different"
        );
        assert_eq!(small.data(), vec![7]);
        c.shutdown().await;
        tb.await.unwrap();
        ts.await.unwrap();
    });
}

#[test]
fn round_trip_0_bytes() {
    round_trip(0);
}

#[test]
fn round_trip_1_byte() {
    round_trip(1);
}

#[test]
fn round_trip_4095_bytes() {
    round_trip(4095);
}

#[test]
fn round_trip_4096_bytes() {
    round_trip(4096);
}

#[test]
fn round_trip_4097_bytes() {
    round_trip(4097);
}

#[test]
fn round_trip_64_kib() {
    round_trip(64 << 10);
}

#[test]
fn round_trip_1_mib() {
    round_trip(1 << 20);
}

#[test]
fn round_trip_16_mib() {
    round_trip(16 << 20);
}
