"""TRC-105 "Fileless execution detected": the detector.

Mostly a declaration, as in Tracee: constant metadata (pinned by a test) plus one pure function
from an ``ExecEvent`` to the technique it shows, or ``None``. No I/O, no clock.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Collection
from typing import Any, Final

from auditwatch.events import ExecEvent, Technique

EVENT_NAME: Final = "fileless_execution"

# Tracee's detect.SignatureMetadata for TRC-105, to the letter.
METADATA: Final[dict[str, Any]] = {
    "ID": "TRC-105",
    "Version": "1",
    "Name": "Fileless execution detected",
    "EventName": EVENT_NAME,
    "Description": (
        "Fileless execution was detected. Executing a process from memory instead from a file "
        "in the filesystem may indicate that an adversary is trying to avoid execution detection."
    ),
    "Tags": [],
    "Properties": {
        "Severity": 3,
        "Category": "defense-evasion",
        "Technique": "Reflective Code Loading",
        "Kubernetes_Technique": "",
        "id": "attack-pattern--4933e63b-9b77-476e-ab29-761bc5b7d15a",
        "external_id": "T1620",
    },
}

MEMFD_PREFIX: Final = "memfd:"
SHM_PREFIXES: Final = ("/dev/shm/", "/run/shm/")
DELETED_SUFFIX: Final = " (deleted)"
# Tracee's helpers.IsMemoryPath: the prefixes its TRC-105 fires on.
TRACEE_MEMORY_PREFIXES: Final = (MEMFD_PREFIX, "/dev/shm", "/run/shm")

_FD_PATH = re.compile(r"^/(?:dev/fd|proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd)/\d+$")
_LOADER_GLOBS: Final = ("ld-linux*.so*", "ld-*.so*", "ld.so*", "ld-musl-*.so*")


def is_memory_path(pathname: str) -> bool:
    """Tracee's rule: a ``pathname`` starting with memfd:, /dev/shm or /run/shm."""
    return pathname.startswith(TRACEE_MEMORY_PREFIXES)


def is_fd_path(path: str) -> bool:
    """``/dev/fd/N``, ``/proc/self/fd/N``, ``/proc/PID/fd/N``, ``/proc/PID/task/TID/fd/N``."""
    return bool(_FD_PATH.match(path))


def is_loader(exe: str) -> bool:
    return any(fnmatch.fnmatchcase(posixpath.basename(exe), g) for g in _LOADER_GLOBS)


def memfd_name_of(exe: str, exec_path: str | None = None) -> str | None:
    """``/memfd:NAME (deleted)`` (as the kernel prints a memfd's path) -> ``NAME``. A real file of
    that literal name exec'd by that very name (``exec_path``) is not a memfd."""
    if exe.startswith("/" + MEMFD_PREFIX) and exe.endswith(DELETED_SUFFIX) and exec_path != exe:
        return exe[len(MEMFD_PREFIX) + 1 : -len(DELETED_SUFFIX)]
    return None


def pathname(event: ExecEvent) -> str:
    """The executed image in Tracee's form: ``memfd:NAME`` for a memfd, else the path without
    the kernel's `` (deleted)`` suffix."""
    if event.memfd_name is not None:
        return MEMFD_PREFIX + event.memfd_name
    name = memfd_name_of(event.exe, event.exec_path)
    if name is not None:
        return MEMFD_PREFIX + name
    exe = event.exe
    if exe.endswith(DELETED_SUFFIX) and event.nlink != 1:
        return exe[: -len(DELETED_SUFFIX)]
    return exe


def _image_unlinked(event: ExecEvent) -> bool:
    if event.nlink is not None:
        return event.nlink == 0
    # Audit has no nlink: the kernel appends " (deleted)" to the path of an unlinked image. A file
    # literally named "x (deleted)" and exec'd by that very name is not evidence.
    return event.exe.endswith(DELETED_SUFFIX) and event.exec_path != event.exe


def _fd_target_in_memory(nlink: int | None, dev: int | None,
                         memfd_devs: Collection[int]) -> bool:
    return nlink == 0 or (dev is not None and dev in memfd_devs)


def detect(event: ExecEvent, memfd_devs: Collection[int] = ()) -> Technique | None:
    """The technique this exec shows, or ``None`` when it ran from a file on disk.

    ``memfd_devs``: devices that memfds live on (learned at start-up); lets audit evidence, which
    has no nlink, recognise a script or program fed from a memfd.
    """
    if event.memfd_name is not None or memfd_name_of(event.exe, event.exec_path) is not None:
        return "memfd"
    if event.fd_target is not None and _fd_target_in_memory(
        event.fd_target.nlink, event.fd_target.dev, memfd_devs
    ):
        return "loader" if is_loader(event.exe) else "memfd-script"
    if _image_unlinked(event):
        return "unlinked"
    if pathname(event).startswith(SHM_PREFIXES):
        return "shm"
    return None
