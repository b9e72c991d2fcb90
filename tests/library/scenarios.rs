//! QEMU's own dbus-vmstate test scenarios (tests/qtest/dbus-vmstate-test.c),
//! carried over to one socket per helper.

use crate::util::*;
use dbus_vmstate::{coordinator, Error};

/// Saves idA and idB from helpers holding `a` and `b`, then loads the
/// stream into fresh helpers through `dst`; returns the fresh helpers.
async fn migrate(
    src: coordinator::Builder,
    dst: coordinator::Builder,
    src_dir: &std::path::Path,
    dst_dir: &std::path::Path,
) -> (std::sync::Arc<Fake>, std::sync::Arc<Fake>) {
    let stream = src_dir.join("state.vmstate");
    let source = src.bind().unwrap();
    let (a, b) = (
        Fake::new("idA", b"I'am\0idA!\0".to_vec()),
        Fake::new("idB", b"I'am\0idB!\0".to_vec()),
    );
    let ta = a.spawn(sock(src_dir, "idA"));
    let tb = b.spawn(sock(src_dir, "idB"));
    let report = source.save_to_path(&stream).await.unwrap();
    assert_eq!(report.helpers.len(), 2);
    source.shutdown().await;
    ta.await.unwrap();
    tb.await.unwrap();

    let destination = dst.bind().unwrap();
    let (a2, b2) = (Fake::new("idA", Vec::new()), Fake::new("idB", Vec::new()));
    let ta = a2.spawn(sock(dst_dir, "idA"));
    let tb = b2.spawn(sock(dst_dir, "idB"));
    let report = destination.load_from_path(&stream, None).await.unwrap();
    assert_eq!(report.helpers.len(), 2);
    destination.shutdown().await;
    ta.await.unwrap();
    tb.await.unwrap();
    (a2, b2)
}

#[test]
fn both_helpers_migrated_with_id_list() {
    run(async {
        let (s, d) = (tmpdir(), tmpdir());
        let (a, b) = migrate(
            builder(s.path(), &["idA", "idB"]),
            builder(d.path(), &["idA", "idB"]),
            s.path(),
            d.path(),
        )
        .await;
        assert_eq!(a.data(), b"I'am\0idA!\0");
        assert_eq!(b.data(), b"I'am\0idB!\0");
        assert_eq!((a.loads(), b.loads()), (1, 1));
    });
}

#[test]
fn both_helpers_migrated_without_id_list() {
    // Each helper named with its own socket path instead of a directory
    // plus an id list.
    run(async {
        let (s, d) = (tmpdir(), tmpdir());
        let explicit = |dir: &std::path::Path| {
            coordinator::Builder::new()
                .helper("idA", sock(dir, "idA"))
                .helper("idB", sock(dir, "idB"))
        };
        let (a, b) = migrate(explicit(s.path()), explicit(d.path()), s.path(), d.path()).await;
        assert_eq!(a.data(), b"I'am\0idA!\0");
        assert_eq!(b.data(), b"I'am\0idB!\0");
    });
}

#[test]
fn only_listed_helper_is_migrated() {
    run(async {
        let dir = tmpdir();
        let stream = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["idA"]).bind().unwrap();
        let a = Fake::new("idA", b"state A".to_vec());
        let b = Fake::new("idB", b"state B".to_vec());
        let ta = a.spawn(sock(dir.path(), "idA"));
        // idB is not listed: there is no socket for it, and it never gets
        // in.
        let b_result = dbus_vmstate::helper::serve(
            sock(dir.path(), "idB"),
            b.clone(),
            dbus_vmstate::helper::Options::default().connect_timeout(SHORT),
        )
        .await;
        assert!(b_result.is_err(), "idB must not find a socket");
        let report = c.save_to_path(&stream).await.unwrap();
        assert_eq!(report.helpers.len(), 1);
        assert_eq!(report.helpers[0].id, "idA");
        a.set_data(Vec::new());
        c.load_from_path(&stream, None).await.unwrap();
        assert_eq!(a.data(), b"state A");
        assert_eq!((a.saves(), a.loads()), (1, 1));
        assert_eq!((b.saves(), b.loads()), (0, 0));
        c.shutdown().await;
        ta.await.unwrap();
    });
}

#[test]
fn listed_helper_missing_on_source_fails_save() {
    run(async {
        let dir = tmpdir();
        let stream = dir.path().join("state.vmstate");
        let c = builder(dir.path(), &["idA", "idB"])
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        let a = Fake::new("idA", b"state A".to_vec());
        let _ta = a.spawn(sock(dir.path(), "idA"));
        // idA is in, so its saves() == 0 below means it was not asked.
        until("idA to connect", || {
            c.status().iter().any(|h| h.id == "idA" && h.connected)
        })
        .await;
        let err = c.save_to_path(&stream).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotConnected { id, .. } if id == "idB"),
            "{err}"
        );
        assert!(err.to_string().contains("\"idB\""), "{err}");
        assert_eq!(a.saves(), 0, "no helper sees Save when one is missing");
        assert!(!stream.exists(), "nothing is written");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "only the two sockets"
        );
    });
}

#[test]
fn listed_helper_missing_on_destination_fails_load() {
    run(async {
        let (s, d) = (tmpdir(), tmpdir());
        let stream = s.path().join("state.vmstate");
        let source = builder(s.path(), &["idA", "idB"]).bind().unwrap();
        let _ta = Fake::new("idA", b"A".to_vec()).spawn(sock(s.path(), "idA"));
        let _tb = Fake::new("idB", b"B".to_vec()).spawn(sock(s.path(), "idB"));
        source.save_to_path(&stream).await.unwrap();
        source.shutdown().await;

        let destination = builder(d.path(), &["idA", "idB"])
            .connect_timeout(SHORT)
            .bind()
            .unwrap();
        let a = Fake::new("idA", Vec::new());
        let _ta = a.spawn(sock(d.path(), "idA"));
        // idA is in, so the load can only be missing idB.
        until("idA to connect", || {
            destination
                .status()
                .iter()
                .any(|h| h.id == "idA" && h.connected)
        })
        .await;
        let err = destination.load_from_path(&stream, None).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotConnected { id, .. } if id == "idB"),
            "{err}"
        );
        assert_eq!(a.loads(), 0, "no helper sees Load when one is missing");
        assert!(a.data().is_empty());
    });
}
