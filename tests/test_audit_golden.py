"""Golden test: every recorded ``tests/data/audit/<scenario>.log`` -> its ``.expected.json``.

The logs were recorded on a real kernel by ``tools/record_audit_scenario.py``. Set
``AUDITWATCH_REWRITE_GOLDEN=1`` to rewrite the expected files from what the scanner finds now
(then review the diff). The scenario's own pid must show the scenario's technique whatever the
golden says.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from auditwatch import trc105
from auditwatch.audit.reader import Scanner
from auditwatch.events import ExecEvent

DATA = Path(__file__).parent / "data" / "audit"
LOGS = sorted(DATA.glob("*.log"))
REWRITE = os.environ.get("AUDITWATCH_REWRITE_GOLDEN") == "1"


def event_dict(event: ExecEvent, memfd_devs: list[int]) -> dict[str, Any]:
    d = dataclasses.asdict(event)
    d["argv"] = list(event.argv)
    d["technique"] = trc105.detect(event, memfd_devs)
    return d


def scan(log: Path, memfd_devs: list[int], all_execs: bool) -> tuple[list[ExecEvent], Scanner]:
    scanner = Scanner(memfd_devs, all_execs=all_execs)
    with open(log, "rb") as f:
        events = list(scanner.events(f))
    return events, scanner


def write_expected(log: Path, scenario: str, pid: int, technique: str | None,
                   memfd_devs: list[int]) -> None:
    """The expected file of ``log`` (also used by tools/record_audit_scenario.py)."""
    events, scanner = scan(log, memfd_devs, all_execs=True)
    doc = {
        "scenario": scenario,
        "pid": pid,
        "expected_technique": technique,
        "memfd_devs": memfd_devs,
        "events": [event_dict(e, memfd_devs) for e in events],
        "counters": scanner.counters,
    }
    log.with_suffix(".expected.json").write_text(
        json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def test_fixtures_exist() -> None:
    names = {p.stem for p in LOGS}
    from auditwatch import scenarios

    assert set(scenarios.ALL) | {"hostile_name", "long_argv"} <= names


@pytest.mark.parametrize("log", LOGS, ids=[p.stem for p in LOGS])
def test_golden(log: Path) -> None:
    expected_path = log.with_suffix(".expected.json")
    meta = json.loads(expected_path.read_text(encoding="utf-8"))
    devs = meta["memfd_devs"]
    if REWRITE:
        write_expected(log, meta["scenario"], meta["pid"], meta["expected_technique"], devs)
        meta = json.loads(expected_path.read_text(encoding="utf-8"))

    events, scanner = scan(log, devs, all_execs=True)
    got = json.loads(json.dumps([event_dict(e, devs) for e in events], ensure_ascii=False))
    assert got == meta["events"]
    assert scanner.counters == meta["counters"]
    assert scanner.counters["parse_errors"] == 0

    # Independent of the golden: the scenario's exec is there, with the scenario's technique.
    mine = [e for e in events if e.pid == meta["pid"]]
    assert len(mine) == 1, f"{log.name}: {len(mine)} exec events for pid {meta['pid']}"
    assert trc105.detect(mine[0], devs) == meta["expected_technique"]
    assert not mine[0].argv_truncated

    # The fast path keeps every exec the detector fires on.
    fast, _ = scan(log, devs, all_execs=False)
    assert {e.audit.serial for e in fast if e.audit} >= {
        e.audit.serial for e in events if e.audit and trc105.detect(e, devs)}
    assert all(e in events for e in fast)
