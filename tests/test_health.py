"""Sensor health: tables of counter snapshots and correlated execs -> health kinds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from auditwatch.correlate import Correlated
from auditwatch.events import ExecEvent
from auditwatch.finding import HealthInfo, to_json
from auditwatch.health import HEALTH_METADATA, HealthMonitor, health_finding

S = 1_000_000_000
INTERVAL = 2 * S


def snap(bpf: int | None = None, audit: int | None = None, *, lost: int = 0, enobufs: int = 0,
         drops: int = 0) -> dict[str, dict[str, int]]:
    counters: dict[str, dict[str, int]] = {}
    if bpf is not None:
        counters["bpf"] = {"execs_seen": bpf, "rb_drops": drops, "queue_drops": 0}
    if audit is not None:
        counters["audit"] = {"execs_seen": audit, "lost": lost, "enobufs": enobufs}
    return counters


def run(steps: list[tuple[Any, ...]]) -> list[list[str]]:
    """Each step: (counters, bpf_attached, audit_rules_loaded), one second apart.
    Returns the kinds raised at each step (``kind:sensor``)."""
    m = HealthMonitor(interval_ns=INTERVAL, min_execs=5)
    out = []
    for i, (counters, attached, rules) in enumerate(steps):
        infos = m.observe(i * S, counters, attached, rules)
        out.append([f"{h.kind}:{h.sensor}" for h in infos])
    return out


def growing(n: int, bpf_rate: int = 10, audit_rate: int = 10, *, start: int = 0,
            attached: bool | None = True, rules: bool | None = True) -> list[tuple[Any, ...]]:
    return [(snap(start + i * bpf_rate, start + i * audit_rate), attached, rules)
            for i in range(n)]


def kinds(result: list[list[str]]) -> list[str]:
    return [k for step in result for k in step]


CASES: dict[str, tuple[list[tuple[Any, ...]], list[str]]] = {
    "healthy": (growing(10), []),
    "idle host is not blindness": ([(snap(5, 5), True, True)] * 10, []),
    "bpf stops while audit grows": (
        growing(3) + [(snap(20, 30 + 10 * i), True, True) for i in range(8)],
        ["bpf_blind:bpf"]),
    "bpf blind then back": (
        growing(3) + [(snap(20, 30 + 10 * i), True, True) for i in range(4)]
        + [(snap(21 + 10 * i, 70 + 10 * i), True, True) for i in range(4)],
        ["bpf_blind:bpf", "bpf_blind_recovered:bpf"]),
    "audit stops while bpf grows": (
        growing(3) + [(snap(30 + 10 * i, 20), True, True) for i in range(6)],
        ["audit_blind:audit"]),
    "too few execs to tell": (
        growing(3) + [(snap(20, 21 + (i // 2)), True, True) for i in range(6)], []),
    "bpf detached": (
        growing(2) + [(snap(10, 10), False, True)] * 3 + [(snap(10, 10), True, True)],
        ["bpf_detached:bpf", "bpf_detached_recovered:bpf"]),
    "attachment unknown": ([(snap(0, 0), None, None)] * 4, []),
    "audit rules removed": (
        growing(2) + [(snap(10, 10), True, False)] * 5,
        ["audit_rules_removed:audit"]),
    "audit records lost once": (
        [(snap(0, 0), True, True), (snap(10, 10, lost=3), True, True)]
        + [(snap(20, 20, lost=3), True, True)] * 4,
        ["audit_records_lost:audit", "audit_records_lost_recovered:audit"]),
    "enobufs keep growing": (
        [(snap(0, 0, enobufs=i), True, True) for i in range(6)],
        ["audit_records_lost:audit"]),
    "bpf ring buffer drops": (
        [(snap(0, 0), True, True), (snap(10, 10, drops=7), True, True)],
        ["bpf_events_lost:bpf"]),
    "counter reset is no loss and no blindness": (
        growing(4, start=1000) + growing(4), []),
    "only one sensor live": ([(snap(None, 10 * i), None, True) for i in range(8)], []),
    "sensor goes away": (
        growing(3) + [(snap(None, 30 + 10 * i), None, True) for i in range(6)], []),
}


@pytest.mark.parametrize("steps,expected", CASES.values(), ids=CASES.keys())
def test_health_sequences(steps: list[tuple[Any, ...]], expected: list[str]) -> None:
    assert kinds(run(steps)) == expected


def test_losses_report_counts() -> None:
    m = HealthMonitor(interval_ns=INTERVAL)
    m.observe(0, snap(0, 0), True, True)
    (first,) = m.observe(1 * S, snap(0, 0, lost=4), True, True)
    assert first.kind == "audit_records_lost" and first.count == 4
    assert first.timestamp_ns == 1 * S and "4" in first.message
    assert m.observe(2 * S, snap(0, 0, lost=10, enobufs=1), True, True) == []
    assert m.active() == [("audit_records_lost", "audit")]
    assert m.observe(3 * S, snap(0, 0, lost=10, enobufs=1), True, True) == []
    (end,) = m.observe(4 * S, snap(0, 0, lost=10, enobufs=1), True, True)
    assert end.kind == "audit_records_lost_recovered" and end.count == 11
    assert m.active() == []


def test_sensor_reports_are_folded_into_episodes() -> None:
    m = HealthMonitor(interval_ns=INTERVAL)
    m.observe(0, snap(0, 0), True, True)
    removed = HealthInfo(kind="audit_rules_removed", message="2 audit rule(s) removed: ...",
                         sensor="audit", count=2)
    lost = HealthInfo(kind="audit_records_lost", message="ENOBUFS", sensor="audit")
    other = HealthInfo(kind="bpf_scripts_unwatched", message="no hook", sensor="bpf")
    # the sensor noticed first: its (more precise) report goes out, the monitor's does not
    assert m.absorb([removed, lost, other]) == [removed, lost, other]
    assert m.observe(1 * S, snap(0, 0, enobufs=1), True, False) == []
    assert m.absorb([removed, lost, other]) == [other]      # same episode: once
    assert m.observe(2 * S, snap(0, 0, enobufs=3), True, False) == []
    ends = m.observe(4 * S, snap(0, 0, enobufs=3), True, True)
    assert sorted(h.kind for h in ends) == ["audit_records_lost_recovered",
                                           "audit_rules_removed_recovered"]
    assert {h.kind: h.count for h in ends}["audit_records_lost_recovered"] == 3
    assert m.absorb([lost]) == [lost]                      # a new episode
    assert m.observe(5 * S, snap(0, 0, enobufs=3), True, True) == []   # kept open by the report


def test_blind_info_names_the_counts() -> None:
    m = HealthMonitor(interval_ns=INTERVAL, min_execs=5)
    m.observe(0, snap(10, 10))
    assert m.observe(1 * S, snap(10, 20)) == []
    (info,) = m.observe(2 * S, snap(10, 40))
    assert info.kind == "bpf_blind" and info.sensor == "bpf" and info.count == 30


def _correlated(sensors: tuple[str, ...], missing: tuple[str, ...], ts: int,
                reason: str = "complete") -> Correlated:
    e = ExecEvent(sensor=sensors[0], timestamp_ns=ts, pid=1, tgid=1, ppid=0, uid=0,  # type: ignore[arg-type]
                  euid=0, comm="x", exe="/memfd:x (deleted)", exec_path="/dev/fd/3")
    return Correlated(e, sensors, missing, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize("seq,expected", [
    ([(("bpf", "audit"), ())] * 3, []),
    ([(("bpf",), ("audit",))] * 3, ["sensor_disagreement:audit"]),
    ([(("bpf",), ("audit",)), (("audit",), ("bpf",))],
     ["sensor_disagreement:audit", "sensor_disagreement:bpf"]),
    ([(("bpf",), ("audit",)), (("bpf",), ("audit",)), (("bpf", "audit"), ()),
      (("bpf",), ("audit",))],
     ["sensor_disagreement:audit", "sensor_disagreement_recovered:audit",
      "sensor_disagreement:audit"]),
    ([(("audit",), ())] * 2, []),                       # audit is the only live sensor
], ids=["joined", "audit-blind-once", "each-sensor", "recovery", "single-live"])
def test_disagreement(seq: list[tuple[tuple[str, ...], tuple[str, ...]]],
                      expected: list[str]) -> None:
    m = HealthMonitor()
    got: list[HealthInfo] = []
    for i, (sensors, missing) in enumerate(seq):
        got += m.note(_correlated(sensors, missing, i * S))
    assert [f"{h.kind}:{h.sensor}" for h in got] == expected


def test_disagreement_counts_and_ignores_sweep() -> None:
    m = HealthMonitor()
    assert m.note(_correlated(("sweep",), (), 0, "passthrough")) == []
    (start,) = m.note(_correlated(("bpf",), ("audit",), 5 * S))
    assert start.timestamp_ns == 5 * S and start.count == 1 and "audit" in start.message
    m.note(_correlated(("bpf",), ("audit",), 6 * S))
    (end,) = m.note(_correlated(("bpf", "audit"), (), 7 * S))
    assert end.count == 2 and end.kind == "sensor_disagreement_recovered"


def test_health_metadata_is_pinned() -> None:
    expected = {
        "ID": "AW-HEALTH",
        "Version": "1",
        "Name": "auditwatch sensor health",
        "EventName": "auditwatch_sensor_gap",
        "Description": HEALTH_METADATA["Description"],
        "Tags": [],
        "Properties": {
            "Severity": 2,
            "Category": "defense-evasion",
            "Technique": "Impair Defenses: Disable or Modify Tools",
            "Kubernetes_Technique": "",
            "id": "attack-pattern--ac08589e-ee59-4935-8667-d845e38fe579",
            "external_id": "T1562.001",
        },
    }
    assert expected == HEALTH_METADATA


def test_health_finding_json() -> None:
    info = HealthInfo(kind="bpf_blind", message="m", sensor="bpf", count=3, timestamp_ns=9)
    f = health_finding(info, "host1")
    assert f.metadata is HEALTH_METADATA and f.health == info and f.sensors == ("bpf",)
    d = json.loads(to_json(f))
    assert d["SigMetadata"]["EventName"] == "auditwatch_sensor_gap"
    assert d["Event"]["eventName"] == "bpf_blind" and d["Event"]["hostName"] == "host1"
    assert d["Event"]["auditwatch"] == {"health": "bpf_blind", "sensor": "bpf", "count": 3}
