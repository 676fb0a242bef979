"""Correlation of BPF and audit views of one exec: tables of hand-made event sequences."""

from __future__ import annotations

from dataclasses import replace

import pytest

from auditwatch import trc105
from auditwatch.correlate import MAX_PER_TGID, Correlated, Correlator, merge, same_exec
from auditwatch.events import AuditContext, ExecEvent, FdTarget

MS = 1_000_000
WINDOW = 300 * MS
T0 = 1_700_000_000_123_456_789  # BPF's wall-clock stamp (ns)
BOTH = frozenset({"bpf", "audit"})


def bpf(tgid: int = 4242, ts: int = T0, inode: int = 77, argv: tuple[str, ...] = ("x", "-a"),
        **kw: object) -> ExecEvent:
    base = ExecEvent(
        sensor="bpf", timestamp_ns=ts, pid=tgid, tgid=tgid, ppid=100, uid=1000, euid=1000,
        comm="3", exe="/memfd:x (deleted)", exec_path="/dev/fd/3", argv=argv, inode=inode,
        dev=1, nlink=0, memfd_name="x", sb_magic=0x01021994, ns_pid=7, ns_ppid=1,
        mnt_ns=4026532001, pid_ns=4026532002, cgroup="/user.slice", monotonic_ns=5_000,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def audit(tgid: int = 4242, ts: int = T0, inode: int = 77,
          argv: tuple[str, ...] = ("x", "-a"), serial: int = 900, **kw: object) -> ExecEvent:
    """Audit's stamp: taken at syscall entry (a few ms earlier), millisecond resolution."""
    ms_ts = (ts - 3 * MS) // MS * MS
    base = ExecEvent(
        sensor="audit", timestamp_ns=ms_ts, pid=tgid, tgid=tgid, ppid=100, uid=1000, euid=1000,
        comm="3", exe="/memfd:x (deleted)", exec_path="", argv=argv, inode=inode, dev=1,
        audit=AuditContext(serial=serial, auid=1000, ses=3, tty="pts0", syscall="execveat",
                           cwd="/home/u"),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def run(events: list[ExecEvent], *, flush_at: int | None = None,
        c: Correlator | None = None) -> tuple[list[Correlated], Correlator]:
    c = c or Correlator(WINDOW, BOTH, 1000)
    out: list[Correlated] = []
    for e in events:
        out += c.feed(e)
    if flush_at is not None:  # the first flush starts the windows, the next ends every wait
        out += c.flush(flush_at)
        out += c.flush(flush_at + c.hold_ns)
    return out, c


# --- joining ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["bpf_first", "audit_first"])
def test_joined_within_window_in_either_order(order: str) -> None:
    b, a = bpf(), audit()
    events = [b, a] if order == "bpf_first" else [a, b]
    c = Correlator(WINDOW, BOTH, 1000)
    assert c.feed(events[0]) == []
    out = c.feed(events[1])
    assert len(out) == 1
    r = out[0]
    assert r.sensors == ("bpf", "audit") and r.missing == () and r.reason == "complete"
    assert r.events == (b, a) and r.joined
    assert len(c) == 0 and c.flush(T0 + 10 * WINDOW) == []
    assert c.counters()["joined"] == 1


@pytest.mark.parametrize("alone,missing", [("bpf", "audit"), ("audit", "bpf")])
def test_one_sensor_only_is_emitted_after_the_window(alone: str, missing: str) -> None:
    e = bpf() if alone == "bpf" else audit()
    out, c = run([e])
    assert out == []
    c.advance(missing, e.timestamp_ns + WINDOW + MS)  # the other sensor is past this exec
    t1 = e.timestamp_ns + MS                 # the first flush after it came starts its window
    assert c.flush(t1) == []
    assert c.flush(t1 + WINDOW - 1) == []
    out = c.flush(t1 + WINDOW)
    assert len(out) == 1
    assert out[0].sensors == (alone,) and out[0].missing == (missing,)
    assert out[0].reason == "window" and out[0].merged == e
    assert c.counters()["single_sensor"] == 1 and c.counters()["incomplete"] == 1


def test_a_backlog_read_late_still_gets_its_window() -> None:
    """The loop drained a burst seconds after it happened: the window counts from arrival."""
    c = Correlator(WINDOW, BOTH, 1000)
    later = T0 + 5_000_000_000
    assert c.feed(bpf()) == []
    assert c.flush(later) == []
    assert c.flush(later + WINDOW - 1) == []
    (r,) = c.feed(audit())
    assert r.sensors == ("bpf", "audit")
    c.feed(bpf(tgid=9))
    c.advance("audit", later)
    assert c.flush(later + WINDOW) == []
    (alone,) = c.flush(later + 2 * WINDOW)
    assert alone.missing == ("audit",) and alone.merged.tgid == 9


def test_a_sensor_behind_is_waited_for_up_to_the_hold() -> None:
    c = Correlator(WINDOW, BOTH, 1000, hold_ns=5 * WINDOW)
    c.feed(audit(tgid=1, ts=T0 - 50 * MS))   # audit delivered up to here: behind this exec
    c.feed(bpf())
    assert c.flush(T0) == [] and c.flush(T0 + WINDOW) == []
    assert c.flush(T0 + 5 * WINDOW - 1) == []
    rest = c.flush(T0 + 5 * WINDOW)
    assert [(r.merged.tgid, r.missing) for r in rest] == [(1, ("bpf",)), (4242, ("audit",))]


def test_a_sensor_catching_up_past_the_exec_ends_the_wait() -> None:
    c = Correlator(WINDOW, BOTH, 1000)
    c.feed(bpf())
    assert c.flush(T0) == [] and c.flush(T0 + WINDOW) == []
    assert c.feed(audit(tgid=77, ts=T0 + 2 * WINDOW)) == []   # audit moved on without it
    (r,) = c.flush(T0 + WINDOW + MS)
    assert r.merged.tgid == 4242 and r.missing == ("audit",)


# Two execs of one tgid within the window: a memfd program exec'ing another memfd.
B1, B2 = bpf(inode=77, argv=("x", "first")), bpf(ts=T0 + 2 * MS, inode=78, argv=("y", "second"))
A1 = audit(inode=77, argv=("x", "first"), serial=900)
A2 = audit(ts=T0 + 2 * MS, inode=78, argv=("y", "second"), serial=901)
# The same memfd exec'ing itself again: identical evidence, only time and order tell them apart.
S1, S2 = bpf(), bpf(ts=T0 + 1 * MS)
R1, R2 = audit(serial=900), audit(ts=T0 + 1 * MS, serial=901)


@pytest.mark.parametrize("events,pairs", [
    ([B1, B2, A1, A2], [(B1, A1), (B2, A2)]),
    ([A1, A2, B1, B2], [(B1, A1), (B2, A2)]),
    ([B1, A1, B2, A2], [(B1, A1), (B2, A2)]),
    ([A1, B1, A2, B2], [(B1, A1), (B2, A2)]),
    ([B2, B1, A1, A2], [(B1, A1), (B2, A2)]),   # evidence beats order when it differs
    ([S1, S2, R1, R2], [(S1, R1), (S2, R2)]),   # identical evidence: per-sensor order
    ([R1, S1, R2, S2], [(S1, R1), (S2, R2)]),
], ids=["bb-aa", "aa-bb", "ba-ba", "ab-ab", "reordered-bpf", "self-reexec", "self-ab-ab"])
def test_same_tgid_twice_is_two_execs(events: list[ExecEvent],
                                      pairs: list[tuple[ExecEvent, ExecEvent]]) -> None:
    out, c = run(events, flush_at=T0 + 10 * WINDOW)
    assert len(out) == 2 and {r.events for r in out} == set(pairs)
    assert all(r.missing == () for r in out)
    assert c.counters()["joined"] == 2 and c.counters()["duplicates"] == 0


def test_lost_audit_event_of_first_exec_joins_the_right_one() -> None:
    out, _ = run([B1, B2, A2], flush_at=T0 + 10 * WINDOW)
    assert [(r.events, r.missing) for r in out] == [((B2, A2), ()), ((B1,), ("audit",))]


@pytest.mark.parametrize("other,joins", [
    (audit(), True),
    (audit(tgid=4243), False),                               # another process
    (audit(ts=T0 + WINDOW + 5 * MS), False),                 # too far apart in time
    (audit(inode=78), False),                                # another file
    (audit(dev=2), False),
    (audit(argv=("x", "-b")), False),
    (audit(inode=None, dev=None), True),                     # unknown is no contradiction
    (audit(exec_path="/dev/fd/3"), True),
    (audit(exec_path="/proc/self/fd/3"), True),              # same fd, other spelling
    (audit(exec_path="/usr/bin/x"), False),
    (audit(memfd_name="other"), False),
    (audit(memfd_name="xyz"), True),                         # BPF read a shortened name
], ids=["match", "tgid", "time", "inode", "dev", "argv", "unknown-inode", "fd-path",
        "proc-fd-path", "path", "memfd-name", "memfd-name-prefix"])
def test_same_exec_evidence(other: ExecEvent, joins: bool) -> None:
    assert same_exec(bpf(), other, WINDOW) is joins
    out, _ = run([bpf(), other], flush_at=T0 + 10 * WINDOW)
    assert len(out) == (1 if joins else 2)


@pytest.mark.parametrize("bpf_argv,audit_argv,joins", [
    (("x", "aaaa"), ("x", "aaaaaaaa", "b"), True),     # BPF cut the last string short
    (("x",), ("x", "a", "b"), True),
    (("x", "zz"), ("x", "aaaaaaaa", "b"), False),
    ((), ("x", "a"), True),
])
def test_truncated_bpf_argv_is_a_prefix(bpf_argv: tuple[str, ...], audit_argv: tuple[str, ...],
                                        joins: bool) -> None:
    b = bpf(argv=bpf_argv, argv_truncated=bool(bpf_argv))
    assert same_exec(b, audit(argv=audit_argv), WINDOW) is joins


# --- duplicates and late arrivals ------------------------------------------------------------

@pytest.mark.parametrize("events,emitted,duplicates", [
    ([bpf(), bpf()], 1, 1),                          # re-delivered while pending
    ([bpf(), audit(), bpf()], 1, 1),                 # after the exec is complete
    ([bpf(), audit(), audit()], 1, 1),
    ([audit(), audit(ts=T0 + MS), bpf()], 1, 1),     # same serial, other stamp: a re-delivery
    ([bpf(), audit(), bpf(ts=T0 + MS), audit(ts=T0 + MS, serial=901)], 2, 0),  # two execs
])
def test_duplicates_are_counted_not_emitted(events: list[ExecEvent], emitted: int,
                                            duplicates: int) -> None:
    out, c = run(events, flush_at=T0 + 10 * WINDOW)
    assert len(out) == emitted
    assert c.counters()["duplicates"] == duplicates


def test_late_partner_after_the_window_is_not_emitted_again() -> None:
    c = Correlator(WINDOW, BOTH, 1000)
    assert c.feed(bpf()) == []
    c.advance("audit", T0 + 2 * WINDOW)
    assert c.flush(T0) == []
    (first,) = c.flush(T0 + WINDOW)
    assert first.missing == ("audit",)
    assert c.feed(audit()) == []
    assert c.feed(audit()) == []            # and its re-delivery is a duplicate
    assert c.flush(T0 + 3 * WINDOW) == []
    assert c.counters()["late"] == 1 and c.counters()["duplicates"] == 1


def test_emitted_execs_are_forgotten_after_the_retention() -> None:
    c = Correlator(WINDOW, BOTH, 1000, done_ns=2 * WINDOW)
    c.feed(bpf())
    c.feed(audit())
    c.flush(T0 + 3 * WINDOW)
    assert c.remembered == 0


# --- live sensors ----------------------------------------------------------------------------

def test_one_live_sensor_emits_at_once() -> None:
    c = Correlator(WINDOW, frozenset({"audit"}), 1000)
    (r,) = c.feed(audit())
    assert r.sensors == ("audit",) and r.missing == () and r.reason == "complete"
    assert len(c) == 0


def test_sweep_events_pass_through() -> None:
    e = replace(bpf(), sensor="sweep", sweep=True)
    (r,) = Correlator(WINDOW, BOTH, 1000).feed(e)
    assert r.reason == "passthrough" and r.sensors == ("sweep",) and r.missing == ()


def test_a_sensor_going_away_completes_waiting_execs() -> None:
    c = Correlator(WINDOW, BOTH, 1000)
    c.feed(bpf())
    c.feed(audit(tgid=5))
    (r,) = c.set_live_sensors(frozenset({"bpf"}))
    assert r.sensors == ("bpf",) and r.missing == ()
    (rest,) = c.flush_all()
    assert rest.sensors == ("audit",) and rest.missing == ("bpf",) and rest.reason == "flush"


# --- bounded memory --------------------------------------------------------------------------

def test_flood_keeps_memory_bounded() -> None:
    c = Correlator(WINDOW, BOTH, max_pending=1000)
    emitted = 0
    for i in range(100_000):
        emitted += len(c.feed(bpf(tgid=1000 + i % 30_000, ts=T0 + i * 1000, inode=i)))
        assert len(c) <= 1000
    assert c.remembered <= 1000
    assert len(c._by_tgid) <= 2000
    counters = c.counters()
    assert counters["evicted"] == 100_000 - 1000 == emitted
    assert c.flush(T0 + 10**12) == []
    assert len(c.flush(T0 + 10**12 + c.hold_ns)) == 1000
    assert len(c) == 0


def test_one_process_exec_looping_stays_cheap_and_bounded() -> None:
    c = Correlator(WINDOW, BOTH, max_pending=1000)
    out: list[Correlated] = []
    for i in range(20_000):
        out += c.feed(bpf(ts=T0 + i * 1000, inode=i))
        assert len(c._by_tgid[4242]) <= MAX_PER_TGID
    out += c.flush_all()
    assert len(out) == 20_000
    assert len(c) == 0


def test_evicted_exec_is_emitted_with_what_arrived() -> None:
    c = Correlator(WINDOW, BOTH, max_pending=2)
    c.feed(bpf(tgid=1))
    c.feed(bpf(tgid=2))
    (r,) = c.feed(bpf(tgid=3))
    assert r.reason == "evicted" and r.merged.tgid == 1 and r.missing == ("audit",)
    assert c.feed(audit(tgid=1)) == []      # its partner, later: counted, not emitted twice
    assert c.counters()["late"] == 1


# --- merged evidence -------------------------------------------------------------------------

def test_merged_takes_each_field_from_the_sensor_that_knows_it() -> None:
    b = bpf(argv=("x", "aaaa"), argv_truncated=True,
            fd_target=FdTarget(path="/dev/fd/3", nlink=0))
    a = audit(argv=("x", "aaaaaaaa", "b"), ppid=None, comm="",
              fd_target=FdTarget(path="", inode=55, dev=1))
    (r,) = run([a, b])[0]
    m = r.merged
    assert m.sensor == "bpf" and r.sensors == ("bpf", "audit")
    assert m.timestamp_ns == b.timestamp_ns
    # BPF's: nlink, memfd name, superblock, namespaces, cgroup, bprm filename
    assert (m.nlink, m.memfd_name, m.sb_magic) == (0, "x", 0x01021994)
    assert (m.ns_pid, m.ns_ppid, m.mnt_ns, m.pid_ns, m.cgroup) == (
        7, 1, 4026532001, 4026532002, "/user.slice")
    assert m.exec_path == "/dev/fd/3" and m.monotonic_ns == 5_000
    # audit's: its context and the full argv
    assert m.audit == a.audit
    assert m.argv == ("x", "aaaaaaaa", "b") and not m.argv_truncated
    # known by one only: taken from it
    assert m.ppid == 100 and m.comm == "3"
    assert m.fd_target == FdTarget(path="/dev/fd/3", inode=55, dev=1, nlink=0)
    assert trc105.detect(m) == "memfd"


@pytest.mark.parametrize("b,a,field,expected", [
    (bpf(argv=("x", "a")), audit(argv=()), "argv", ("x", "a")),        # audit lacks argv
    (bpf(exec_path=""), audit(exec_path="/proc/self/fd/3"), "exec_path", "/proc/self/fd/3"),
    (bpf(uid=None), audit(uid=33), "uid", 33),
    (bpf(inode=None, dev=None), audit(), "inode", 77),
    (bpf(nlink=0), audit(nlink=None), "nlink", 0),                     # 0 is known, not missing
    (bpf(), audit(exe="/memfd:x (deleted)"), "exe", "/memfd:x (deleted)"),
])
def test_merge_fallbacks(b: ExecEvent, a: ExecEvent, field: str, expected: object) -> None:
    assert getattr(merge({"bpf": b, "audit": a}), field) == expected


@pytest.mark.parametrize(("bpf_parent", "audit_parent", "expected"), [
    ("/usr/bin/python3.11", "/usr/bin/runc", "/usr/bin/python3.11"),   # the kernel's, at exec
    (None, "/usr/bin/runc", "/usr/bin/runc"),                          # BPF could not read it
    ("/memfd:x (deleted)", None, "/memfd:x (deleted)"),
])
def test_merge_prefers_the_parent_exe_bpf_read(bpf_parent: str | None, audit_parent: str | None,
                                               expected: str) -> None:
    """Audit's parent_exe is /proc/PPID/exe read on arrival: a parent that exec'd runc since
    would pass for runc (and for the default runc allow-list entry)."""
    b, a = bpf(parent_exe=bpf_parent), audit(parent_exe=audit_parent)
    assert merge({"bpf": b, "audit": a}).parent_exe == expected
    assert merge({"audit": a, "bpf": b}).parent_exe == expected
    (r,) = run([a, b])[0]
    assert r.merged.parent_exe == expected


def test_merge_of_unlinked_exec_detects_it() -> None:
    b = bpf(exe="/tmp/payload (deleted)", memfd_name=None, sb_magic=0xEF53, nlink=0,
            exec_path="/dev/fd/3")
    a = audit(exe="/tmp/payload (deleted)")
    (r,) = run([b, a])[0]
    assert trc105.detect(r.merged) == "unlinked"
    assert r.merged.audit is not None and r.merged.audit.syscall == "execveat"


def test_a_sensor_marked_blind_but_delivering_is_deduplicated() -> None:
    """Audit marked blind (rules removed) delivers again before the daemon notices: its event
    of an exec BPF already reported is late, not a second finding; arriving first, it is
    joined with BPF's instead of passing through."""
    c = Correlator(WINDOW, frozenset({"bpf"}), 1000)
    (r,) = c.feed(bpf())
    assert r.sensors == ("bpf",) and r.missing == ()
    assert c.feed(audit()) == []
    assert c.counters()["late"] == 1 and c.counters()["passthrough"] == 0

    c = Correlator(WINDOW, frozenset({"bpf"}), 1000)
    assert c.feed(audit()) == []              # waits for the live sensor
    (r,) = c.feed(bpf())
    assert r.sensors == ("bpf", "audit") and r.missing == () and r.reason == "complete"
