"""Networking helpers that the engines, the trainers and the cluster code all use (none owns them).

    >>> 1024 <= free_port() < 65536
    True
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now ("": on every interface), for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
