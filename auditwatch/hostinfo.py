"""Facts about this host learned once at start-up (I/O, so it lives at the edge)."""

from __future__ import annotations

import hashlib
import os
import socket

from auditwatch.events import ExecEvent, dev_from_stat


def hostname() -> str:
    return socket.gethostname()


def memfd_devices() -> frozenset[int]:
    """Kernel dev_t(s) that memfds live on (``00:01`` on Linux 6.18 here): make one and look.
    Empty if memfd_create is unavailable."""
    try:
        fd = os.memfd_create("auditwatch-probe", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return frozenset()
    try:
        return frozenset({dev_from_stat(os.fstat(fd).st_dev)})
    finally:
        os.close(fd)


def sha256_of_running_image(event: ExecEvent) -> str | None:
    """sha256 of the image a live process runs, read through /proc/PID/exe (works for memfds
    and deleted files). None when the process is gone or unreadable."""
    h = hashlib.sha256()
    try:
        with open(f"/proc/{event.tgid}/exe", "rb") as f:
            # The pid may have exec'd something else since: only hash the image we detected.
            if event.inode is not None and os.fstat(f.fileno()).st_ino != event.inode:
                return None
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()
