"""Shared by the Python helpers and coordinators of the interop tests."""

import sys

INTERFACE = "org.qemu.VMState1"
PATH = "/org/qemu/VMState1"

# protocol/org.qemu.VMState1.xml, the interface exactly as QEMU defines it.
XML = """
<node>
  <interface name="org.qemu.VMState1">
    <property name="Id" type="s" access="read"/>
    <method name="Load">
      <arg type="ay" name="data" direction="in"/>
    </method>
    <method name="Save">
      <arg type="ay" name="data" direction="out"/>
    </method>
  </interface>
</node>
"""


def pattern(size, seed):
    """The test data: byte i is (i % 251 + seed) mod 256."""
    block = bytes((i + seed) & 0xFF for i in range(251))
    return (block * (size // 251 + 1))[:size]


def logger(name):
    def log(msg):
        print(f"{name}: {msg}", file=sys.stderr, flush=True)

    return log
