"""Join the BPF and audit views of one exec into one result, within a bounded window.

Pure stage (no I/O, no clock): ``feed(event)`` takes sensor events, ``flush(now_ns)`` is told the
wall-clock time and emits what waited long enough, ``flush_all()`` empties it at shutdown.

What is fed
    Every event a live sensor forwards (its *candidates*: execs that may be fileless by its own
    evidence). The correlator is technique-agnostic: it never calls ``trc105.detect``; detection
    runs on ``Correlated.merged`` afterwards. Sensors' pre-filters should be loose enough that an
    exec one sensor forwards is forwarded by the other too (otherwise the other is reported
    missing). Feeding non-candidates is correct but costs memory and evictions under exec storms.

Joining
    Two events of different sensors describe one exec when they have the same host tgid, their
    timestamps differ by at most ``skew_ns`` (default: the window; BPF's converted clock and
    audit's coarse millisecond stamp taken at syscall entry differ by a few ms) and their evidence
    agrees wherever both know it: inode, dev, memfd name (or a prefix), argv (a truncated argv
    must be a prefix), exec path basename (audit writes ``""`` for AT_EMPTY_PATH: unknown).
    One tgid can exec twice
    within the window (a memfd program exec'ing another): each sensor delivers its events of one
    task in order, so an event joins the *oldest* compatible entry that lacks its sensor.

Emission
    As soon as every live sensor delivered (reason ``complete``); otherwise ``window_ns`` after
    the first ``flush`` that saw the exec waiting (``window``), listing the missing sensors.
    The window counts from arrival, not from the exec's timestamp: when the loop drains a
    backlog (a burst, a slow reader) old events still get their full window to meet their
    partner. And while a missing sensor is *behind* (the latest exec time it delivered, or was
    ``advance``d to, is not past this exec's), it is waited for up to ``hold_ns`` (default 10
    windows): in a burst the audit reader drains more slowly than BPF's ring buffer. The
    window should exceed the sensors' delivery skew (3-9 ms measured between BPF and audit
    here). When more than ``max_pending`` execs wait, the oldest is emitted early
    (``evicted``).
    Events of the start-up ``sweep`` pass straight through. An exec-time sensor that is not
    live (marked blind) is still joined and deduplicated; only no one waits for it.

After emission an exec is remembered for ``done_ns`` (bounded by ``max_pending`` too): a second
event of a sensor that already delivered it (same audit serial, or same timestamp and evidence) is
a counted ``duplicate``; the missing sensor's event arriving after the window is counted ``late``
and not emitted again (one finding per exec).
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict, deque
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Literal

from auditwatch.events import SENSORS, ExecEvent, FdTarget, Sensor

# How long an emitted exec is remembered to recognise duplicates and late partners (event time).
DONE_RETENTION_NS: Final = 5_000_000_000
DEFAULT_WINDOW_NS: Final = 300_000_000
DEFAULT_MAX_PENDING: Final = 4096
# A sensor still behind an exec (its latest event is older) is waited for this many windows.
HOLD_FACTOR: Final = 10
# Entries of one tgid looked at per event (a process exec'ing itself in a loop keeps its tgid):
# older emitted ones are forgotten, older pending ones emitted early, so a feed stays O(1).
MAX_PER_TGID: Final = 64

Reason = Literal["complete", "window", "evicted", "flush", "passthrough"]

# Preference order when both sensors know a field. BPF reads the kernel's objects at exec time;
# audit alone knows its context and logs the full argv (BPF's may be truncated).
_BPF_FIRST: Final[tuple[Sensor, ...]] = ("bpf", "audit", "sweep")
_AUDIT_FIRST: Final[tuple[Sensor, ...]] = ("audit", "bpf", "sweep")
_AUDIT_FIELDS: Final = frozenset({"audit"})
_SPECIAL_FIELDS: Final = frozenset({"sensor", "argv", "argv_truncated", "fd_target", "sweep"})
_MERGED_FIELDS: Final = tuple(
    (f.name, _AUDIT_FIRST if f.name in _AUDIT_FIELDS else _BPF_FIRST)
    for f in fields(ExecEvent) if f.name not in _SPECIAL_FIELDS)


@dataclass(frozen=True, slots=True)
class Correlated:
    """One exec, as seen by every sensor that delivered it."""

    merged: ExecEvent                  # union of the evidence; ``sensor`` is the primary's
    sensors: tuple[Sensor, ...]        # that delivered, canonical order (bpf, audit, sweep)
    missing: tuple[Sensor, ...] = ()   # live sensors that did not deliver in time
    reason: Reason = "complete"
    events: tuple[ExecEvent, ...] = ()  # the raw per-sensor events, same order as ``sensors``

    @property
    def joined(self) -> bool:
        return len(self.sensors) > 1


class _Entry:
    """One exec in flight (``pending``) or recently emitted (``done``)."""

    __slots__ = ("arrived_ns", "done", "events", "first_ts", "key", "settled_ns")

    def __init__(self, key: int, event: ExecEvent) -> None:
        self.key = key
        self.events: dict[Sensor, ExecEvent] = {event.sensor: event}
        self.first_ts = event.timestamp_ns
        self.arrived_ns: int | None = None  # the first flush time after it came: window start
        self.settled_ns = 0            # when it was emitted
        self.done = False


def _known(value: Any) -> bool:
    return value is not None and value != "" and value != ()


def _argv_compatible(a: ExecEvent, b: ExecEvent) -> bool:
    if not a.argv or not b.argv:
        return True
    if a.argv == b.argv:
        return True
    short, long_ = (a, b) if len(a.argv) <= len(b.argv) else (b, a)
    if not short.argv_truncated:
        return False
    n = len(short.argv)
    # BPF truncates by bytes: its last string may be cut short too.
    return short.argv[: n - 1] == long_.argv[: n - 1] and long_.argv[n - 1].startswith(
        short.argv[n - 1])


def same_exec(a: ExecEvent, b: ExecEvent, skew_ns: int) -> bool:
    """Whether two events of different sensors can describe the same exec."""
    if a.tgid != b.tgid or abs(a.timestamp_ns - b.timestamp_ns) > skew_ns:
        return False
    for name in ("inode", "dev"):
        x, y = getattr(a, name), getattr(b, name)
        if x is not None and y is not None and x != y:
            return False
    m, n = a.memfd_name, b.memfd_name
    if m is not None and n is not None and not (m.startswith(n) or n.startswith(m)):
        return False  # a prefix is fine: BPF may read a shortened dentry name
    if a.exec_path and b.exec_path and (
            posixpath.basename(a.exec_path) != posixpath.basename(b.exec_path)):
        return False
    return _argv_compatible(a, b)


def _same_delivery(a: ExecEvent, b: ExecEvent) -> bool:
    """Whether ``b`` is a re-delivery of ``a`` (same sensor): same serial, or same stamp."""
    if a.audit is not None and b.audit is not None:
        return a.audit.serial == b.audit.serial
    return (a.timestamp_ns == b.timestamp_ns and a.inode == b.inode
            and a.exec_path == b.exec_path and a.argv == b.argv)


def _order(sensors: Any) -> tuple[Sensor, ...]:
    return tuple(s for s in _BPF_FIRST if s in sensors)


def _pick(events: dict[Sensor, ExecEvent], name: str, prefer: tuple[Sensor, ...]) -> Any:
    for s in prefer:
        e = events.get(s)
        if e is not None and _known(getattr(e, name)):
            return getattr(e, name)
    return None


def _merge_fd_target(events: dict[Sensor, ExecEvent]) -> FdTarget | None:
    targets = {s: e.fd_target for s, e in events.items() if e.fd_target is not None}
    if len(targets) <= 1:
        return next(iter(targets.values()), None)
    ordered = [targets[s] for s in _BPF_FIRST if s in targets]

    def first(name: str) -> Any:
        return next((getattr(t, name) for t in ordered if _known(getattr(t, name))), None)

    return FdTarget(path=first("path") or ordered[0].path, inode=first("inode"),
                    dev=first("dev"), nlink=first("nlink"))


def merge(events: dict[Sensor, ExecEvent]) -> ExecEvent:
    """Union of the evidence: per field, the value from the sensor that knows it.

    BPF first (nlink, memfd name, sb_magic, namespaces, cgroup, bprm filename ``/dev/fd/N``
    over audit's ``""``, and ``parent_exe``: BPF's is the parent's image read by the kernel at
    exec time, audit's only ``/proc/PPID/exe`` read on arrival, after the parent may have exec'd
    another image), audit first for its context and the full argv.
    """
    primary = events[_order(events)[0]]
    if len(events) == 1:
        return primary
    changes: dict[str, Any] = {}
    for name, prefer in _MERGED_FIELDS:
        value = _pick(events, name, prefer)
        if value is not None:
            changes[name] = value
    argv_source = next((events[s] for s in _AUDIT_FIRST if s in events and events[s].argv), None)
    if argv_source is not None:
        changes["argv"] = argv_source.argv
        changes["argv_truncated"] = argv_source.argv_truncated
    changes["fd_target"] = _merge_fd_target(events)
    changes["sweep"] = any(e.sweep for e in events.values())
    return replace(primary, **changes)


class Correlator:
    """Join per-sensor exec events; bounded by ``max_pending`` whatever the exec rate."""

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS,
                 live_sensors: frozenset[Sensor] = frozenset(SENSORS),
                 max_pending: int = DEFAULT_MAX_PENDING, *, skew_ns: int | None = None,
                 hold_ns: int | None = None, done_ns: int = DONE_RETENTION_NS) -> None:
        if window_ns < 0 or max_pending < 1:
            raise ValueError("window_ns must be >= 0 and max_pending >= 1")
        self.window_ns = window_ns
        self.skew_ns = window_ns if skew_ns is None else skew_ns
        self.hold_ns = max(window_ns, HOLD_FACTOR * window_ns if hold_ns is None else hold_ns)
        self.done_ns = done_ns
        self._marks: dict[Sensor, int] = {}  # per sensor: latest exec time it delivered
        self.max_pending = max_pending
        self.live_sensors: frozenset[Sensor] = frozenset(live_sensors)
        self._pending: OrderedDict[int, _Entry] = OrderedDict()
        self._done: deque[_Entry] = deque()
        self._by_tgid: dict[int, list[_Entry]] = {}
        self._next_key = 0
        self._now = 0  # the latest time flush() was told
        self._counters = dict.fromkeys(
            ("fed", "joined", "single_sensor", "incomplete", "evicted", "duplicates", "late",
             "passthrough"), 0)

    # --- public -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Execs waiting for a partner (never more than ``max_pending``)."""
        return len(self._pending)

    @property
    def remembered(self) -> int:
        """Emitted execs kept for duplicate/late detection (never more than ``max_pending``)."""
        return len(self._done)

    def counters(self) -> dict[str, int]:
        return {**self._counters, "pending": len(self._pending)}

    def set_live_sensors(self, live: frozenset[Sensor]) -> list[Correlated]:
        """A sensor died or came back. Entries now complete are emitted at once."""
        self.live_sensors = frozenset(live)
        ready = [e for e in self._pending.values() if self._complete(e)]
        return [self._emit(e, "complete") for e in ready]

    def feed(self, event: ExecEvent) -> list[Correlated]:
        self._counters["fed"] += 1
        self.advance(event.sensor, event.timestamp_ns)
        if event.sensor not in self.live_sensors and event.sensor not in SENSORS:
            # Not an exec-time sensor (the start-up sweep): nothing to join. An exec-time
            # sensor that is merely not live (marked blind, yet delivering) is joined as usual,
            # or the other sensor's finding for the same exec would be duplicated.
            self._counters["passthrough"] += 1
            self._counters["single_sensor"] += 1
            return [Correlated(event, (event.sensor,), (), "passthrough", (event,))]
        entries = self._by_tgid.get(event.tgid, ())
        for entry in entries:
            seen = entry.events.get(event.sensor)
            if seen is not None and _same_delivery(seen, event):
                self._counters["duplicates"] += 1
                return []
        partner = self._find_partner(entries, event)
        if partner is not None:
            partner.events[event.sensor] = event
            if partner.done:  # its partner was emitted without it
                self._counters["late"] += 1
                return []
            return [self._emit(partner, "complete")] if self._complete(partner) else []
        entry = _Entry(self._next_key, event)
        self._next_key += 1
        out: list[Correlated] = []
        if self._complete(entry):  # only one live sensor
            self._index(entry)
            return [self._emit(entry, "complete")]
        self._pending[entry.key] = entry
        self._index(entry)
        out += self._trim_tgid(event.tgid)
        while len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending.values()))
            self._counters["evicted"] += 1
            out.append(self._emit(oldest, "evicted"))
        return out

    def flush(self, now_ns: int) -> list[Correlated]:
        """Emit execs whose window has passed; forget old emitted ones."""
        self._now = max(self._now, now_ns)
        deadline, hold = now_ns - self.window_ns, now_ns - self.hold_ns
        expired = []
        for e in self._pending.values():
            if e.arrived_ns is None:
                e.arrived_ns = now_ns
            elif e.arrived_ns <= hold or (e.arrived_ns <= deadline and self._passed(e)):
                expired.append(e)
        expired.sort(key=lambda e: e.first_ts)
        out = [self._emit(e, "window") for e in expired]
        horizon = now_ns - self.done_ns
        while self._done and self._done[0].settled_ns <= horizon:
            self._unindex(self._done.popleft())
        return out

    def advance(self, sensor: Sensor, timestamp_ns: int) -> None:
        """A sensor has handed out every exec before this time (the engine passes each sensor's
        delivery watermark after draining it). Lets ``flush`` stop waiting for it."""
        if timestamp_ns > self._marks.get(sensor, timestamp_ns - 1):
            self._marks[sensor] = timestamp_ns

    def flush_all(self) -> list[Correlated]:
        """Emit everything pending (shutdown, end of a file)."""
        return [self._emit(e, "flush") for e in list(self._pending.values())]

    # --- internals ----------------------------------------------------------------------------

    def _passed(self, entry: _Entry) -> bool:
        """Every missing sensor already delivered something later than this exec."""
        limit = entry.first_ts + self.skew_ns
        return all(self._marks.get(s, limit) > limit
                   for s in self.live_sensors if s not in entry.events)

    def _complete(self, entry: _Entry) -> bool:
        return self.live_sensors <= entry.events.keys()

    def _find_partner(self, entries: Any, event: ExecEvent) -> _Entry | None:
        # Pending before done, oldest first within each: per-sensor order is exec order.
        for want_done in (False, True):
            for entry in entries:
                if entry.done != want_done or event.sensor in entry.events:
                    continue
                if all(same_exec(other, event, self.skew_ns) for other in entry.events.values()):
                    return entry
        return None

    def _trim_tgid(self, tgid: int) -> list[Correlated]:
        bucket = self._by_tgid[tgid]
        excess = len(bucket) - MAX_PER_TGID
        if excess <= 0:
            return []
        # Forget the oldest emitted entries first (they stay in ``_done`` until they age out)...
        gone = {id(e) for e in [e for e in bucket if e.done][:excess]}
        if gone:
            bucket[:] = [e for e in bucket if id(e) not in gone]
        # ...then emit the oldest pending ones early (the new entry is last: it stays).
        out = []
        while len(bucket) > MAX_PER_TGID:
            oldest = bucket.pop(0)
            self._counters["evicted"] += 1
            out.append(self._emit(oldest, "evicted"))
        return out

    def _index(self, entry: _Entry) -> None:
        tgid = next(iter(entry.events.values())).tgid
        self._by_tgid.setdefault(tgid, []).append(entry)

    def _unindex(self, entry: _Entry) -> None:
        tgid = next(iter(entry.events.values())).tgid
        bucket = self._by_tgid.get(tgid)
        if bucket is None:
            return
        bucket[:] = [e for e in bucket if e is not entry]
        if not bucket:
            del self._by_tgid[tgid]

    def _emit(self, entry: _Entry, reason: Reason) -> Correlated:
        self._pending.pop(entry.key, None)
        entry.done = True
        entry.settled_ns = max(self._now, entry.first_ts)
        self._done.append(entry)
        while len(self._done) > self.max_pending:
            self._unindex(self._done.popleft())
        sensors = _order(entry.events)
        missing = tuple(s for s in _order(self.live_sensors) if s not in entry.events)
        if len(sensors) > 1:
            self._counters["joined"] += 1
        else:
            self._counters["single_sensor"] += 1
        if missing:
            self._counters["incomplete"] += 1
        return Correlated(merge(entry.events), sensors, missing, reason,
                          tuple(entry.events[s] for s in sensors))
