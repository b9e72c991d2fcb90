#!/usr/bin/python3
"""An org.qemu.VMState1 helper written on GLib's GDBus (PyGObject).

Peer-to-peer (default): connects to ADDRESS as a plain D-Bus client and
serves /org/qemu/VMState1 on that connection.

Bus style (--bus): connects to ADDRESS as to a message bus
(MESSAGE_BUS_CONNECTION: GDBus sends Hello), exports the object and owns the
name org.qemu.VMState1 with g_bus_own_name_on_connection, the way helpers
written for QEMU's dbus-vmstate do; with --export-after-name, the object is
exported only from the name-acquired callback.

The state starts as --size bytes of the test pattern (byte i is
(i % 251 + seed) mod 256). The process exits 0 when the peer closes the
connection, 1 on any error.
"""

import argparse
import sys

import gi

gi.require_version("Gio", "2.0")
gi.require_version("GLib", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

from common import INTERFACE, PATH, XML, logger, pattern  # noqa: E402

log = logger("gdbus_helper")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bus", action="store_true")
    parser.add_argument(
        "--export-after-name",
        action="store_true",
        help="bus style: export the object only once the name is acquired",
    )
    args = parser.parse_args()

    state = {"data": pattern(args.size, args.seed)}
    loop = GLib.MainLoop()
    outcome = {"status": 1}

    flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    if args.bus:
        flags |= Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    conn = Gio.DBusConnection.new_for_address_sync(args.address, flags, None, None)
    conn.set_exit_on_close(False)
    if args.bus:
        log(f"unique name {conn.get_unique_name()}")

    def on_call(connection, sender, path, iface, method, params, invocation):
        try:
            handle(method, params, invocation)
        except Exception as e:  # reply instead of leaving the caller waiting
            log(f"{method} failed: {e!r}")
            invocation.return_dbus_error("org.dbusvmstate.Test.Error", repr(e))

    def handle(method, params, invocation):
        if method == "Save":
            blob = GLib.Variant.new_from_bytes(
                GLib.VariantType.new("ay"), GLib.Bytes.new(state["data"]), True
            )
            invocation.return_value(GLib.Variant.new_tuple(blob))
        elif method == "Load":
            data = params.get_child_value(0).get_data_as_bytes().get_data()
            state["data"] = bytes(data or b"")
            invocation.return_value(None)
        else:
            invocation.return_dbus_error(
                "org.freedesktop.DBus.Error.UnknownMethod", method
            )

    def on_get(connection, sender, path, iface, prop):
        return GLib.Variant("s", args.id)

    info = Gio.DBusNodeInfo.new_for_xml(XML).lookup_interface(INTERFACE)

    def export():
        conn.register_object(PATH, info, on_call, on_get, None)

    if not args.export_after_name:
        export()

    def on_closed(connection, remote_peer_vanished, error):
        outcome["status"] = 0
        loop.quit()

    conn.connect("closed", on_closed)

    if args.bus:
        def on_acquired(connection, name):
            log(f"acquired {name}")
            if args.export_after_name:
                export()

        def on_lost(connection, name):
            # Also called when the connection closes.
            if not conn.is_closed():
                log(f"lost {name}")
                outcome["status"] = 1
                loop.quit()

        Gio.bus_own_name_on_connection(
            conn, INTERFACE, Gio.BusNameOwnerFlags.NONE, on_acquired, on_lost
        )

    loop.run()
    return outcome["status"]


if __name__ == "__main__":
    sys.exit(main())
