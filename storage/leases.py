"""Who holds a lease, and whether that holder can still be alive.

A lease owner is ``host:pid:name``. Only a holder on this host can be checked (its pid); a
holder elsewhere is trusted until its lease expires. No database access here.
"""

from __future__ import annotations

import os
import socket


class LeaseLost(RuntimeError):
    """The lease was taken over (it expired and another worker claimed the job): the
    former holder must drop its result, the new holder records the verdict."""


def worker_identity(name: str = "worker") -> str:
    """host:pid:name, so a restarted process can tell its dead predecessor's leases apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{name}"[:64]


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_dead_here(owner: str | None) -> bool:
    """True only when ``owner`` names a process on this host that no longer exists."""
    owner_host, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    if owner_host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not pid_alive(int(pid_text))
