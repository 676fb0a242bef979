"""Group audit records into events by (timestamp, serial), Laurel style.

Pure: ``feed(record)`` returns the events it finished, ``flush(now_ns)`` expires old ones,
``flush_all()`` ends everything at EOF. Time is event time (audit timestamps) or whatever the
caller passes; this module never reads a clock.

An event ends:
- at its EOE record (the netlink stream has them for every syscall event);
- once a record of a newer serial has arrived and a grace passed: more than ``GRACE_SERIALS``
  newer serials, or ``GRACE_NS`` of event time (audit.log has no EOE; auditd 3.0 writes the
  records of concurrent events interleaved, measured up to 2 serials / 4 ms apart here);
- when older than ``INFLIGHT_TIMEOUT_NS`` at ``flush(now_ns)``;
- by eviction of the oldest when more than ``MAX_INFLIGHT`` are open (counted).
A standalone record (user-space or daemon message) is an event by itself.

Serials: the kernel numbers every event it emits, globally, one by one; filtered records consume
none. Measured on Linux 6.18 with a multicast listener: no gaps in normal operation, so a gap in
the live stream is a loss. Counted: ``serial_gaps`` (occurrences), ``missing_serials`` (how many,
reduced again when a late event fills a gap), ``out_of_order``, ``duplicates`` (records of an event
already finished), ``serial_resets`` (a large backwards jump: a reboot in a log that spans it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from auditwatch.audit.records import TYPE_NUMBERS, AuditRecord

INFLIGHT_TIMEOUT_NS: Final = 5_000_000_000   # Laurel's in-flight expiry
GRACE_NS: Final = 2_000_000_000              # auditd's end_of_event_timeout default
GRACE_SERIALS: Final = 16
MAX_INFLIGHT: Final = 4096
DONE_MEMORY: Final = 4096                    # finished keys remembered to spot duplicates
MAX_GAP_RANGES: Final = 256
RESET_BACKWARDS: Final = 100_000             # a serial this far back starts a new sequence


def is_standalone(type_name: str) -> bool:
    """User-space (1100-1299, 2100-2999) records are events by themselves."""
    num = TYPE_NUMBERS.get(type_name)
    if num is None and type_name.startswith("UNKNOWN[") and type_name.endswith("]"):
        try:
            num = int(type_name[8:-1])
        except ValueError:
            return False
    return num is not None and (1100 <= num < 1300 or 2100 <= num < 3000)


def is_daemon(type_name: str) -> bool:
    """auditd's own records carry auditd's numbering, not kernel serials."""
    return type_name.startswith("DAEMON_")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    timestamp_ns: int
    serial: int
    records: tuple[AuditRecord, ...]
    complete: bool          # ended by EOE (or standalone): nothing more will come

    def first(self, type_name: str) -> AuditRecord | None:
        for r in self.records:
            if r.type == type_name:
                return r
        return None

    def all(self, type_name: str) -> list[AuditRecord]:
        return [r for r in self.records if r.type == type_name]


class Grouper:
    def __init__(self, max_inflight: int = MAX_INFLIGHT,
                 timeout_ns: int = INFLIGHT_TIMEOUT_NS) -> None:
        self._max_inflight = max_inflight
        self._timeout_ns = timeout_ns
        self._inflight: OrderedDict[tuple[int, int], list[AuditRecord]] = OrderedDict()
        self._done: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._gaps: list[list[int]] = []  # [lo, hi] inclusive, oldest first
        self._high_serial: int | None = None
        self._high_ts = 0
        self.counters: dict[str, int] = dict.fromkeys((
            "records", "events", "ended_eoe", "ended_grace", "ended_timeout", "ended_eof",
            "evicted", "duplicates", "out_of_order", "serial_gaps", "missing_serials",
            "serial_resets"), 0)

    # --- public ---------------------------------------------------------------------------

    def feed(self, record: AuditRecord) -> list[AuditEvent]:
        c = self.counters
        c["records"] += 1
        key = record.key
        if key in self._done:
            c["duplicates"] += 1
            return []
        out: list[AuditEvent] = []
        records = self._inflight.get(key)
        if records is None:
            if not is_daemon(record.type):
                self._track_serial(record)
            if is_standalone(record.type):
                return [self._finish(key, [record], complete=True, reason="ended_eoe")]
            out.extend(self._end_by_grace(record))
            self._inflight[key] = records = []
            if len(self._inflight) > self._max_inflight:
                old_key, old = self._inflight.popitem(last=False)
                c["evicted"] += 1
                out.append(self._finish(old_key, old, complete=False, reason=None))
        if record.type == "EOE":
            del self._inflight[key]
            out.append(self._finish(key, records, complete=True, reason="ended_eoe"))
        elif record in records:
            c["duplicates"] += 1
        else:
            records.append(record)
        return out

    def flush(self, now_ns: int) -> list[AuditEvent]:
        """End events whose time is more than the timeout (``INFLIGHT_TIMEOUT_NS`` unless told
        otherwise) before ``now_ns``."""
        limit = now_ns - self._timeout_ns
        old = [k for k in self._inflight if k[0] < limit]
        return [self._finish(k, self._inflight.pop(k), complete=False, reason="ended_timeout")
                for k in old]

    def flush_all(self) -> list[AuditEvent]:
        keys = list(self._inflight)
        return [self._finish(k, self._inflight.pop(k), complete=False, reason="ended_eof")
                for k in keys]

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_inflight_ns(self) -> int | None:
        """Event time of the oldest event still waiting for its end (None: nothing waits)."""
        return min((k[0] for k in self._inflight), default=None)

    # --- internals ------------------------------------------------------------------------

    def _finish(self, key: tuple[int, int], records: list[AuditRecord], complete: bool,
                reason: str | None) -> AuditEvent:
        if reason is not None:
            self.counters[reason] += 1
        self.counters["events"] += 1
        self._done[key] = None
        if len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)
        return AuditEvent(key[0], key[1], tuple(records), complete)

    def _end_by_grace(self, record: AuditRecord) -> list[AuditEvent]:
        """A record of a new event arrived: end older events past the grace."""
        if not self._inflight:
            return []
        ended = [k for k in self._inflight
                 if k[1] < record.serial and (record.serial - k[1] > GRACE_SERIALS
                                              or record.timestamp_ns - k[0] >= GRACE_NS)]
        return [self._finish(k, self._inflight.pop(k), complete=False, reason="ended_grace")
                for k in ended]

    def _track_serial(self, record: AuditRecord) -> None:
        c = self.counters
        s = record.serial
        high = self._high_serial
        if high is None or (s < high - RESET_BACKWARDS and record.timestamp_ns > self._high_ts):
            if high is not None:
                c["serial_resets"] += 1
                self._gaps.clear()
            self._high_serial, self._high_ts = s, record.timestamp_ns
            return
        if s > high:
            if s > high + 1:
                c["serial_gaps"] += 1
                c["missing_serials"] += s - high - 1
                self._gaps.append([high + 1, s - 1])
                if len(self._gaps) > MAX_GAP_RANGES:
                    del self._gaps[0]
            self._high_serial, self._high_ts = s, max(self._high_ts, record.timestamp_ns)
        elif s < high:
            c["out_of_order"] += 1
            self._fill_gap(s)

    def _fill_gap(self, s: int) -> None:
        for i, gap in enumerate(self._gaps):
            lo, hi = gap
            if lo <= s <= hi:
                self.counters["missing_serials"] -= 1
                if lo == hi:
                    del self._gaps[i]
                elif s == lo:
                    gap[0] = s + 1
                elif s == hi:
                    gap[1] = s - 1
                else:
                    gap[1] = s - 1
                    self._gaps.insert(i + 1, [s + 1, hi])
                return
