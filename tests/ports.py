"""Free loopback ports for tests that start whole processes (the demo, `gslb serve`)."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path


def ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (Linux; else 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports after it, below the ephemeral range.

    Busy machines churn through ephemeral ports: a block inside that range can be free when
    checked and taken by someone's outgoing connection a moment later.
    """
    rnd = random.Random(os.getpid() ^ n)
    top = max(ephemeral_low(), 20000 + 10 * n) - n
    for _ in range(200):
        base = rnd.randrange(20000, top)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")
