//! `protocol/org.qemu.VMState1.xml` is the contract: what a helper built
//! with this library serves must match it member for member.

use std::collections::BTreeSet;
use std::os::unix::net::UnixListener;

use crate::util::*;
use dbus_vmstate::iface;

/// (kind, name, details) for every member of the interface, from an
/// introspection document.
fn members(xml: &str, interface: &str) -> BTreeSet<(String, String, String)> {
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("valid XML");
    let iface = doc
        .descendants()
        .find(|n| n.has_tag_name("interface") && n.attribute("name") == Some(interface))
        .unwrap_or_else(|| panic!("interface {interface} not found in:\n{xml}"));
    let mut out = BTreeSet::new();
    for m in iface.children().filter(|n| n.is_element()) {
        let name = m.attribute("name").unwrap_or_default().to_string();
        match m.tag_name().name() {
            "property" => {
                let details = format!(
                    "type={} access={}",
                    m.attribute("type").unwrap_or_default(),
                    m.attribute("access").unwrap_or_default()
                );
                out.insert(("property".into(), name, details));
            }
            "method" | "signal" => {
                let args: Vec<String> = m
                    .children()
                    .filter(|a| a.has_tag_name("arg"))
                    .map(|a| {
                        format!(
                            "{}:{}:{}",
                            a.attribute("name").unwrap_or_default(),
                            a.attribute("type").unwrap_or_default(),
                            a.attribute("direction").unwrap_or("in")
                        )
                    })
                    .collect();
                out.insert((m.tag_name().name().into(), name, args.join(",")));
            }
            "annotation" => {}
            other => panic!("unexpected element {other}"),
        }
    }
    out
}

#[test]
fn protocol_xml_describes_qemus_interface() {
    let xml = include_str!("../../protocol/org.qemu.VMState1.xml");
    let got = members(xml, iface::INTERFACE);
    let want: BTreeSet<_> = [
        ("property", "Id", "type=s access=read"),
        ("method", "Load", "data:ay:in"),
        ("method", "Save", "data:ay:out"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn helper_serves_exactly_the_protocol_interface() {
    run(async {
        let dir = tmpdir();
        let path = sock(dir.path(), "a");
        let listener = UnixListener::bind(&path).unwrap();
        let helper = Fake::new("a", vec![1, 2, 3]).spawn(&path);
        let (stream, _) = listener.accept().unwrap();
        let conn = zbus::connection::Builder::unix_stream(stream)
            .server(zbus::Guid::generate())
            .p2p()
            .build()
            .await
            .unwrap();
        let reply = conn
            .call_method(
                None::<&str>,
                iface::OBJECT_PATH,
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await
            .unwrap();
        let served: String = reply.body().deserialize().unwrap();
        let spec = include_str!("../../protocol/org.qemu.VMState1.xml");
        assert_eq!(
            members(&served, iface::INTERFACE),
            members(spec, iface::INTERFACE),
            "served introspection:\n{served}"
        );
        conn.close().await.unwrap();
        helper.await.unwrap();
    });
}

#[test]
fn iface_constants_match_the_protocol_xml() {
    let xml = include_str!("../../protocol/org.qemu.VMState1.xml");
    assert!(xml.contains(&format!("<interface name=\"{}\">", iface::INTERFACE)));
    assert!(xml.contains(&format!("<node name=\"{}\">", iface::OBJECT_PATH)));
    for member in [iface::METHOD_SAVE, iface::METHOD_LOAD] {
        assert!(xml.contains(&format!("<method name=\"{member}\">")));
    }
    assert!(xml.contains(&format!("<property name=\"{}\"", iface::PROPERTY_ID)));
}

#[test]
fn control_server_serves_exactly_the_protocol_interface() {
    use dbus_vmstate::control;
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["a"]).bind().unwrap();
        let path = dir.path().join("control.sock");
        let server = control::Server::bind(c, &path).unwrap();
        let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
            .unwrap();
        let reply = conn
            .call_method(
                None::<&str>,
                control::OBJECT_PATH,
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await
            .unwrap();
        let served: String = reply.body().deserialize().unwrap();
        let spec = include_str!("../../protocol/org.dbusvmstate.Control1.xml");
        let want = members(spec, control::INTERFACE);
        assert_eq!(want.len(), 4, "Save, Load, Status, QemuStatus");
        assert_eq!(
            members(&served, control::INTERFACE),
            want,
            "served introspection:\n{served}"
        );
        assert!(spec.contains(&format!("<node name=\"{}\">", control::OBJECT_PATH)));
        for name in [
            control::ERROR_HELPER_FAILED,
            control::ERROR_NOT_CONNECTED,
            control::ERROR_STREAM_REJECTED,
            control::ERROR_BUSY,
            control::ERROR_IO,
            control::ERROR_CANCELLED,
        ] {
            assert!(spec.contains(name), "{name} is documented");
        }
        conn.close().await.unwrap();
        server.shutdown().await;
    });
}

/// Whether an introspection document lists `interface` on its root node.
fn lists(xml: &str, interface: &str) -> bool {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, options).expect("valid XML");
    doc.root_element()
        .children()
        .any(|n| n.has_tag_name("interface") && n.attribute("name") == Some(interface))
}

/// The served introspection document of a library helper.
async fn served_introspection(fake: std::sync::Arc<Fake>) -> String {
    let dir = tmpdir();
    let path = sock(dir.path(), "a");
    let listener = UnixListener::bind(&path).unwrap();
    let helper = fake.spawn(&path);
    let (stream, _) = listener.accept().unwrap();
    let conn = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())
        .p2p()
        .build()
        .await
        .unwrap();
    let reply = conn
        .call_method(
            None::<&str>,
            iface::OBJECT_PATH,
            Some(iface::INTROSPECTABLE_INTERFACE),
            "Introspect",
            &(),
        )
        .await
        .unwrap();
    let served: String = reply.body().deserialize().unwrap();
    conn.close().await.unwrap();
    helper.await.unwrap();
    served
}

#[test]
fn stream_protocol_xml_describes_the_streaming_interface() {
    let xml = include_str!("../../protocol/org.dbusvmstate.Stream1.xml");
    let got = members(xml, iface::STREAM_INTERFACE);
    let want: BTreeSet<_> = [
        ("method", "SaveFd", "fd:h:in,size:t:out"),
        ("method", "LoadFd", "fd:h:in,size:t:in"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(got, want);
    assert!(xml.contains(&format!("<node name=\"{}\">", iface::OBJECT_PATH)));
    for member in [iface::METHOD_SAVE_FD, iface::METHOD_LOAD_FD] {
        assert!(xml.contains(&format!("<method name=\"{member}\">")));
    }
}

#[test]
fn helper_serves_exactly_the_stream_protocol_interface() {
    run(async {
        let served = served_introspection(Fake::new("a", vec![1, 2, 3])).await;
        let spec = include_str!("../../protocol/org.dbusvmstate.Stream1.xml");
        assert_eq!(
            members(&served, iface::STREAM_INTERFACE),
            members(spec, iface::STREAM_INTERFACE),
            "served introspection:\n{served}"
        );
        assert!(lists(&served, iface::STREAM_INTERFACE));
        // QEMU's interface is untouched beside it.
        assert_eq!(
            members(&served, iface::INTERFACE),
            members(
                include_str!("../../protocol/org.qemu.VMState1.xml"),
                iface::INTERFACE
            )
        );
    });
}

#[test]
fn sealed_load_protocol_xml_describes_the_interface() {
    let xml = include_str!("../../protocol/org.dbusvmstate.SealedLoad1.xml");
    let got = members(xml, iface::SEALED_LOAD_INTERFACE);
    let want: BTreeSet<_> = [("method", "LoadFd", "fd:h:in,seal:t:in")]
        .into_iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(xml.contains(&format!("<node name=\"{}\">", iface::OBJECT_PATH)));
    assert!(xml.contains(&format!(
        "<method name=\"{}\">",
        iface::METHOD_LOAD_FD_SEALED
    )));
}

#[test]
fn helper_serves_exactly_the_sealed_load_protocol_interface() {
    run(async {
        let served = served_introspection(Fake::new("a", vec![1, 2, 3])).await;
        let spec = include_str!("../../protocol/org.dbusvmstate.SealedLoad1.xml");
        assert_eq!(
            members(&served, iface::SEALED_LOAD_INTERFACE),
            members(spec, iface::SEALED_LOAD_INTERFACE),
            "served introspection:\n{served}"
        );
    });
}

#[test]
fn helper_without_streaming_serves_only_qemus_interface() {
    run(async {
        let served = served_introspection(Fake::new("a", vec![1, 2, 3]).plain()).await;
        assert!(!lists(&served, iface::STREAM_INTERFACE));
        assert!(!lists(&served, iface::SEALED_LOAD_INTERFACE));
        assert!(lists(&served, iface::INTERFACE));
    });
}
