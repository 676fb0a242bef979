"""What the event loop needs from every live sensor.

A sensor is loaded once (rolling back whatever it had set up if loading fails), hands the loop a
file descriptor to wait on, is drained without blocking, is told the time so it can expire what
it buffers, reports its own health observations, and can be closed twice safely.
"""

from __future__ import annotations

from typing import Protocol

from auditwatch.events import ExecEvent, Sensor
from auditwatch.finding import HealthInfo


class Source(Protocol):
    name: Sensor

    def load(self) -> None:
        """Set up kernel state. Raises ``SensorUnavailable`` (says what is missing) or
        ``SensorError``; on failure nothing stays attached or open."""

    def fileno(self) -> int:
        """An fd that becomes readable when ``read()`` may have events."""

    def read(self) -> list[ExecEvent]:
        """Drain what is ready without blocking. Never raises on bad records: counts them."""

    def tick(self, now_ns: int) -> list[ExecEvent]:
        """Expire buffered partial events older than the sensor's timeout (wall-clock ns)."""

    def watermark_ns(self, select_start_ns: int) -> int | None:
        """Every exec before this wall time (ns) has been handed out by ``read``/``tick``, given
        that the loop drained this sensor after a select that began at ``select_start_ns``;
        ``None`` when the sensor cannot say (a backlog remains). Lets correlation stop waiting
        for a sensor that missed an exec."""

    def take_health(self) -> list[HealthInfo]:
        """Health observations (losses, drops, tamper) made since the last call."""

    def counters(self) -> dict[str, int]:
        """Monotonic counters for ``auditwatch status``: execs seen, events, lost, drops..."""

    def close(self) -> None:
        """Release everything; safe to call twice."""
