"""Lease owner ids that say which process holds a lease, so a restarted daemon can take back its dead
predecessor's leases at once instead of waiting for them to expire.

An owner id is ``host:boot:pidns:pid:nonce``: the host name, the kernel's boot id, the PID namespace and the
process id, and a random nonce (two processes never share an id, even with the same pid). A lease held by
an id with this process's host, boot and PID namespace belongs to a process this one can see: if that pid
is gone (or is this very process, whose pid the dead holder had), the holder is dead for certain.

Anything else (another host, a reboot, a container restarted into a new PID namespace, an id in an older
format) cannot be judged from here, so such leases are left to expire (``store.lease_ttl``): taking a live
replica's lease would let two workers refresh one account, and a rotating platform would then reject one.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OwnerId:
    host: str
    boot: str
    pidns: str
    pid: int
    nonce: str

    def __str__(self) -> str:
        return f"{self.host}:{self.boot}:{self.pidns}:{self.pid}:{self.nonce}"

    @classmethod
    def parse(cls, text: str) -> OwnerId | None:
        """The parts of an owner id, or None for an id of another shape (older versions, tests)."""
        parts = text.rsplit(":", 4)  # the host name is the only part that could hold a ':'
        if len(parts) != 5 or not parts[3].isdigit():
            return None
        host, boot, pidns, pid, nonce = parts
        return cls(host, boot, pidns, int(pid), nonce)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def boot_id() -> str:
    """The kernel's boot id (Linux), shortened; ``-`` where there is none."""
    return _read("/proc/sys/kernel/random/boot_id").replace("-", "")[:12] or "-"


def pid_namespace() -> str:
    """This process's PID namespace inode (Linux); ``-`` where there is none."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "-"
    return link.partition("[")[2].rstrip("]") or "-"


def new_owner() -> str:
    """A lease owner id for this process."""
    host = socket.gethostname().replace(":", "_")
    return str(OwnerId(host, boot_id(), pid_namespace(), os.getpid(), uuid.uuid4().hex[:6]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_dead_predecessor(holder: str, me: str) -> bool:
    """True when ``holder`` is certainly a dead process of this host, boot and PID namespace."""
    if holder == me:
        return False
    theirs, mine = OwnerId.parse(holder), OwnerId.parse(me)
    if theirs is None or mine is None:
        return False
    if (theirs.host, theirs.boot, theirs.pidns) != (mine.host, mine.boot, mine.pidns) or "-" in (
        mine.boot,
        mine.pidns,
    ):
        return False
    # Our own pid under another nonce: its previous holder is dead, since we are alive with it.
    return theirs.pid == mine.pid or not _pid_alive(theirs.pid)
