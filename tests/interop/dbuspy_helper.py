#!/usr/bin/python3
"""An org.qemu.VMState1 helper written on libdbus (dbus-python).

Peer-to-peer (default): dbus.connection.Connection(ADDRESS), a plain
libdbus connection, serving /org/qemu/VMState1.

Bus style (--bus): dbus.bus.BusConnection(ADDRESS), which sends Hello as to
a message bus, then claims org.qemu.VMState1 with dbus.service.BusName
(RequestName), the way helpers written for QEMU's dbus-vmstate do.

The state starts as --size bytes of the test pattern. The process exits 0
when the peer closes the connection, 1 on any error.
"""

import argparse
import sys

import dbus
import dbus.bus
import dbus.connection
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

from common import INTERFACE, PATH, logger, pattern

log = logger("dbuspy_helper")


class VMState(dbus.service.Object):
    def __init__(self, conn, helper_id, data):
        super().__init__(conn, PATH)
        self.helper_id = helper_id
        self.data = data

    @dbus.service.method(INTERFACE, in_signature="", out_signature="ay", byte_arrays=True)
    def Save(self):
        return dbus.ByteArray(self.data)

    @dbus.service.method(INTERFACE, in_signature="ay", out_signature="", byte_arrays=True)
    def Load(self, data):
        self.data = bytes(data)

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="ss", out_signature="v")
    def Get(self, interface, prop):
        if interface == INTERFACE and prop == "Id":
            return dbus.String(self.helper_id)
        raise dbus.exceptions.DBusException(
            f"no property {interface}.{prop}",
            name="org.freedesktop.DBus.Error.UnknownProperty",
        )

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        if interface == INTERFACE:
            return {"Id": dbus.String(self.helper_id)}
        return {}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bus", action="store_true")
    args = parser.parse_args()

    DBusGMainLoop(set_as_default=True)
    loop = GLib.MainLoop()
    if args.bus:
        conn = dbus.bus.BusConnection(args.address)
        log(f"unique name {conn.get_unique_name()}")
    else:
        conn = dbus.connection.Connection(args.address)
    conn.set_exit_on_disconnect(False)
    conn.call_on_disconnection(lambda _conn: loop.quit())

    obj = VMState(conn, args.id, pattern(args.size, args.seed))
    if args.bus:
        # Raises unless the reply is "primary owner".
        name = dbus.service.BusName(INTERFACE, conn, do_not_queue=True)
        log(f"owns {name.get_name()}")

    loop.run()
    obj.remove_from_connection()
    return 0


if __name__ == "__main__":
    sys.exit(main())
