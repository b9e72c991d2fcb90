//! `helper::serve_bus`: a helper built with this library serves QEMU's
//! design too, on a private `dbus-daemon`, found as QEMU's `dbus-vmstate`
//! finds helpers (the queued owners of `org.qemu.VMState1`). Needs the
//! `dbus-daemon` program.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::*;
use dbus_vmstate::{helper, iface};
use zbus::Connection;

/// A private session bus, stopped when dropped.
struct Daemon {
    child: Child,
    address: String,
}

impl Daemon {
    /// Starts one and reads its address, failing the test if it prints
    /// none within [`EVENT_TIMEOUT`].
    fn start() -> Daemon {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut address = String::new();
            let _ = BufReader::new(stdout).read_line(&mut address);
            let _ = tx.send(address);
        });
        let Ok(address) = rx.recv_timeout(EVENT_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dbus-daemon printed no address within {EVENT_TIMEOUT:?}");
        };
        Daemon {
            child,
            address: address.trim().to_string(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn queued_owners(conn: &Connection) -> Vec<String> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "ListQueuedOwners",
            &(iface::BUS_NAME,),
        )
        .await;
    match reply {
        Ok(m) => m.body().deserialize().unwrap(),
        // No owner yet.
        Err(_) => Vec::new(),
    }
}

async fn id_of(conn: &Connection, owner: &str) -> String {
    let reply = conn
        .call_method(
            Some(owner),
            iface::OBJECT_PATH,
            Some(iface::PROPERTIES_INTERFACE),
            "Get",
            &(iface::INTERFACE, iface::PROPERTY_ID),
        )
        .await
        .unwrap();
    let body = reply.body();
    let value: zbus::Variant<'_> = body.deserialize().unwrap();
    String::try_from(&value).unwrap()
}

#[test]
fn helpers_serve_qemus_design_on_a_bus() {
    if !require(Requirement::DbusDaemon) {
        return;
    }
    let daemon = Daemon::start();
    run(async move {
        let a = Fake::new("a", b"state of a".to_vec());
        let b = Fake::new("b", vec![9; 100_000]);
        for state in [a.clone(), b.clone()] {
            let address = daemon.address.clone();
            drop(rt::spawn(async move {
                helper::serve_bus(&address, state, helper::Options::default()).await
            }));
        }
        let conn = zbus::connection::Builder::address(daemon.address.as_str())
            .build()
            .await
            .unwrap();
        // Both helpers queue for the name.
        let owners = within("both helpers to queue for org.qemu.VMState1", async {
            loop {
                let owners = queued_owners(&conn).await;
                if owners.len() == 2 {
                    break owners;
                }
                rt::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;

        for owner in &owners {
            let id = id_of(&conn, owner).await;
            let helper = if id == "a" { &a } else { &b };
            let reply = conn
                .call_method(
                    Some(owner.as_str()),
                    iface::OBJECT_PATH,
                    Some(iface::INTERFACE),
                    iface::METHOD_SAVE,
                    &(),
                )
                .await
                .unwrap();
            let saved: serde_bytes::ByteBuf = reply.body().deserialize().unwrap();
            assert_eq!(saved.as_ref(), helper.data().as_slice(), "{id}");
            conn.call_method(
                Some(owner.as_str()),
                iface::OBJECT_PATH,
                Some(iface::INTERFACE),
                iface::METHOD_LOAD,
                &serde_bytes::Bytes::new(b"new state"),
            )
            .await
            .unwrap();
            assert_eq!(helper.data(), b"new state", "{id}");
        }
        drop(daemon);
    });
}
