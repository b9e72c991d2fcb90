//! Property tests for the stream decoders: arbitrary input gives an error,
//! never a panic or a huge allocation; valid streams round-trip; any
//! single-byte change to a native stream is caught.

use dbus_vmstate::stream::native::{ReadOptions, WriteOptions};
use dbus_vmstate::stream::{self, native, qemu, Key, Limits, Record};

use crate::stream_v2::Framed;
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
        let w = native::Writer::new(Vec::new()).unwrap();
        let bytes = write_interleaved(w, &records, schedule);
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

/// Up to 4 helpers whose blobs are random (incompressible) or runs of a
/// short pattern (compressible), so compressed streams hold both
/// encodings.
fn v2_records() -> impl Strategy<Value = Vec<Record>> {
    let blob = prop_oneof![
        vec(any::<u8>(), 0..1500),
        (vec(any::<u8>(), 1..8), 0usize..4000).prop_map(|(pattern, len)| pattern
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()),
    ];
    btree_map("[a-zA-Z0-9._-]{1,16}", blob, 0..4).prop_map(|m| {
        m.into_iter()
            .map(|(id, data)| Record { id, data })
            .collect()
    })
}

/// Writes `records` with `w`, their chunks interleaved as `schedule`
/// says (a record and a length each), the rest of each at the end.
fn write_interleaved(
    mut w: native::Writer<Vec<u8>>,
    records: &[Record],
    schedule: Vec<(prop::sample::Index, usize)>,
) -> Vec<u8> {
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
    w.finish().unwrap()
}

fn v2_write(compress: bool, key: Option<&Key>) -> WriteOptions {
    WriteOptions {
        compress,
        key: key.cloned(),
        ..WriteOptions::default()
    }
}

fn v2_read(key: Option<&Key>) -> ReadOptions {
    ReadOptions {
        key: key.cloned(),
        allow_unencrypted: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn v2_records_round_trip(
        records in v2_records(),
        compress in any::<bool>(),
        encrypt in any::<bool>(),
        key in any::<[u8; 32]>(),
    ) {
        let key = Key::from_bytes(key);
        let key = encrypt.then_some(&key);
        let bytes = native::encode_with(&records, &v2_write(compress, key)).unwrap();
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        prop_assert_eq!(version, if compress || encrypt { 2 } else { 1 });
        let decoded = native::read_all_with(&bytes[..], small(), &v2_read(key)).unwrap();
        prop_assert_eq!(&decoded, &records);
        let summary = native::inspect_with(&bytes[..], small(), &v2_read(key)).unwrap();
        prop_assert_eq!(summary.helpers.len(), records.len());
        prop_assert_eq!(summary.stream_bytes, bytes.len() as u64);
        prop_assert_eq!(summary.key_id, key.map(Key::id));
        if !compress {
            prop_assert!(summary.helpers.iter().all(|h| h.compressed_chunks == 0));
        }
        let survey = native::survey(&bytes[..], small()).unwrap();
        prop_assert_eq!(survey.helpers.len(), records.len());
    }

    #[test]
    fn v2_interleaved_writes_round_trip(
        records in v2_records(),
        compress in any::<bool>(),
        encrypt in any::<bool>(),
        schedule in vec((any::<prop::sample::Index>(), 0usize..700), 0..20),
    ) {
        let key = Key::from_bytes([0x11; 32]);
        let key = encrypt.then_some(&key);
        let w = native::Writer::with_options(Vec::new(), &v2_write(compress, key)).unwrap();
        let bytes = write_interleaved(w, &records, schedule);
        prop_assert_eq!(native::read_all_with(&bytes[..], small(), &v2_read(key)).unwrap(), records);
    }

    #[test]
    fn any_byte_change_to_an_encrypted_stream_is_rejected(
        records in v2_records(),
        compress in any::<bool>(),
        at in vec(any::<prop::sample::Index>(), 1..4),
        xor in 1u8..=255,
    ) {
        let key = Key::from_bytes([0x22; 32]);
        let mut bytes = native::encode_with(&records, &v2_write(compress, Some(&key))).unwrap();
        for at in &at {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        // Flips at one position an even number of times cancel out.
        let mut positions: Vec<usize> = at.iter().map(|a| a.index(bytes.len())).collect();
        positions.sort_unstable();
        let changed = positions
            .chunk_by(|a, b| a == b)
            .any(|run| run.len() % 2 == 1);
        let result = native::read_all_with(&bytes[..], small(), &v2_read(Some(&key)));
        if changed {
            prop_assert!(result.is_err(), "a changed stream decoded");
            prop_assert!(native::inspect_with(&bytes[..], small(), &v2_read(Some(&key))).is_err());
        } else {
            prop_assert_eq!(result.unwrap(), records);
        }
    }

    #[test]
    fn payload_changes_with_fixed_crcs_fail_authentication(
        records in v2_records(),
        compress in any::<bool>(),
        record in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let key = Key::from_bytes([0x33; 32]);
        let bytes = native::encode_with(&records, &v2_write(compress, Some(&key))).unwrap();
        let mut framed = Framed::parse(&bytes);
        let r = record.index(framed.records.len());
        let payload = &mut framed.records[r].1;
        let i = at.index(payload.len());
        payload[i] ^= xor;
        let err = native::read_all_with(&framed.assemble()[..], small(), &v2_read(Some(&key))).unwrap_err();
        prop_assert!(matches!(err, stream::Error::Authentication { .. }), "{:?}", err);
    }

    #[test]
    fn another_key_is_refused_before_any_record(
        records in v2_records(),
        compress in any::<bool>(),
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
    ) {
        prop_assume!(a != b);
        let (a, b) = (Key::from_bytes(a), Key::from_bytes(b));
        let bytes = native::encode_with(&records, &v2_write(compress, Some(&a))).unwrap();
        match native::read_all_with(&bytes[..], small(), &v2_read(Some(&b))) {
            Err(stream::Error::WrongKey { stream, given }) => {
                prop_assert_eq!(stream, a.id());
                prop_assert_eq!(given, b.id());
            }
            other => prop_assert!(false, "{:?}", other.map(|r| r.len())),
        }
    }
}
