"""Where the auth proxy listens: loopback, plus addresses the config names for containers.

A container reaches the host through its bridge (Docker's ``docker0``, 172.17.0.1 by
default; a compose network's gateway; podman's). Such an address must be named in
``[proxy] extra_addresses``: never a wildcard, which would open the port to every
network the machine is on. The bridge may appear after the daemon starts (Docker
starts later at boot), so extra addresses are bound with ``IP_FREEBIND``: the socket
exists at once and answers as soon as the address does.
"""

from __future__ import annotations

import socket
import sys

IP_FREEBIND = 15
IPV6_FREEBIND = 78
"""From <linux/in.h> and <linux/in6.h>; Python's socket module names neither."""


def listening_socket(host: str, port: int, *, freebind: bool = False) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if freebind and sys.platform == "linux":
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def url_host(host: str) -> str:
    """``host`` as a URL writes it: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host
