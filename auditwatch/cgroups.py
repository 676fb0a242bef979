"""cgroup v2 ids to cgroup paths, the form an operator writes (``/system.slice/docker-*.scope``).

The BPF sensor records ``bpf_get_current_cgroup_id()``: the id of the exec'ing task's cgroup in
the unified (v2) hierarchy, which is also the inode number of that cgroup's directory in cgroup2fs.
``CgroupResolver.path`` turns it into the path relative to the cgroup2 root, as
``/proc/PID/cgroup``'s ``0::`` line shows it (the daemon runs in the initial cgroup namespace):

1. a cache of ids already resolved (ids are not reused while the host runs);
2. the process's own ``/proc/PID/cgroup`` line, accepted only when the directory it names has
   that inode (the process may have moved since its exec);
3. a walk of the cgroup2 tree (at most once per ``rescan_s``), for processes already gone.

An event without an id (the audit sensor) gets the process's ``/proc/PID/cgroup`` line, if it is
still alive. Unresolved stays ``None``: a ``cgroup`` allow-list field then does not match.
"""

from __future__ import annotations

import os
import time
from typing import Final

MAX_CACHED: Final = 65536
MAX_WALK_DIRS: Final = 100_000
RESCAN_S: Final = 1.0


def cgroup2_mount(mounts: str = "/proc/self/mounts") -> str | None:
    """Where the unified hierarchy is mounted (``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified``
    on a hybrid host), or None."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1].replace("\\040", " ")
    except OSError:
        return None
    return None


def cgroup_of_pid(pid: int) -> str | None:
    """The v2 cgroup path of a live process (the ``0::`` line of ``/proc/PID/cgroup``)."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for raw in f.read().split(b"\n"):
                if raw.startswith(b"0::"):
                    path = raw[3:].decode("utf-8", "backslashreplace")
                    return path.removesuffix(" (deleted)") or None
    except OSError:
        return None
    return None


class CgroupResolver:
    def __init__(self, root: str | None = None, *, rescan_s: float = RESCAN_S) -> None:
        self.root = root if root is not None else cgroup2_mount()
        self.rescan_s = rescan_s
        self._by_id: dict[int, str] = {}
        self._next_walk = 0.0
        self.walks = 0

    def path(self, cgroup_id: int | None, pid: int | None) -> str | None:
        if cgroup_id is None:
            return cgroup_of_pid(pid) if pid is not None else None
        hit = self._by_id.get(cgroup_id)
        if hit is not None:
            return hit
        if self.root is None:
            return None
        if pid is not None:
            own = cgroup_of_pid(pid)
            if own is not None and self._inode(own) == cgroup_id:
                self._remember(cgroup_id, own)
                return own
        if time.monotonic() >= self._next_walk:
            self._next_walk = time.monotonic() + self.rescan_s
            self._walk()
        return self._by_id.get(cgroup_id)

    def _inode(self, path: str) -> int | None:
        assert self.root is not None
        try:
            return os.stat(self.root + (path if path != "/" else "")).st_ino
        except (OSError, ValueError):
            return None

    def _remember(self, cgroup_id: int, path: str) -> None:
        if len(self._by_id) >= MAX_CACHED:
            self._by_id.clear()
        self._by_id[cgroup_id] = path

    def _walk(self) -> None:
        assert self.root is not None
        self.walks += 1
        self._by_id.clear()
        root = self.root.rstrip("/") or "/"
        seen = 0
        stack = [(root, "/")]
        while stack and seen < MAX_WALK_DIRS:
            directory, rel = stack.pop()
            try:
                st_ino = os.stat(directory).st_ino
                self._remember(st_ino, rel)
                seen += 1
                with os.scandir(directory) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            child = entry.name if rel == "/" else f"{rel}/{entry.name}"
                            stack.append((entry.path, "/" + child.lstrip("/")))
            except OSError:
                continue
