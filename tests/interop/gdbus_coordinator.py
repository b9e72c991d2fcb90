#!/usr/bin/python3
"""A coordinator written on GLib's GDBus (PyGObject): a Gio.DBusServer
listening on SOCKET, which drives the one helper that connects there.

On the helper's connection it reads the Id property, then checks Save
against the state the helper was started with (--size bytes of the test
pattern with --seed), loads 16 MiB and 0 bytes and checks each with Save,
and finally loads --final-size bytes with --final-seed and closes the
connection. Exits 0 when every check passed, 1 otherwise.
"""

import argparse
import sys
import traceback

import gi

gi.require_version("Gio", "2.0")
gi.require_version("GLib", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

from common import INTERFACE, PATH, logger, pattern  # noqa: E402

log = logger("gdbus_coordinator")
TIMEOUT_MS = 30_000


def call(conn, iface, method, params, reply_type):
    return conn.call_sync(
        None, PATH, iface, method, params, reply_type,
        Gio.DBusCallFlags.NONE, TIMEOUT_MS, None,
    )


def read_id(conn):
    reply = call(
        conn, "org.freedesktop.DBus.Properties", "Get",
        GLib.Variant("(ss)", (INTERFACE, "Id")), GLib.VariantType.new("(v)"),
    )
    return reply.get_child_value(0).get_variant().get_string()


def save(conn):
    reply = call(conn, INTERFACE, "Save", None, GLib.VariantType.new("(ay)"))
    data = reply.get_child_value(0).get_data_as_bytes().get_data()
    return bytes(data or b"")


def load(conn, data):
    blob = GLib.Variant.new_from_bytes(
        GLib.VariantType.new("ay"), GLib.Bytes.new(data), True
    )
    call(conn, INTERFACE, "Load", GLib.Variant.new_tuple(blob), None)


def check(what, got, expected):
    if got != expected:
        raise AssertionError(
            f"{what}: got {len(got)} bytes, expected {len(expected)}"
            + ("" if len(got) != len(expected) else " (contents differ)")
        )
    log(f"{what}: {len(got)} bytes match")


def drive(conn, args):
    helper_id = read_id(conn)
    if helper_id != args.id:
        raise AssertionError(f"helper Id is {helper_id!r}, expected {args.id!r}")
    check("initial Save", save(conn), pattern(args.size, args.seed))
    for size, seed in ((16 << 20, 0x61), (0, 0)):
        data = pattern(size, seed)
        load(conn, data)
        check(f"Save after Load of {size} bytes", save(conn), data)
    load(conn, pattern(args.final_size, args.final_seed))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--final-size", type=int, required=True)
    parser.add_argument("--final-seed", type=int, required=True)
    args = parser.parse_args()

    loop = GLib.MainLoop()
    outcome = {"status": 1}
    server = Gio.DBusServer.new_sync(
        f"unix:path={args.socket}",
        Gio.DBusServerFlags.AUTHENTICATION_REQUIRE_SAME_USER,
        Gio.dbus_generate_guid(),
        None,
        None,
    )

    def run_checks(conn):
        try:
            drive(conn, args)
            outcome["status"] = 0
        except Exception:
            log(traceback.format_exc())
        conn.close_sync(None)
        loop.quit()
        return False

    def on_new_connection(_server, conn):
        log("helper connected")
        GLib.idle_add(run_checks, conn)
        return True

    server.connect("new-connection", on_new_connection)
    server.start()
    log("listening")
    loop.run()
    server.stop()
    return outcome["status"]


if __name__ == "__main__":
    sys.exit(main())
