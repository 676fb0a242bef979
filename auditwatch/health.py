"""Sensor health and tamper signs, from counters and correlation results.

Pure stage (no I/O, no clock). The daemon calls ``observe(now_ns, ...)`` periodically with each
live sensor's counters (``Source.counters()``) and what it knows of the kernel state, and
``note(correlated)`` with every correlated exec that became a TRC-105 finding. Both return
``HealthInfo`` for conditions that *start* (raised once, not every tick) and, with the kind
suffixed ``_recovered``, for conditions that end.

Conditions (``kind``, ``sensor``):

=====================  =======  ==========================================================
``sensor_disagreement``  blind  a fileless exec was seen by one sensor while the other was
                                live (``Correlated.missing``); ends at the next exec both see
``bpf_blind``          bpf      over ``interval_ns`` BPF's ``execs_seen`` did not grow while
                                audit's grew by ``min_execs`` or more (probe detached/killed)
``bpf_detached``       bpf      ``bpf_attached`` is False (the daemon's own attachment check)
``bpf_events_lost``    bpf      BPF drop counters grew; ``count`` = drops in the tick that
                                raised it; the recovery carries the episode's total
``audit_blind``        audit    audit's ``execs_seen`` stopped while BPF's grew (``-e 0``,
                                rules removed, listener starved)
``audit_rules_removed``  audit  ``audit_rules_loaded`` is False (``auditctl -D``)
``audit_disabled``     audit    ``audit_enabled`` is False (``auditctl -e 0``)
``audit_records_lost``  audit   audit loss counters (``lost``, ``enobufs``) grew; as above
=====================  =======  ==========================================================

Sensors report some of these themselves (``Source.take_health()``, once per occurrence): pass
them through ``absorb()`` first so each episode is reported once, whoever noticed it first.

``execs_seen`` must count every exec a sensor observed, before any candidate filter. A counter
that goes backwards (sensor reloaded) restarts the comparison. Loss episodes end after
``interval_ns`` without growth. Sensors absent from ``sensor_counters`` are not live: no rule
compares against them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from auditwatch.correlate import Correlated
from auditwatch.events import Sensor
from auditwatch.finding import Finding, HealthInfo

HEALTH_EVENT_NAME: Final = "auditwatch_sensor_gap"

HEALTH_METADATA: Final[dict[str, Any]] = {
    "ID": "AW-HEALTH",
    "Version": "1",
    "Name": "auditwatch sensor health",
    "EventName": HEALTH_EVENT_NAME,
    "Description": (
        "An auditwatch sensor stopped seeing executions, lost records, or was detached or had "
        "its rules removed. Disabling or modifying security tools may indicate that an adversary "
        "is trying to avoid detection; detection continues on the remaining sensor."
    ),
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

DEFAULT_INTERVAL_NS: Final = 2_000_000_000
DEFAULT_MIN_EXECS: Final = 5
EXEC_COUNTER: Final = "execs_seen"
AUDIT_LOSS_COUNTERS: Final = ("lost", "enobufs")
BPF_LOSS_COUNTERS: Final = ("rb_drops", "queue_drops")
RECOVERED_SUFFIX: Final = "_recovered"
_TRACKED_KINDS: Final = frozenset({"audit_records_lost", "bpf_events_lost", "bpf_detached",
                                   "audit_rules_removed", "audit_disabled"})

_BLINDING_KINDS: Final = frozenset({"bpf_detached", "bpf_blind", "audit_rules_removed",
                                    "audit_blind", "audit_disabled"})

_MESSAGES: Final[dict[str, str]] = {
    "sensor_disagreement": "fileless exec seen by one sensor only: the {sensor} sensor missed it",
    "bpf_blind": "BPF probe saw no exec for {secs:g}s while audit saw {count}; "
                 "probe detached or killed?",
    "bpf_detached": "BPF program is no longer attached",
    "bpf_events_lost": "BPF sensor dropped {count} events",
    "audit_blind": "audit saw no exec for {secs:g}s while BPF saw {count}; "
                   "audit disabled or rules removed?",
    "audit_rules_removed": "auditwatch's audit rules are not loaded",
    "audit_disabled": "audit is disabled (audit_enabled=0): no records until auditctl -e 1",
    "audit_records_lost": "audit sensor lost {count} records",
}


def health_finding(info: HealthInfo, hostname: str) -> Finding:
    return Finding(metadata=HEALTH_METADATA, hostname=hostname, health=info,
                   sensors=(info.sensor,) if info.sensor is not None else ())


@dataclass(slots=True)
class _Condition:
    since_ns: int
    count: int = 0


@dataclass(slots=True)
class _Losses:
    last_total: int | None = None
    last_growth_ns: int = 0
    reported_by_sensor: bool = False   # a sensor said so since the last observe


@dataclass(slots=True)
class _Baseline:
    ts_ns: int
    execs: dict[Sensor, int] = field(default_factory=dict)


class HealthMonitor:
    def __init__(self, interval_ns: int = DEFAULT_INTERVAL_NS,
                 min_execs: int = DEFAULT_MIN_EXECS, *,
                 exec_counter: str = EXEC_COUNTER,
                 audit_loss_counters: tuple[str, ...] = AUDIT_LOSS_COUNTERS,
                 bpf_loss_counters: tuple[str, ...] = BPF_LOSS_COUNTERS) -> None:
        self.interval_ns = interval_ns
        self.min_execs = min_execs
        self.exec_counter = exec_counter
        self._loss_counters: dict[Sensor, tuple[str, ...]] = {
            "audit": audit_loss_counters, "bpf": bpf_loss_counters}
        self._loss_kind: dict[Sensor, str] = {
            "audit": "audit_records_lost", "bpf": "bpf_events_lost"}
        self._active: dict[tuple[str, Sensor | None], _Condition] = {}
        self._baseline: _Baseline | None = None
        self._losses: dict[Sensor, _Losses] = {"audit": _Losses(), "bpf": _Losses()}

    # --- public -------------------------------------------------------------------------------

    def active(self) -> list[tuple[str, Sensor | None]]:
        """Conditions in force now, as (kind, sensor): for ``auditwatch status``."""
        return list(self._active)

    def blinded(self) -> frozenset[Sensor]:
        """Sensors that cannot see execs now (detached probe, removed rules, no execs while the
        other sensor sees them): correlation should stop waiting for them."""
        return frozenset(sensor for kind, sensor in self._active
                         if kind in _BLINDING_KINDS and sensor is not None)

    def absorb(self, infos: Iterable[HealthInfo]) -> list[HealthInfo]:
        """Sensors' own observations (``Source.take_health()``); call before ``observe``.

        An info of a kind this monitor tracks as a condition (losses, detachment, rules removed)
        starts that condition (the sensor's message, often more precise, is the one reported)
        or, when the condition is already in force, is dropped: one report per episode whoever
        noticed first. Other kinds pass through.
        """
        out: list[HealthInfo] = []
        for info in infos:
            key = (info.kind, info.sensor)
            if info.kind not in _TRACKED_KINDS:
                out.append(info)
            elif key not in self._active:
                # Counts come from the counters (observe); the sensor's would count twice.
                self._active[key] = _Condition(info.timestamp_ns)
                out.append(info)
            if info.sensor is not None and info.kind == self._loss_kind.get(info.sensor):
                self._losses[info.sensor].reported_by_sensor = True
        return out

    def note(self, correlated: Correlated) -> list[HealthInfo]:
        """A correlated exec that became a TRC-105 finding."""
        if correlated.reason == "passthrough":
            return []
        ts = correlated.merged.timestamp_ns
        out: list[HealthInfo] = []
        for s in correlated.missing:
            out += self._raise("sensor_disagreement", s, ts, count=1)
        if not correlated.missing and len(correlated.sensors) > 1:
            for s in correlated.sensors:
                out += self._clear("sensor_disagreement", s, ts)
        return out

    def observe(self, now_ns: int, sensor_counters: dict[Sensor, dict[str, int]],
                bpf_attached: bool | None = None,
                audit_rules_loaded: bool | None = None,
                audit_enabled: bool | None = None) -> list[HealthInfo]:
        """``bpf_attached``, ``audit_rules_loaded``, ``audit_enabled``: the kernel state now
        (``None``: unknown, or that sensor is not live). They must be fresh: a stale "loaded"
        would end a condition a sensor has just reported through ``absorb``."""
        out: list[HealthInfo] = []
        if bpf_attached is not None:
            out += self._toggle("bpf_detached", "bpf", not bpf_attached, now_ns)
        if audit_rules_loaded is not None:
            out += self._toggle("audit_rules_removed", "audit", not audit_rules_loaded, now_ns)
        if audit_enabled is not None:
            out += self._toggle("audit_disabled", "audit", not audit_enabled, now_ns)
        for sensor in ("audit", "bpf"):
            if sensor in sensor_counters:
                out += self._check_losses(sensor, now_ns, sensor_counters[sensor])
        out += self._check_blind(now_ns, sensor_counters)
        return out

    # --- rules --------------------------------------------------------------------------------

    def _check_losses(self, sensor: Sensor, now_ns: int,
                      counters: dict[str, int]) -> list[HealthInfo]:
        state = self._losses[sensor]
        total = sum(counters.get(name, 0) for name in self._loss_counters[sensor])
        previous, state.last_total = state.last_total, total
        kind = self._loss_kind[sensor]
        if state.reported_by_sensor:
            state.reported_by_sensor, state.last_growth_ns = False, now_ns
        if previous is None or total < previous:  # first sight or counter reset
            return []
        if total > previous:
            state.last_growth_ns = now_ns
            return self._raise(kind, sensor, now_ns, count=total - previous)
        if now_ns - state.last_growth_ns >= self.interval_ns:
            return self._clear(kind, sensor, now_ns)
        return []

    def _check_blind(self, now_ns: int,
                     sensor_counters: dict[Sensor, dict[str, int]]) -> list[HealthInfo]:
        execs: dict[Sensor, int] = {s: c[self.exec_counter] for s, c in sensor_counters.items()
                                    if s in ("bpf", "audit") and self.exec_counter in c}
        base = self._baseline
        if base is None or base.execs.keys() != execs.keys() or any(
                execs[s] < base.execs[s] for s in execs):
            self._baseline = _Baseline(now_ns, execs)  # start, sensor set change or reset
            return []
        if now_ns - base.ts_ns < self.interval_ns:
            return []
        self._baseline = _Baseline(now_ns, execs)
        if len(execs) < 2:
            return []
        secs = (now_ns - base.ts_ns) / 1e9
        out: list[HealthInfo] = []
        pairs: tuple[tuple[Sensor, Sensor, str], ...] = (("bpf", "audit", "bpf_blind"),
                                                         ("audit", "bpf", "audit_blind"))
        for blind, other, kind in pairs:
            d_blind = execs[blind] - base.execs[blind]
            d_other = execs[other] - base.execs[other]
            if d_blind == 0 and d_other >= self.min_execs:
                out += self._raise(kind, blind, now_ns, count=d_other, secs=round(secs, 1))
            elif d_blind > 0:
                out += self._clear(kind, blind, now_ns)
        return out

    # --- condition bookkeeping ----------------------------------------------------------------

    def _toggle(self, kind: str, sensor: Sensor, on: bool, now_ns: int) -> list[HealthInfo]:
        return self._raise(kind, sensor, now_ns) if on else self._clear(kind, sensor, now_ns)

    def _raise(self, kind: str, sensor: Sensor | None, now_ns: int, count: int | None = None,
               **fmt: Any) -> list[HealthInfo]:
        key = (kind, sensor)
        cond = self._active.get(key)
        if cond is not None:
            cond.count += count or 0
            return []
        self._active[key] = _Condition(now_ns, count or 0)
        message = _MESSAGES[kind].format(sensor=sensor, count=count, secs=fmt.get("secs", 0))
        return [HealthInfo(kind=kind, message=message, sensor=sensor, count=count,
                           timestamp_ns=now_ns)]

    def _clear(self, kind: str, sensor: Sensor | None, now_ns: int) -> list[HealthInfo]:
        cond = self._active.pop((kind, sensor), None)
        if cond is None:
            return []
        secs = max(0, now_ns - cond.since_ns) / 1e9
        total = f" ({cond.count} in total)" if cond.count else ""
        return [HealthInfo(kind=kind + RECOVERED_SUFFIX,
                           message=f"{kind} ended after {secs:.1f}s{total}",
                           sensor=sensor, count=cond.count or None, timestamp_ns=now_ns)]
