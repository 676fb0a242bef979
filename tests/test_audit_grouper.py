"""Grouping records into events: EOE, grace, timeout, eviction, duplicates, gaps, order."""

from __future__ import annotations

from auditwatch.audit.grouper import (
    GRACE_NS,
    GRACE_SERIALS,
    INFLIGHT_TIMEOUT_NS,
    AuditEvent,
    Grouper,
)
from auditwatch.audit.records import AuditRecord

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def rec(type_: str, serial: int, t: int = T0, **fields: str) -> AuditRecord:
    return AuditRecord(type_, t, serial, tuple((k, v.encode()) for k, v in fields.items()))


def feed_all(g: Grouper, records: list[AuditRecord]) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    for x in records:
        out.extend(g.feed(x))
    return out


def test_eoe_ends_event_immediately() -> None:
    g = Grouper()
    assert g.feed(rec("SYSCALL", 1, pid="5")) == []
    assert g.feed(rec("PATH", 1, item="0")) == []
    [ev] = g.feed(rec("EOE", 1))
    assert ev.complete and ev.serial == 1 and ev.timestamp_ns == T0
    assert [x.type for x in ev.records] == ["SYSCALL", "PATH"]
    assert g.inflight == 0
    assert g.counters["ended_eoe"] == 1


def test_interleaved_log_without_eoe_groups_by_serial() -> None:
    # As auditd 3.0 writes concurrent events: records of 250 and 251 interleaved.
    g = Grouper()
    out = feed_all(g, [
        rec("SYSCALL", 250), rec("EXECVE", 250), rec("SYSCALL", 251), rec("PATH", 250),
        rec("EXECVE", 251), rec("PROCTITLE", 250), rec("PROCTITLE", 251),
    ])
    assert out == []          # within the grace: nothing ended yet
    out = g.flush_all()
    assert [(e.serial, len(e.records), e.complete) for e in out] == [(250, 4, False),
                                                                     (251, 3, False)]
    assert g.counters["out_of_order"] == 0


def test_newer_serial_past_grace_ends_event() -> None:
    g = Grouper()
    g.feed(rec("SYSCALL", 10))
    assert feed_all(g, [rec("SYSCALL", 10 + s) for s in range(1, GRACE_SERIALS + 1)]) == []
    [ev] = g.feed(rec("SYSCALL", 11 + GRACE_SERIALS))
    assert ev.serial == 10 and not ev.complete
    # By event time: one newer record 2 s later is enough.
    g2 = Grouper()
    g2.feed(rec("SYSCALL", 1))
    [ev] = g2.feed(rec("SYSCALL", 2, t=T0 + GRACE_NS))
    assert ev.serial == 1
    assert g2.counters["ended_grace"] == 1


def test_flush_expires_by_time_only_old_events() -> None:
    g = Grouper()
    g.feed(rec("SYSCALL", 1, t=T0))
    g.feed(rec("SYSCALL", 2, t=T0 + 1_000 * MS))   # newer, but within the grace
    assert g.flush(T0 + INFLIGHT_TIMEOUT_NS) == []
    [ev] = g.flush(T0 + INFLIGHT_TIMEOUT_NS + 1)
    assert ev.serial == 1
    assert g.inflight == 1
    assert g.counters["ended_timeout"] == 1
    assert [e.serial for e in g.flush_all()] == [2]
    assert g.counters["ended_eof"] == 1


def test_bounded_inflight_evicts_oldest() -> None:
    g = Grouper(max_inflight=3)
    out = feed_all(g, [rec("SYSCALL", s) for s in (1, 2, 3)])
    assert out == []
    [ev] = g.feed(rec("SYSCALL", 4))
    assert ev.serial == 1
    assert g.counters["evicted"] == 1
    assert g.inflight == 3


def test_duplicates_counted_not_emitted_twice() -> None:
    g = Grouper()
    lines = [rec("SYSCALL", 1), rec("PATH", 1), rec("EOE", 1)]
    assert len(feed_all(g, lines)) == 1
    assert feed_all(g, lines) == []                 # the same event again (file read twice)
    assert g.counters["duplicates"] == 3
    g.feed(rec("SYSCALL", 2))
    g.feed(rec("SYSCALL", 2))                       # same record twice inside one event
    [ev] = g.flush_all()
    assert len(ev.records) == 1
    assert g.counters["duplicates"] == 4


def test_serial_gaps_and_out_of_order_fill() -> None:
    g = Grouper()
    feed_all(g, [rec("SYSCALL", 1), rec("EOE", 1), rec("SYSCALL", 5), rec("EOE", 5)])
    assert g.counters["serial_gaps"] == 1
    assert g.counters["missing_serials"] == 3
    feed_all(g, [rec("SYSCALL", 3), rec("EOE", 3)])  # late, not lost
    assert g.counters["out_of_order"] == 1
    assert g.counters["missing_serials"] == 2
    feed_all(g, [rec("SYSCALL", 2), rec("SYSCALL", 4)])
    assert g.counters["missing_serials"] == 0


def test_daemon_records_do_not_count_as_gaps() -> None:
    g = Grouper()
    out = feed_all(g, [rec("SYSCALL", 100), rec("EOE", 100), rec("DAEMON_START", 7),
                       rec("SYSCALL", 101), rec("EOE", 101)])
    assert [e.serial for e in out] == [100, 7, 101]   # the daemon record stands alone
    assert g.counters["serial_gaps"] == 0
    assert g.counters["out_of_order"] == 0


def test_serial_reset_after_reboot() -> None:
    g = Grouper()
    feed_all(g, [rec("SYSCALL", 500_000), rec("EOE", 500_000),
                 rec("SYSCALL", 3, t=T0 + 60_000 * MS), rec("EOE", 3, t=T0 + 60_000 * MS)])
    assert g.counters["serial_resets"] == 1
    assert g.counters["out_of_order"] == 0
    g.feed(rec("SYSCALL", 4, t=T0 + 60_001 * MS))
    assert g.counters["serial_gaps"] == 0


def test_same_serial_different_time_are_different_events() -> None:
    g = Grouper()
    out = feed_all(g, [rec("SYSCALL", 9, t=T0), rec("EOE", 9, t=T0),
                       rec("SYSCALL", 9, t=T0 + MS), rec("EOE", 9, t=T0 + MS)])
    assert len(out) == 2
