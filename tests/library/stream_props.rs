//! Property tests for the stream decoders: arbitrary input gives an error,
//! never a panic or a huge allocation; valid streams round-trip; any
//! single-byte change to a native stream is caught.

use dbus_vmstate::stream::{self, native, qemu, Limits, Record};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

/// Small caps, so hostile lengths hit them quickly.
fn small() -> Limits {
    Limits {
        max_blob_bytes: 4096,
        max_helpers: 8,
    }
}

/// Up to 4 helpers with distinct Ids and blobs of up to 2000 bytes.
fn records() -> impl Strategy<Value = Vec<Record>> {
    btree_map("[a-zA-Z0-9._-]{1,16}", vec(any::<u8>(), 0..2000), 0..4).prop_map(|m| {
        m.into_iter()
            .map(|(id, data)| Record { id, data })
            .collect()
    })
}

/// The native header, so arbitrary bytes after it reach the record parser.
fn native_header() -> Vec<u8> {
    native::encode(&[]).unwrap()[..native::HEADER_BYTES].to_vec()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = native::read_all(&bytes[..], small());
        let _ = native::inspect(&bytes[..], small());
        let _ = qemu::decode(&bytes, small());
        let _ = stream::read_records(&bytes[..], small());
    }

    #[test]
    fn arbitrary_records_after_a_valid_header_never_panic(tail in vec(any::<u8>(), 0..512)) {
        let mut bytes = native_header();
        bytes.extend_from_slice(&tail);
        prop_assert!(native::read_all(&bytes[..], small()).is_err());
        prop_assert!(native::inspect(&bytes[..], small()).is_err());
    }

    #[test]
    fn records_round_trip(records in records()) {
        let bytes = native::encode(&records).unwrap();
        prop_assert_eq!(&native::read_all(&bytes[..], small()).unwrap(), &records);
        let bytes = qemu::encode(&records).unwrap();
        let decoded = qemu::decode(&bytes, small()).unwrap();
        prop_assert_eq!(decoded.records, records);
        prop_assert_eq!(decoded.trailing_bytes, 0);
    }

    #[test]
    fn interleaved_writes_round_trip(
        records in records(),
        schedule in vec((any::<prop::sample::Index>(), 0usize..700), 0..40),
    ) {
        let mut w = native::Writer::new(Vec::new()).unwrap();
        let handles: Vec<u32> = records.iter().map(|r| w.begin(&r.id).unwrap()).collect();
        let mut done = vec![0usize; records.len()];
        if !records.is_empty() {
            for (pick, len) in schedule {
                let i = pick.index(records.len());
                let data = &records[i].data;
                let end = (done[i] + len).min(data.len());
                w.write_chunk(handles[i], &data[done[i]..end]).unwrap();
                done[i] = end;
            }
        }
        for (i, r) in records.iter().enumerate() {
            w.write_chunk(handles[i], &r.data[done[i]..]).unwrap();
            w.end(handles[i]).unwrap();
        }
        let bytes = w.finish().unwrap();
        prop_assert_eq!(native::read_all(&bytes[..], small()).unwrap(), records);
    }

    #[test]
    fn any_single_byte_change_to_a_native_stream_is_rejected(
        records in records(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = native::encode(&records).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(native::read_all(&bytes[..], small()).is_err());
        prop_assert!(native::inspect(&bytes[..], small()).is_err());
    }

    #[test]
    fn changed_qemu_payloads_never_panic(
        records in records(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = qemu::encode(&records).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = value;
        let _ = qemu::decode(&bytes, small());
        let _ = qemu::decode(&bytes[..cut.index(bytes.len() + 1)], small());
    }
}
