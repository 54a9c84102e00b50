"""Which machine and network namespace a process runs in, as one string.

The auth proxy listens on the daemon's loopback. A ``broker exec`` whose socket is
forwarded over SSH, or bind-mounted into a container, runs where that loopback does not
lead to the daemon: comparing this string on both ends tells the daemon to hand such a
child the token itself instead of a proxy address. Stdlib only: the CLI sends it.
"""

from __future__ import annotations

import os


def machine_id() -> str:
    """``BOOT_ID/NETNS_INODE``, or "" where the kernel tells neither (not Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return ""
    return f"{boot_id}/{netns}"
