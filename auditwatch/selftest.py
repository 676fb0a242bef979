"""``auditwatch selftest``: perform real fileless execs on this host and check each live sensor
reports each of them, with the right technique, and reports none of the look-alikes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from auditwatch import daemon, hostinfo, scenarios
from auditwatch.config import load_config
from auditwatch.engine import Engine
from auditwatch.events import Sensor
from auditwatch.finding import Finding
from auditwatch.pipeline import Pipeline

WAIT_S = 5.0  # how long the slowest sensor may take to report an exec


@dataclass(frozen=True, slots=True)
class Check:
    scenario: str
    expected: str | None
    found: tuple[str, ...]          # techniques reported for the scenario's pid
    sensors: tuple[str, ...]        # sensors that contributed
    ok: bool


def findings_for(result: scenarios.ScenarioResult, findings: Sequence[Finding]) -> list[Finding]:
    token = result.argv[-1]
    return [f for f in findings if f.event is not None and f.event.tgid == result.pid
            and token in f.event.argv]


def _judge(result: scenarios.ScenarioResult, findings: Sequence[Finding],
           live: Sequence[str]) -> Check:
    mine = findings_for(result, findings)
    techniques = tuple(f.technique or "" for f in mine)
    sensors = tuple(sorted({s for f in mine for s in f.sensors}))
    if result.expected is None:
        ok = not mine
    else:
        ok = techniques == (result.expected,) and set(live) <= set(sensors)
    return Check(result.name, result.expected, techniques, sensors, ok)


def run_checks(engine: Engine, found: list[Finding], live: Sequence[str]) -> list[Check]:
    results = scenarios.run_all()
    deadline = time.monotonic() + WAIT_S
    positives = [r for r in results if r.expected is not None]
    while time.monotonic() < deadline:
        engine.pump(0.05)
        if all(_judge(r, found, live).ok for r in positives):
            break
    engine.pump(0.2)  # a little longer, so a late false positive is caught too
    return [_judge(r, found, live) for r in results]


def main(sensors: Sequence[str] | None) -> int:
    config = load_config(None)
    wanted: list[Sensor] = list(sensors or config.sensors)  # type: ignore[arg-type]
    found: list[Finding] = []
    hostname = hostinfo.hostname()
    engine = Engine(daemon._sources(config, wanted), Pipeline(hostname=hostname), found.append)
    try:
        live = daemon.start_sensors(engine, frozenset(wanted) if sensors else frozenset())
        engine.pipeline = daemon.make_pipeline(config, live, hostname)
        checks = run_checks(engine, found, live)
    finally:
        engine.close()
    print(f"selftest with sensors: {','.join(live)}")
    for c in checks:
        want = c.expected or "nothing"
        got = ",".join(c.found) or "nothing"
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.scenario:<22} expected {want:<13} "
              f"got {got:<13} sensors {','.join(c.sensors) or '-'}")
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0
