"""The event loop and pipeline wiring, with in-memory sensors (no kernel needed)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pytest

from auditwatch.engine import Engine
from auditwatch.errors import SensorError, SensorUnavailable
from auditwatch.events import ExecEvent, Sensor
from auditwatch.finding import Finding, HealthInfo
from auditwatch.pipeline import Pipeline


def exec_event(pid: int, exe: str, sensor: Sensor = "audit") -> ExecEvent:
    return ExecEvent(sensor=sensor, timestamp_ns=pid, pid=pid, tgid=pid, ppid=1, uid=0, euid=0,
                     comm="x", exe=exe, exec_path="", argv=("x",))


@dataclass
class FakeSource:
    name: Sensor
    pending: list[ExecEvent] = field(default_factory=list)
    fail: type[Exception] | None = None
    reports_watermark: bool = False
    loaded: bool = False
    closed: int = 0

    def __post_init__(self) -> None:
        self._r, self._w = os.pipe()

    def load(self) -> None:
        if self.fail is not None:
            raise self.fail(f"{self.name} cannot load")
        self.loaded = True

    def fileno(self) -> int:
        return self._r

    def push(self, *events: ExecEvent) -> None:
        self.pending.extend(events)
        os.write(self._w, b"x")

    def read(self) -> list[ExecEvent]:
        os.read(self._r, 4096)
        out, self.pending = self.pending, []
        return out

    def tick(self, now_ns: int) -> list[ExecEvent]:
        return []

    def watermark_ns(self, select_start_ns: int) -> int | None:
        return select_start_ns if self.reports_watermark else None

    def take_health(self) -> list[HealthInfo]:
        return []

    def counters(self) -> dict[str, int]:
        return {"execs_seen": 0}

    def close(self) -> None:
        self.closed += 1


def make(sources: list[FakeSource]) -> tuple[Engine, list[Finding]]:
    found: list[Finding] = []
    return Engine(sources, Pipeline(hostname="h"), found.append), found


def test_events_flow_to_findings_and_benign_ones_are_dropped() -> None:
    src = FakeSource("audit")
    engine, found = make([src])
    engine.start()
    src.push(exec_event(10, "/memfd:a (deleted)"), exec_event(11, "/usr/bin/true"),
             exec_event(12, "/dev/shm/x"))
    engine.pump(1.0)
    assert [(f.event.pid, f.technique) for f in found if f.event] == [(10, "memfd"), (12, "shm")]
    assert engine.counters()["pipeline"]["not_fileless"] == 1
    engine.close()
    engine.close()  # twice is safe
    assert src.closed == 1


def test_optional_sensor_unavailable_is_a_warning() -> None:
    bpf, audit = FakeSource("bpf", fail=SensorUnavailable), FakeSource("audit")
    engine, _ = make([bpf, audit])
    warnings = engine.start()
    assert [s.name for s in engine.active] == ["audit"]
    assert "bpf sensor unavailable" in warnings[0]
    engine.close()


def test_required_sensor_unavailable_fails_and_rolls_back() -> None:
    audit, bpf = FakeSource("audit"), FakeSource("bpf", fail=SensorUnavailable)
    engine, _ = make([audit, bpf])
    with pytest.raises(SensorUnavailable):
        engine.start(required=frozenset({"bpf"}))
    assert audit.closed == 1  # what had loaded is released


def test_sensor_error_is_fatal_and_rolls_back() -> None:
    audit, bpf = FakeSource("audit"), FakeSource("bpf", fail=SensorError)
    engine, _ = make([audit, bpf])
    with pytest.raises(SensorError):
        engine.start()
    assert audit.closed == 1


def test_no_sensor_left_is_an_error() -> None:
    engine, _ = make([FakeSource("bpf", fail=SensorUnavailable)])
    with pytest.raises(SensorUnavailable, match="no sensor"):
        engine.start()


def test_memfd_device_learned_from_a_memfd_exec() -> None:
    pipeline = Pipeline(hostname="h")
    memfd = exec_event(1, "/memfd:a (deleted)")
    memfd = ExecEvent(**{**{s: getattr(memfd, s) for s in memfd.__slots__}, "dev": 77})
    assert [f.technique for f in pipeline.feed(memfd)] == ["memfd"]
    assert 77 in pipeline.memfd_devs


@pytest.mark.parametrize("watermarks", [True, False])
def test_exec_one_sensor_missed_waits_a_window_when_the_other_reports_its_watermark(
        watermarks: bool) -> None:
    """The audit sensor saw nothing: with its watermark the BPF finding comes after the window
    (50 ms here); without it, only after the hold for a lagging sensor (10 windows)."""
    bpf = FakeSource("bpf", reports_watermark=watermarks)
    audit = FakeSource("audit", reports_watermark=watermarks)
    found: list[Finding] = []
    pipeline = Pipeline(hostname="h", live_sensors={"bpf", "audit"}, window_ns=50_000_000)
    engine = Engine([bpf, audit], pipeline, found.append)
    engine.start()
    event = exec_event(42, "/memfd:x (deleted)", sensor="bpf")
    start = time.monotonic()
    bpf.push(ExecEvent(**{**{k: getattr(event, k) for k in event.__slots__},
                          "timestamp_ns": time.time_ns()}))
    while not found and time.monotonic() - start < 2.0:
        engine.pump(0.01)
    took = time.monotonic() - start
    engine.close()
    assert [(f.sensors, f.missing_sensors) for f in found] == [(("bpf",), ("audit",))]
    if watermarks:
        assert took < 0.3, took
    else:
        assert took >= 0.45, took
