"""The event loop: live sensors -> pipeline -> outputs, one thread, one epoll.

Sensors hand the loop an fd each; the loop drains whichever is readable, tells every stage the
time so partial events expire, and every second asks the health monitor what the sensors'
counters say. Nothing here decides what is fileless: that is the pipeline's job.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Sequence

from loguru import logger

from auditwatch.errors import SensorError, SensorUnavailable
from auditwatch.events import ExecEvent, Sensor
from auditwatch.finding import Finding, HealthInfo
from auditwatch.pipeline import Pipeline
from auditwatch.sensors.base import Source

TICK_S = 0.05            # how often partial events are expired when nothing arrives
HEALTH_INTERVAL_S = 1.0  # how often sensor counters are compared
FAR_FUTURE_NS = 2**62    # "now" at shutdown: every buffered partial event is due

FindingSink = Callable[[Finding], None]
HealthHook = Callable[[int, dict[Sensor, dict[str, int]], list[HealthInfo]], list[Finding]]


class Engine:
    def __init__(self, sources: Sequence[Source], pipeline: Pipeline, sink: FindingSink, *,
                 health: HealthHook | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.sources = list(sources)
        self.pipeline = pipeline
        self.sink = sink
        self.health = health
        self.clock = clock
        self._selector = selectors.DefaultSelector()
        self._loaded: list[Source] = []
        self._last_health = 0.0
        self._closed = False

    def start(self, *, required: frozenset[Sensor] = frozenset()) -> list[str]:
        """Load every sensor. One that cannot run on this host is dropped with a warning unless
        it is in ``required``; returns the warnings. Raises when no sensor is left."""
        warnings = []
        for source in self.sources:
            try:
                source.load()
            except SensorUnavailable as exc:
                if source.name in required:
                    self.close()
                    raise
                warnings.append(f"{source.name} sensor unavailable: {exc}; continuing without it")
                continue
            except SensorError:
                self.close()
                raise
            self._loaded.append(source)
            self._selector.register(source.fileno(), selectors.EVENT_READ, source)
        if not self._loaded:
            self.close()
            raise SensorUnavailable("no sensor could be loaded: " + "; ".join(warnings))
        return warnings

    @property
    def active(self) -> list[Source]:
        return list(self._loaded)

    def feed(self, events: list[ExecEvent]) -> None:
        for event in events:
            for finding in self.pipeline.feed(event):
                self.sink(finding)

    def pump(self, timeout_s: float = TICK_S) -> None:
        """One round: wait for any sensor (at most ``timeout_s``), drain, expire, check health."""
        select_start = self.clock()
        for key, _ in self._selector.select(timeout_s):
            source: Source = key.data
            self.feed(source.read())
        now = self.clock()
        for source in self._loaded:
            self.feed(source.tick(now))
            # A sensor not readable at the select, or drained since, has handed out all it had.
            mark = source.watermark_ns(select_start)
            if mark is not None:
                self.pipeline.advance(source.name, mark)
        for finding in self.pipeline.flush(now):
            self.sink(finding)
        self._check_health(now)

    def _check_health(self, now_ns: int) -> None:
        monotonic = time.monotonic()
        if monotonic - self._last_health < HEALTH_INTERVAL_S:
            return
        self._last_health = monotonic
        infos: list[HealthInfo] = []
        for source in self._loaded:
            infos.extend(source.take_health())
        if self.health is None:
            for info in infos:
                logger.warning("health: {}: {}", info.kind, info.message)
            return
        counters = {s.name: s.counters() for s in self._loaded}
        for finding in self.health(now_ns, counters, infos):
            self.sink(finding)

    def drain(self) -> None:
        """Emit what is still buffered (end of run): read what is ready, flush every stage."""
        for source in self._loaded:
            self.feed(source.read())
            self.feed(source.tick(FAR_FUTURE_NS))
        for finding in self.pipeline.flush_all():
            self.sink(finding)

    def counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s.name: s.counters() for s in self._loaded}
        c = self.pipeline.counters
        out["pipeline"] = {"candidates": c.candidates, "findings": c.findings,
                           "suppressed": c.suppressed, "not_fileless": c.not_fileless}
        if c.suppressed_by:  # per allow-list entry: which rule silences how much
            out["allowlist"] = dict(c.suppressed_by)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for source in self.sources:
            try:
                source.close()
            except Exception as exc:  # closing must not hide the error that got us here
                logger.warning("closing {} sensor failed: {}", source.name, exc)
        self._selector.close()
