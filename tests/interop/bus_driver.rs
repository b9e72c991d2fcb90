//! The `org.freedesktop.DBus` calls the coordinator answers on a helper's
//! connection (protocol/README.md, "Bus-style helpers"), called one by one
//! by a helper that speaks to it as to a bus.

use futures::StreamExt;
use zbus::message::Type;
use zbus::{Connection, MessageStream};

use crate::util::{builder, run, sock, tmpdir, within, Raw};

const BUS: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";
const VMSTATE: &str = "org.qemu.VMState1";

/// Calls `member` of the bus driver and returns the reply message.
async fn bus_call<B>(
    conn: &Connection,
    iface: &str,
    member: &str,
    body: &B,
) -> zbus::Result<zbus::message::Message>
where
    B: serde::Serialize + zbus::Type,
{
    conn.call_method(Some(BUS), BUS_PATH, Some(iface), member, body)
        .await
}

async fn call<B, R>(conn: &Connection, member: &str, body: &B) -> R
where
    B: serde::Serialize + zbus::Type,
    R: for<'d> serde::Deserialize<'d> + zbus::Type,
{
    let reply = bus_call(conn, BUS, member, body)
        .await
        .unwrap_or_else(|e| panic!("{member}: {e}"));
    reply.body().deserialize().unwrap()
}

/// The D-Bus error name `member` fails with.
async fn call_error<B>(conn: &Connection, member: &str, body: &B) -> String
where
    B: serde::Serialize + zbus::Type,
{
    match bus_call(conn, BUS, member, body).await {
        Ok(_) => panic!("{member} succeeded"),
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(zbus::Error::FDO(e)) => zbus::DBusError::name(&*e).to_string(),
        Err(e) => panic!("{member}: {e}"),
    }
}

/// The next signal `member` from the bus on `stream`, with its argument.
async fn next_signal(
    stream: &mut MessageStream,
    member: &str,
) -> (String, Option<String>, Option<String>) {
    let wait = async {
        while let Some(msg) = stream.next().await {
            let msg = msg.unwrap();
            let h = msg.header();
            if msg.message_type() == Type::Signal && h.member().map(|m| m.as_str()) == Some(member)
            {
                let arg: String = msg.body().deserialize().unwrap();
                return (
                    arg,
                    h.sender().map(|s| s.to_string()),
                    h.destination().map(|d| d.to_string()),
                );
            }
        }
        panic!("connection closed before {member}");
    };
    within(&format!("the {member} signal"), wait).await
}

#[test]
fn bus_driver_calls_are_answered() {
    run(async {
        let dir = tmpdir();
        let c = builder(dir.path(), &["b"]).bind().unwrap();
        let seen = Raw::new("b").with_data(vec![9; 100]);
        let conn = seen.connect(&sock(dir.path(), "b")).await;
        let mut stream = MessageStream::from(&conn);

        // Hello first, as a bus client does; only once.
        let unique: String = call(&conn, "Hello", &()).await;
        assert!(unique.starts_with(":1."), "{unique}");
        assert_eq!(
            call_error(&conn, "Hello", &()).await,
            "org.freedesktop.DBus.Error.Failed"
        );

        let id: String = call(&conn, "GetId", &()).await;
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

        let has: bool = call(&conn, "NameHasOwner", &(VMSTATE,)).await;
        assert!(!has);
        let has: bool = call(&conn, "NameHasOwner", &(unique.as_str(),)).await;
        assert!(has);
        let () = call(
            &conn,
            "AddMatch",
            &("type='signal',sender='org.freedesktop.DBus'",),
        )
        .await;

        // RequestName: primary owner, with NameAcquired from the bus.
        let reply: u32 = call(&conn, "RequestName", &(VMSTATE, 4u32)).await;
        assert_eq!(reply, 1);
        let (name, sender, destination) = next_signal(&mut stream, "NameAcquired").await;
        assert_eq!(name, VMSTATE);
        assert_eq!(sender.as_deref(), Some(BUS));
        assert_eq!(destination.as_deref(), Some(unique.as_str()));
        let reply: u32 = call(&conn, "RequestName", &(VMSTATE, 0u32)).await;
        assert_eq!(reply, 4, "already owner");

        let owner: String = call(&conn, "GetNameOwner", &(VMSTATE,)).await;
        assert_eq!(owner, unique);
        let owner: String = call(&conn, "GetNameOwner", &(BUS,)).await;
        assert_eq!(owner, BUS);
        assert_eq!(
            call_error(&conn, "GetNameOwner", &("com.example.Nobody",)).await,
            "org.freedesktop.DBus.Error.NameHasNoOwner"
        );
        let names: Vec<String> = call(&conn, "ListNames", &()).await;
        assert_eq!(
            names,
            vec![BUS.to_string(), unique.clone(), VMSTATE.to_string()]
        );
        let names: Vec<String> = call(&conn, "ListActivatableNames", &()).await;
        assert_eq!(names, vec![BUS.to_string()]);
        for bad in [":1.99", BUS, "not a name"] {
            assert_eq!(
                call_error(&conn, "RequestName", &(bad, 0u32)).await,
                "org.freedesktop.DBus.Error.InvalidArgs",
                "{bad}"
            );
        }

        bus_call(&conn, "org.freedesktop.DBus.Peer", "Ping", &())
            .await
            .expect("Peer.Ping");
        let xml: String = bus_call(
            &conn,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            &(),
        )
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
        assert!(
            xml.contains(r#"<interface name="org.freedesktop.DBus">"#),
            "{xml}"
        );
        let () = call(
            &conn,
            "RemoveMatch",
            &("type='signal',sender='org.freedesktop.DBus'",),
        )
        .await;

        // The coordinator took this helper for bus-style (its first message
        // was Hello) and addresses calls to the unique name.
        c.save(Vec::new()).await.unwrap();
        assert_eq!(seen.save_destinations(), vec![Some(unique.clone())]);

        // ReleaseName: released, with NameLost; then not owned.
        let reply: u32 = call(&conn, "ReleaseName", &(VMSTATE,)).await;
        assert_eq!(reply, 1);
        let (name, _, _) = next_signal(&mut stream, "NameLost").await;
        assert_eq!(name, VMSTATE);
        let reply: u32 = call(&conn, "ReleaseName", &(VMSTATE,)).await;
        assert_eq!(reply, 2);
        let has: bool = call(&conn, "NameHasOwner", &(VMSTATE,)).await;
        assert!(!has);

        c.shutdown().await;
    });
}
