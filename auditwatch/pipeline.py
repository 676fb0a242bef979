"""The detection pipeline: candidate exec events in, findings out. No I/O of its own.

    ExecEvent ─> correlate (join sensors) ─> trc105.detect ─> allow-list ─> Finding

The allow-list's sha256 field needs the executed image's bytes: the caller injects
``sha256_of(event)``, so the only I/O happens at the edge, and only when an entry asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from auditwatch import trc105
from auditwatch.correlate import Correlated, Correlator
from auditwatch.events import ExecEvent, Sensor, Technique
from auditwatch.finding import Finding, exec_finding


class Suppressor(Protocol):
    """The allow-list as the pipeline sees it: the name of the matching entry, or None."""

    def suppressing_entry(self, event: ExecEvent, technique: Technique,
                          sha256_of: Callable[[], str | None]) -> str | None: ...


@dataclass(slots=True)
class PipelineCounters:
    candidates: int = 0
    findings: int = 0
    not_fileless: int = 0
    suppressed: int = 0
    suppressed_by: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suppressed:
    finding: Finding
    entry: str


class Pipeline:
    def __init__(self, *, hostname: str, live_sensors: Collection[Sensor] = frozenset({"audit"}),
                 window_ns: int | None = None, max_pending: int | None = None,
                 memfd_devs: Collection[int] = (), allowlist: Suppressor | None = None,
                 sha256_of: Callable[[ExecEvent], str | None] | None = None) -> None:
        self.hostname = hostname
        self.memfd_devs: set[int] = set(memfd_devs)
        # With one live sensor every event is complete on arrival: the correlator emits at once.
        options = {k: v for k, v in (("window_ns", window_ns), ("max_pending", max_pending))
                   if v is not None}
        self.correlator = Correlator(live_sensors=frozenset(live_sensors), **options)
        self.allowlist = allowlist
        self._sha256_of = sha256_of or (lambda _e: None)
        self.counters = PipelineCounters()
        self.joined: list[Correlated] = []      # what the health monitor reads, then clears
        self.suppressed: list[Suppressed] = []  # for debug logging, then cleared by the caller

    def feed(self, event: ExecEvent) -> list[Finding]:
        self.counters.candidates += 1
        return self._detect(self.correlator.feed(event))

    def set_live_sensors(self, live: Collection[Sensor]) -> list[Finding]:
        """A sensor went blind or came back: stop (or start again) waiting for its events."""
        if frozenset(live) == self.correlator.live_sensors:
            return []
        return self._detect(self.correlator.set_live_sensors(frozenset(live)))

    def advance(self, sensor: Sensor, watermark_ns: int) -> None:
        """``sensor`` has handed out every exec before ``watermark_ns``."""
        self.correlator.advance(sensor, watermark_ns)

    def flush(self, now_ns: int) -> list[Finding]:
        return self._detect(self.correlator.flush(now_ns))

    def flush_all(self) -> list[Finding]:
        return self._detect(self.correlator.flush_all())

    def _detect(self, joined: list[Correlated]) -> list[Finding]:
        findings = []
        for j in joined:
            technique = trc105.detect(j.merged, self.memfd_devs)
            if technique is None:
                self.counters.not_fileless += 1
                continue
            self.joined.append(j)
            self._learn_memfd_device(j.merged, technique)
            finding = exec_finding(j.merged, technique, self.hostname, j.sensors, j.missing)
            entry = self._allowlisted(j.merged, technique)
            if entry is not None:
                self.counters.suppressed += 1
                self.counters.suppressed_by[entry] = self.counters.suppressed_by.get(entry, 0) + 1
                self.suppressed.append(Suppressed(finding, entry))
                continue
            self.counters.findings += 1
            findings.append(finding)
        return findings

    def _learn_memfd_device(self, event: ExecEvent, technique: Technique) -> None:
        # A memfd exec tells us which device memfds live on (also in an offline log from another
        # host), so a later script fed from a memfd is recognised from audit evidence alone.
        if technique == "memfd" and event.dev is not None:
            self.memfd_devs.add(event.dev)

    def _allowlisted(self, event: ExecEvent, technique: Technique) -> str | None:
        if self.allowlist is None:
            return None
        return self.allowlist.suppressing_entry(event, technique, lambda: self._sha256_of(event))
