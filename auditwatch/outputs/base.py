"""The output interface, the fan-out, an in-memory output for tests, and the builder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from loguru import logger

from auditwatch.config import JsonlOutputConfig, OutputConfig, SyslogOutputConfig
from auditwatch.finding import Finding


@runtime_checkable
class Output(Protocol):
    name: str

    def write(self, finding: Finding) -> None:
        """Hand over one finding. Never blocks the detection loop on a slow receiver and never
        raises for a delivery failure: failures are counted (``counters()``) and logged."""

    def reopen(self) -> None:
        """SIGHUP: reopen files (logrotate moved them) / reconnect."""

    def close(self) -> None:
        """Flush what can be flushed quickly and release everything; safe to call twice."""

    def counters(self) -> dict[str, int]:
        """Monotonic counters: ``written``/``sent``, ``dropped``, ``errors``..."""


class MemoryOutput:
    """Keeps every finding (for tests)."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.findings: list[Finding] = []
        self.reopened = 0
        self.closed = False

    def write(self, finding: Finding) -> None:
        self.findings.append(finding)

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        self.closed = True

    def counters(self) -> dict[str, int]:
        return {"written": len(self.findings)}


class FanOut:
    """Sends each finding to every output; one failing output does not stop the others."""

    def __init__(self, outputs: Iterable[Output]) -> None:
        self.outputs: tuple[Output, ...] = tuple(outputs)
        self.name = "fanout"
        self._errors = 0
        self._reported_drops: dict[str, int] = {}

    def write(self, finding: Finding) -> None:
        for out in self.outputs:
            try:
                out.write(finding)
            except Exception:  # an output bug must not cost the other outputs the finding
                self._errors += 1
                logger.exception("output {} failed to write a finding", out.name)

    def reopen(self) -> None:
        for out in self.outputs:
            try:
                out.reopen()
            except Exception as e:
                logger.error("output {} could not reopen: {}", out.name, e)

    def close(self) -> None:
        for out in self.outputs:
            try:
                out.close()
            except Exception as e:
                logger.error("output {} could not close: {}", out.name, e)

    def counters(self) -> dict[str, int]:
        """Every output's counters, keyed ``NAME.COUNTER`` (e.g. ``syslog+tcp://h:514.dropped``)."""
        result = {"fanout.errors": self._errors}
        for out in self.outputs:
            for key, value in out.counters().items():
                result[f"{out.name}.{key}"] = value
        return result

    def new_drops(self) -> dict[str, int]:
        """Findings each output dropped (or, UDP, learned lost) since the last call (only outputs
        that lost some):
        for the daemon to log and to raise as a health finding on the other outputs."""
        fresh: dict[str, int] = {}
        for out in self.outputs:
            c = out.counters()
            total = c.get("dropped", 0) + c.get("lost", 0)
            delta = total - self._reported_drops.get(out.name, 0)
            if delta > 0:
                fresh[out.name] = delta
                self._reported_drops[out.name] = total
        return fresh


def build_output(config: OutputConfig, hostname: str | None = None) -> Output:
    """Open one output. Raises ``OutputError`` when a file cannot be opened; a syslog receiver
    that is not there yet is not an error (the sender reconnects with backoff)."""
    if isinstance(config, JsonlOutputConfig):
        from auditwatch.outputs.jsonl import JsonlOutput
        return JsonlOutput(config.path)
    if isinstance(config, SyslogOutputConfig):
        from auditwatch.outputs.syslog import SyslogOutput
        return SyslogOutput(config, hostname=hostname)
    raise TypeError(f"unknown output config {config!r}")


def build_outputs(configs: Iterable[OutputConfig], hostname: str | None = None) -> FanOut:
    """Open every configured output; if one fails, close those already opened and re-raise."""
    opened: list[Output] = []
    try:
        for config in configs:
            opened.append(build_output(config, hostname=hostname))
    except BaseException:
        for out in opened:
            out.close()
        raise
    return FanOut(opened)
