"""Names of lease holders: which process on which host holds a batch or a listing."""

from __future__ import annotations

import os
import socket


def this_process() -> str:
    """This process's name on a lease, "host:pid" (not cached: a forked child has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_gone(name: str) -> bool:
    """True when `name` is a process on this host that no longer exists (on another host: never known)."""
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
