"""Offline audit: read audit.log files (rotated, gzipped, or stdin) and scan them for execs.

The only audit module besides the netlink sensor that does I/O (opening files, learning the
memfd device). Parsing, grouping and exec extraction are the pure stages.

    scanner = Scanner()
    for event in scanner.events(open_audit_logs(["/var/log/audit"])):
        ...
    scanner.counters   # {"lines": .., "parse_errors": .., "execs_seen": .., ...}
"""

from __future__ import annotations

import gzip
import os
import re
import sys
import zlib
from collections.abc import Collection, Iterable, Iterator
from typing import BinaryIO

from auditwatch.audit.execs import ExecExtractor
from auditwatch.audit.grouper import AuditEvent, Grouper
from auditwatch.audit.records import AuditParseError, parse_log_line
from auditwatch.errors import SensorError
from auditwatch.events import ExecEvent
from auditwatch.hostinfo import memfd_devices

FLUSH_EVERY = 1024   # records between expiry passes (by event time)
_ROTATED = re.compile(r"^(?P<base>.*?)\.(?P<n>\d+)(?:\.gz)?$")


class Scanner:
    """audit.log lines in, ``ExecEvent``s out; counts everything it skips."""

    def __init__(self, memfd_devs: Collection[int] | None = None, all_execs: bool = False) -> None:
        devs = memfd_devices() if memfd_devs is None else frozenset(memfd_devs)
        self.grouper = Grouper()
        self.extractor = ExecExtractor(devs, all_execs=all_execs)
        self._counters = {"lines": 0, "parse_errors": 0}

    @property
    def counters(self) -> dict[str, int]:
        return {**self._counters, **self.grouper.counters, **self.extractor.counters}

    def _emit(self, events: list[AuditEvent]) -> Iterator[ExecEvent]:
        for ev in events:
            result = self.extractor.extract(ev)
            if result is not None:
                yield result

    def events(self, lines: Iterable[bytes]) -> Iterator[ExecEvent]:
        grouper = self.grouper
        latest = 0
        for line in lines:
            if not line.strip():
                continue
            self._counters["lines"] += 1
            try:
                record = parse_log_line(line)
            except (AuditParseError, ValueError, UnicodeError):
                self._counters["parse_errors"] += 1
                continue
            latest = max(latest, record.timestamp_ns)
            yield from self._emit(grouper.feed(record))
            if self._counters["lines"] % FLUSH_EVERY == 0:
                yield from self._emit(grouper.flush(latest))
        yield from self._emit(grouper.flush_all())


def scan_lines(lines: Iterable[bytes], memfd_devs: Collection[int] | None = None,
               all_execs: bool = False) -> Iterator[ExecEvent]:
    """Convenience: ``Scanner(...).events(lines)``; use ``Scanner`` to read counters."""
    return Scanner(memfd_devs, all_execs=all_execs).events(lines)


# --- files -------------------------------------------------------------------------------------

def _expand(path: str) -> list[str]:
    if path != "-" and os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError as e:
            raise SensorError(f"cannot read {path}: {e.strerror}") from e
        return [os.path.join(path, n) for n in names
                if n == "audit.log" or n.startswith("audit.log.")]
    return [path]


def order_paths(paths: Iterable[str]) -> list[str]:
    """Oldest first: for each log, ``NAME.N`` with the highest N first, then ``NAME``.

    Logs of different names keep the order in which they were first named."""
    expanded = [p for path in paths for p in _expand(path)]
    bases: dict[str, None] = {}
    keyed = []
    for pos, p in enumerate(expanded):
        m = _ROTATED.match(p) if p != "-" else None
        base, n = (m["base"], int(m["n"])) if m else (p.removesuffix(".gz"), 0)
        bases.setdefault(base, None)
        keyed.append((base, n, pos, p))
    rank = {b: i for i, b in enumerate(bases)}
    keyed.sort(key=lambda k: (rank[k[0]], -k[1], k[2]))
    seen: set[str] = set()
    ordered = []
    for *_, p in keyed:
        if p not in seen:
            seen.add(p)
            ordered.append(p)
    return ordered


def _open(path: str) -> BinaryIO:
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as e:
        raise SensorError(f"cannot read {path}: {e.strerror or e}") from e


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    with _open(path) as f:
        try:
            yield from f
        except (OSError, EOFError, zlib.error) as e:
            raise SensorError(f"cannot read {path}: {e}") from e


def open_audit_logs(paths: list[str]) -> Iterator[bytes]:
    """Lines of the given audit logs, oldest first; ``-`` is stdin. Checks every file can be
    opened before yielding anything: a missing or unreadable one raises ``SensorError``."""
    ordered = order_paths(paths)
    if not ordered:
        raise SensorError(f"no audit logs found in {', '.join(paths)}")
    for p in ordered:
        if p != "-":
            _open(p).close()

    def lines() -> Iterator[bytes]:
        for p in ordered:
            yield from _lines(p)

    return lines()
