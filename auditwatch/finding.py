"""Findings and their one JSON form (compatible with Tracee's ``detect.Finding``).

A ``Finding`` is either a TRC-105 detection (``event`` set, ``technique`` set) or a health/tamper
finding (``health`` set) with the same JSON shape and its own metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from auditwatch import trc105
from auditwatch.events import ExecEvent, Sensor, Technique


@dataclass(frozen=True, slots=True)
class HealthInfo:
    """A sensor gap or tamper sign: ``kind`` is stable (alert rules), ``message`` for people."""

    kind: str                 # e.g. "bpf_detached", "audit_records_lost", "audit_rules_removed"
    message: str
    sensor: Sensor | None = None
    count: int | None = None  # how many records/events the gap covers, when known
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class Finding:
    metadata: dict[str, Any]
    hostname: str
    event: ExecEvent | None = None
    technique: Technique | None = None
    sensors: tuple[Sensor, ...] = ()
    missing_sensors: tuple[Sensor, ...] = ()
    health: HealthInfo | None = None

    @property
    def timestamp_ns(self) -> int:
        if self.event is not None:
            return self.event.timestamp_ns
        return self.health.timestamp_ns if self.health is not None else 0


def exec_finding(event: ExecEvent, technique: Technique, hostname: str,
                 sensors: tuple[Sensor, ...] | None = None,
                 missing_sensors: tuple[Sensor, ...] = ()) -> Finding:
    return Finding(
        metadata=trc105.METADATA,
        hostname=hostname,
        event=event,
        technique=technique,
        sensors=sensors if sensors is not None else (event.sensor,),
        missing_sensors=missing_sensors,
    )


def _arg(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": value}


def _exec_event_dict(f: Finding, e: ExecEvent) -> dict[str, Any]:
    audit = None
    if e.audit is not None:
        a = e.audit
        audit = {"serial": a.serial, "auid": a.auid, "ses": a.ses, "tty": a.tty,
                 "syscall": a.syscall, "cwd": a.cwd}
    block: dict[str, Any] = {
        "technique": f.technique,
        "sensors": list(f.sensors),
        "audit": audit,
    }
    if f.missing_sensors:
        block["missing_sensors"] = list(f.missing_sensors)
    if e.sweep:
        block["sweep"] = True
    if e.argv_truncated:
        block["argv_truncated"] = True
    if e.memfd_name is not None:
        block["memfd_name"] = e.memfd_name
    if e.fd_target is not None:
        t = e.fd_target
        block["fd_target"] = {"path": t.path, "inode": t.inode, "dev": t.dev, "nlink": t.nlink}
    for key in ("sb_magic", "mnt_ns", "pid_ns", "cgroup", "parent_exe", "euid"):
        value = getattr(e, key)
        if value is not None:
            block[key] = value
    return {
        "timestamp": e.timestamp_ns,
        "eventName": "sched_process_exec",
        "processId": e.ns_pid if e.ns_pid is not None else e.pid,
        "threadId": e.pid,
        "hostProcessId": e.tgid,
        "parentProcessId": e.ns_ppid if e.ns_ppid is not None else (e.ppid or 0),
        "hostParentProcessId": e.ppid or 0,
        "userId": e.uid if e.uid is not None else -1,
        "processName": e.comm,
        "hostName": f.hostname,
        "args": [
            _arg("pathname", trc105.pathname(e)),
            _arg("cmdpath", e.exec_path),
            _arg("argv", list(e.argv)),
            _arg("inode", e.inode),
            _arg("dev", e.dev),
            _arg("nlink", e.nlink),
        ],
        "auditwatch": block,
    }


def _health_event_dict(f: Finding, h: HealthInfo) -> dict[str, Any]:
    return {
        "timestamp": h.timestamp_ns,
        "eventName": h.kind,
        "processId": 0,
        "hostProcessId": 0,
        "parentProcessId": 0,
        "hostParentProcessId": 0,
        "userId": -1,
        "processName": "",
        "hostName": f.hostname,
        "args": [_arg("message", h.message), _arg("sensor", h.sensor), _arg("count", h.count)],
        "auditwatch": {"health": h.kind, "sensor": h.sensor, "count": h.count},
    }


def to_dict(f: Finding) -> dict[str, Any]:
    if f.event is not None:
        event = _exec_event_dict(f, f.event)
    elif f.health is not None:
        event = _health_event_dict(f, f.health)
    else:
        raise ValueError("a finding needs an exec event or health info")
    return {"SigMetadata": f.metadata, "Event": event, "Data": None}


def to_json(f: Finding) -> str:
    """One line of JSON; hostile names stay inside their strings (json escapes control chars)."""
    return json.dumps(to_dict(f), ensure_ascii=False, separators=(",", ":"))


def summary(f: Finding) -> str:
    """A short line for people (stderr on a TTY, syslog MSG)."""
    if f.event is not None:
        e = f.event
        return (f"TRC-105 fileless execution ({f.technique}) pid={e.tgid} ppid={e.ppid} "
                f"uid={e.uid} comm={e.comm!r} path={trc105.pathname(e)!r} "
                f"sensors={','.join(f.sensors)}")
    assert f.health is not None
    return f"auditwatch health: {f.health.kind}: {f.health.message}"
