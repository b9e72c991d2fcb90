//! D-Bus names, paths and limits of the helper interfaces, and the
//! coordinator's calls on them (crate-private).
//!
//! This module mirrors `protocol/org.qemu.VMState1.xml`,
//! `protocol/org.dbusvmstate.Stream1.xml` and
//! `protocol/org.dbusvmstate.SealedLoad1.xml`. The first interface is
//! QEMU's own, unchanged, so a helper that works with QEMU's
//! `dbus-vmstate` object works here too and the other way round. The
//! second is this project's streaming extension: the state moves through
//! a socket passed as a file descriptor instead of inside D-Bus messages.
//! The third lets a load start before the state's size is known (a stream
//! read from a pipe), its end sealed by a trailer.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use serde::Serialize;
use zbus::message::Message;
use zbus::{Connection, Signature, Type};

/// The helper interface, as QEMU defines it.
pub const INTERFACE: &str = "org.qemu.VMState1";
/// The object path at which a helper serves [`INTERFACE`].
pub const OBJECT_PATH: &str = "/org/qemu/VMState1";
/// The name helpers own on a bus, in a queue of owners (QEMU's
/// `dbus-vmstate` calls every queued owner). Not used peer to peer.
pub const BUS_NAME: &str = "org.qemu.VMState1";
/// The read-only `s` property holding the helper's Id.
pub const PROPERTY_ID: &str = "Id";
/// `Save() -> (ay data)`.
pub const METHOD_SAVE: &str = "Save";
/// `Load(ay data)`.
pub const METHOD_LOAD: &str = "Load";
/// The standard properties interface, through which `Id` is read.
pub const PROPERTIES_INTERFACE: &str = "org.freedesktop.DBus.Properties";

/// Error a helper returns when its state could not be saved.
pub const ERROR_SAVE_FAILED: &str = "org.dbusvmstate.Error.SaveFailed";
/// Error a helper returns when the state it was given could not be loaded.
pub const ERROR_LOAD_FAILED: &str = "org.dbusvmstate.Error.LoadFailed";
/// Error a helper returns from `Save` when its state does not fit in one
/// D-Bus message.
pub const ERROR_TOO_LARGE: &str = "org.dbusvmstate.Error.TooLarge";

/// The streaming extension, served beside [`INTERFACE`] at [`OBJECT_PATH`].
pub const STREAM_INTERFACE: &str = "org.dbusvmstate.Stream1";
/// `SaveFd(h fd) -> (t size)`: the helper writes its state into `fd`.
pub const METHOD_SAVE_FD: &str = "SaveFd";
/// `LoadFd(h fd, t size)`: the helper reads its new state from `fd`.
pub const METHOD_LOAD_FD: &str = "LoadFd";
/// The sealed load, served beside [`STREAM_INTERFACE`]: a streaming load
/// whose size is not known when it starts.
pub const SEALED_LOAD_INTERFACE: &str = "org.dbusvmstate.SealedLoad1";
/// `LoadFd(h fd, t seal)` of [`SEALED_LOAD_INTERFACE`]: the helper reads
/// its new state from `fd`, then a trailer of [`SEAL_TRAILER_BYTES`]
/// (`seal`, then the state's size).
pub const METHOD_LOAD_FD_SEALED: &str = "LoadFd";
/// Bytes of the trailer that ends a sealed load: the call's seal, then
/// the state's size, each a little-endian `u64`.
pub const SEAL_TRAILER_BYTES: usize = 16;
/// The standard introspection interface, through which the coordinator
/// detects [`STREAM_INTERFACE`] and [`SEALED_LOAD_INTERFACE`].
pub const INTROSPECTABLE_INTERFACE: &str = "org.freedesktop.DBus.Introspectable";

/// Longest helper Id in bytes (QEMU's limit; the shortest is 1).
pub const MAX_ID_BYTES: usize = crate::stream::MAX_ID_BYTES;
/// The D-Bus whole-message limit that zbus enforces on both ends.
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;
/// Largest `ay` a `Save` reply can carry (measured with zbus 6.2.1: the
/// reply header and array length take 36 bytes).
pub const MAX_SAVE_BLOB_BYTES: usize = MAX_MESSAGE_BYTES - 36;
/// Largest `ay` a `Load` call can carry, with the header fields this crate
/// sends (path, interface, member; no destination).
pub const MAX_LOAD_BLOB_BYTES: usize = MAX_MESSAGE_BYTES - 112;

/// The coordinator's default limit on one helper's state: a guard against
/// a runaway helper, far above what one D-Bus message carries, since
/// streamed state passes through the coordinator in bounded memory.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 16 << 30;

/// How long a coordinator waits for helpers to connect, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `Save` or `Load` call may take, by default (QEMU uses 25 s).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new connection has to authenticate and report its Id.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A blob sent as `ay` with one write of the whole slice.
///
/// zbus serializes `Vec<u8>` and `&[u8]` byte by byte (tens of MB/s); this
/// goes through `serialize_bytes` instead.
#[derive(Debug, Clone, Copy)]
pub struct BlobRef<'a>(pub &'a [u8]);

impl Serialize for BlobRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Type for BlobRef<'_> {
    const SIGNATURE: &'static Signature = &Signature::static_array(&Signature::U8);
}

/// An owned blob sent as `ay` with one write (see [`BlobRef`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl Type for Blob {
    const SIGNATURE: &'static Signature = &Signature::static_array(&Signature::U8);
}

/// Reads the helper's `Id` property. `destination` is the unique name a
/// bus-style helper was given by the coordinator's `Hello` answer (sd-bus,
/// for one, ignores calls without a destination on a bus connection);
/// peer-to-peer helpers need none.
///
/// # Errors
///
/// The call's error, or [`zbus::Error::InvalidReply`] when the value is not
/// a string.
pub(crate) async fn read_id_at(
    conn: &Connection,
    destination: Option<&str>,
) -> zbus::Result<String> {
    let reply = conn
        .call_method(
            destination,
            OBJECT_PATH,
            Some(PROPERTIES_INTERFACE),
            "Get",
            &(INTERFACE, PROPERTY_ID),
        )
        .await?;
    let body = reply.body();
    let value: zbus::Variant<'_> = body.deserialize()?;
    String::try_from(&value).map_err(|_| zbus::Error::InvalidReply)
}

/// Sends `org.freedesktop.DBus.Peer.Ping` to the coordinator, with no reply
/// expected.
///
/// A dbus-vmstate coordinator waits briefly after the handshake for a
/// bus-style helper's `Hello` before it calls the helper; any other first
/// message tells it at once that the helper speaks peer to peer. Every
/// D-Bus implementation answers `Peer.Ping` on any path, and with no reply
/// expected none is sent, so this is harmless to any other coordinator.
///
/// # Errors
///
/// When the message cannot be sent (the connection is closed).
/// The coordinator's own interface on a helper connection (this crate's
/// extension, `protocol/README.md`): its one member is the signal
/// [`SIGNAL_REJECTED`].
pub const COORDINATOR_INTERFACE: &str = "org.dbusvmstate.Coordinator1";
/// The object path the coordinator's signals come from.
pub const COORDINATOR_PATH: &str = "/org/dbusvmstate/Coordinator1";
/// `Rejected(s reason)`: sent to a helper the coordinator turns away after
/// the handshake (a wrong or invalid `Id`, or none), just before it closes
/// the connection, so that the helper can fail with the reason.
pub const SIGNAL_REJECTED: &str = "Rejected";

/// Tells a helper why it is turned away (see [`SIGNAL_REJECTED`]).
pub(crate) async fn send_rejected(conn: &Connection, reason: &str) -> zbus::Result<()> {
    let signal = Message::signal(COORDINATOR_PATH, COORDINATOR_INTERFACE, SIGNAL_REJECTED)
        .build(&(reason,))?;
    conn.send(&signal).await
}

/// Watches `conn` for a [`SIGNAL_REJECTED`]: the future it returns ends
/// with the reason if one comes, or `None` once the connection closes
/// without one.
pub(crate) async fn rejections(
    conn: &Connection,
) -> zbus::Result<impl std::future::Future<Output = Option<String>>> {
    use futures::StreamExt;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(COORDINATOR_INTERFACE)
        .member(SIGNAL_REJECTED)
        .build()?;
    let mut signals =
        zbus::MessageStream::for_match_rule(rule, conn, std::num::NonZeroUsize::new(4)).await?;
    Ok(async move {
        while let Some(message) = signals.next().await {
            if let Ok(reason) = message.and_then(|m| m.body().deserialize::<String>()) {
                return Some(reason);
            }
        }
        None
    })
}

pub(crate) async fn announce_peer_to_peer(conn: &Connection) -> zbus::Result<()> {
    let ping = Message::method_call("/", "Ping")
        .interface("org.freedesktop.DBus.Peer")
        .with_flags(zbus::message::Flags::NO_REPLY_EXPECTED)
        .build(&())?;
    conn.send(&ping).await
}

/// The reply to a `Save` call: its body holds one `ay`, which
/// [`SaveReply::bytes`] borrows without a copy.
#[derive(Debug, Clone)]
pub(crate) struct SaveReply(zbus::message::Body);

impl SaveReply {
    /// Checks that the reply carries exactly one `ay`.
    ///
    /// # Errors
    ///
    /// [`zbus::Error::SignatureMismatch`] for any other body type.
    pub(crate) fn new(reply: &Message) -> zbus::Result<Self> {
        let body = reply.body();
        if body.signature() != <BlobRef<'_> as Type>::SIGNATURE {
            return Err(zbus::Error::SignatureMismatch(
                body.signature().clone(),
                "ay".to_string(),
            ));
        }
        Ok(SaveReply(body))
    }

    /// The saved state, borrowed from the message buffer.
    ///
    /// # Errors
    ///
    /// When the body is malformed.
    pub(crate) fn bytes(&self) -> zbus::Result<&[u8]> {
        self.0.deserialize::<&[u8]>()
    }
}

/// Calls `Save` and returns its checked reply. `destination` as for
/// [`read_id_at`].
///
/// # Errors
///
/// The call's error, or a signature mismatch when the reply is not `ay`.
pub(crate) async fn call_save_at(
    conn: &Connection,
    destination: Option<&str>,
) -> zbus::Result<SaveReply> {
    let reply = conn
        .call_method(destination, OBJECT_PATH, Some(INTERFACE), METHOD_SAVE, &())
        .await?;
    SaveReply::new(&reply)
}

/// Calls `Load` with `data`. `destination` as for [`read_id_at`]: the
/// field takes up to 32 bytes of the message, so with one a blob within 32
/// bytes of [`MAX_LOAD_BLOB_BYTES`] fails with [`zbus::Error::ExcessData`].
///
/// # Errors
///
/// The call's error; [`zbus::Error::ExcessData`] when `data` is over
/// [`MAX_LOAD_BLOB_BYTES`].
pub(crate) async fn call_load_at(
    conn: &Connection,
    destination: Option<&str>,
    data: &[u8],
) -> zbus::Result<()> {
    conn.call_method(
        destination,
        OBJECT_PATH,
        Some(INTERFACE),
        METHOD_LOAD,
        &BlobRef(data),
    )
    .await
    .map(drop)
}

/// Whether an introspection document lists `interface` on its root node.
///
/// A document that does not parse lists nothing.
pub(crate) fn introspection_lists(xml: &str, interface: &str) -> bool {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let Ok(doc) = roxmltree::Document::parse_with_options(xml, options) else {
        return false;
    };
    let root = doc.root_element();
    root.has_tag_name("node")
        && root
            .children()
            .any(|n| n.has_tag_name("interface") && n.attribute("name") == Some(interface))
}

/// The trailer that commits a sealed load of `size` bytes whose call
/// carried `seal`.
pub(crate) fn seal_trailer(seal: u64, size: u64) -> [u8; SEAL_TRAILER_BYTES] {
    let mut trailer = [0u8; SEAL_TRAILER_BYTES];
    trailer[..8].copy_from_slice(&seal.to_le_bytes());
    trailer[8..].copy_from_slice(&size.to_le_bytes());
    trailer
}

/// The extensions a helper serves beside [`INTERFACE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Extensions {
    /// [`STREAM_INTERFACE`].
    pub stream: bool,
    /// [`SEALED_LOAD_INTERFACE`] (used only beside [`STREAM_INTERFACE`]).
    pub sealed_load: bool,
}

/// The extensions the helper serves, from one `Introspect`
/// call on [`OBJECT_PATH`]. `destination` is the bus-style helper's unique
/// name, `None` for a peer-to-peer helper (see [`read_id_at`]).
///
/// # Errors
///
/// The call's error (a helper without introspection answers
/// `UnknownInterface` or `UnknownMethod`), or a non-string reply.
pub(crate) async fn extensions(
    conn: &Connection,
    destination: Option<&str>,
) -> zbus::Result<Extensions> {
    let reply = conn
        .call_method(
            destination,
            OBJECT_PATH,
            Some(INTROSPECTABLE_INTERFACE),
            "Introspect",
            &(),
        )
        .await?;
    let body = reply.body();
    let xml: &str = body.deserialize()?;
    let stream = introspection_lists(xml, STREAM_INTERFACE);
    Ok(Extensions {
        stream,
        sealed_load: stream && introspection_lists(xml, SEALED_LOAD_INTERFACE),
    })
}

/// Calls `SaveFd` with `fd` (the helper's end of a socket pair) and returns
/// the size the helper reports having written.
///
/// The message carries a duplicate of `fd`; the caller keeps its own and
/// should close it once this returns.
///
/// # Errors
///
/// The call's error, or a reply that is not one `t`.
pub(crate) async fn call_save_fd(
    conn: &Connection,
    destination: Option<&str>,
    fd: BorrowedFd<'_>,
) -> zbus::Result<u64> {
    let reply = conn
        .call_method(
            destination,
            OBJECT_PATH,
            Some(STREAM_INTERFACE),
            METHOD_SAVE_FD,
            &(zbus::Fd::from(fd),),
        )
        .await?;
    let body = reply.body();
    body.deserialize::<u64>()
}

/// How a streaming load ends, which decides the `LoadFd` called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdLoad {
    /// `Stream1.LoadFd(fd, size)`: exactly `size` bytes, then end-of-file.
    Announced(u64),
    /// `SealedLoad1.LoadFd(fd, seal)`: the state, then the trailer of
    /// `seal` ([`seal_trailer`]), then end-of-file.
    Sealed(u64),
}

/// Calls `LoadFd` with `fd` (the helper's end of a socket pair): the
/// announced one with the exact number of bytes the coordinator will write
/// into its own end, or the sealed one with the seal it will end them with.
///
/// # Errors
///
/// The call's error.
pub(crate) async fn call_load_fd(
    conn: &Connection,
    destination: Option<&str>,
    fd: BorrowedFd<'_>,
    load: FdLoad,
) -> zbus::Result<()> {
    let (interface, method, arg) = match load {
        FdLoad::Announced(size) => (STREAM_INTERFACE, METHOD_LOAD_FD, size),
        FdLoad::Sealed(seal) => (SEALED_LOAD_INTERFACE, METHOD_LOAD_FD_SEALED, seal),
    };
    conn.call_method(
        destination,
        OBJECT_PATH,
        Some(interface),
        method,
        &(zbus::Fd::from(fd), arg),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introspection_lists_only_root_interfaces() {
        let xml = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.qemu.VMState1"><method name="Save"/></interface>
  <interface name="org.dbusvmstate.Stream1"/>
  <node name="child"><interface name="x.Y"/></node>
</node>"#;
        assert!(introspection_lists(xml, STREAM_INTERFACE));
        assert!(introspection_lists(xml, INTERFACE));
        assert!(!introspection_lists(xml, "x.Y"));
        assert!(!introspection_lists(xml, "org.dbusvmstate.Stream2"));
        assert!(!introspection_lists("<node><interface", STREAM_INTERFACE));
        assert!(!introspection_lists("", STREAM_INTERFACE));
    }
}
