"""Live audit sensor: a NETLINK_AUDIT socket on the read-only multicast group, beside auditd.

Group 1 (AUDIT_NLGRP_READLOG) receives every record the kernel emits (needs CAP_AUDIT_READ) while
auditd keeps its unicast connection. Each netlink message is one record: the type is
``nlmsg_type``, the payload ``audit(SEC.MSEC:SERIAL): body``.

What the kernel sends, measured on Linux 6.18 (see also auditwatch.audit.grouper):
- every syscall event ends with EOE; serials have no gaps in normal operation, so a gap means
  records were dropped for this listener (the socket overflowed: ENOBUFS on recv);
- ``auditctl -D`` / ``-d``: one CONFIG_CHANGE per rule, ``op=remove_rule key="..." list=4``;
- ``auditctl -e 0``: CONFIG_CHANGE ``op=set audit_enabled=0 old=1``, then silence: no records and
  no serials are consumed until ``-e 1``, whose own CONFIG_CHANGE is not delivered either;
- auditd stopping: CONFIG_CHANGE ``op=set audit_pid=0``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Collection
from typing import Final

from auditwatch.audit.execs import ExecExtractor
from auditwatch.audit.grouper import INFLIGHT_TIMEOUT_NS, AuditEvent, Grouper
from auditwatch.audit.records import AuditParseError, AuditRecord, parse_netlink, text, untrusted
from auditwatch.errors import SensorError, SensorUnavailable
from auditwatch.events import ExecEvent, Sensor
from auditwatch.finding import HealthInfo
from auditwatch.hostinfo import memfd_devices

NETLINK_AUDIT: Final = 9
AUDIT_NLGRP_READLOG: Final = 1
SO_RCVBUFFORCE: Final = 33
RCVBUF_BYTES: Final = 64 << 20
RECV_BYTES: Final = 1 << 20        # one recv; a record is at most ~9 KB (MAX_AUDIT_MESSAGE_LENGTH)
MAX_RECVS_PER_READ: Final = 256    # bound the work of one read() so the loop stays responsive
# How far behind the kernel's own exec the multicast delivery may run when the socket is empty
# (kauditd queues records): the watermark stays this much behind the loop's clock.
DELIVERY_LAG_NS: Final = 100_000_000
_NLMSGHDR = struct.Struct("=IHHII")
_FIRST_EVENT_TYPE: Final = 1100    # 1000-1099 are audit control messages, not records
_RULE_REMOVED_OPS: Final = frozenset({"remove_rule", "del_rule", "remove rule", "delete rule"})


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    """A netlink datagram -> [(nlmsg_type, payload)]; stops at a malformed header."""
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        out.append((mtype, data[off + _NLMSGHDR.size: off + length]))
        off += (length + 3) & ~3
    return out


def tamper_kind(record: AuditRecord) -> tuple[str, str] | None:
    """(health kind, message) for a CONFIG_CHANGE that weakens auditing, else ``None``."""
    if record.type != "CONFIG_CHANGE":
        return None
    op = text(record.raw("op")) or ""
    if op in _RULE_REMOVED_OPS:
        key = untrusted(record.raw("key")) or "(no key)"
        return "audit_rules_removed", f"audit rule removed: key={key}"
    if op == "set" or record.raw("audit_enabled") is not None:
        if text(record.raw("audit_enabled")) == "0":
            return "audit_disabled", "audit was disabled (audit_enabled=0): no records until -e 1"
        if text(record.raw("audit_pid")) == "0":
            return "audit_daemon_stopped", "auditd unregistered (audit_pid=0)"
    return None


class AuditNetlinkSource:
    name: Sensor = "audit"

    def __init__(self, memfd_devs: Collection[int] | None = None, *, all_execs: bool = False,
                 rcvbuf: int = RCVBUF_BYTES,
                 event_timeout_ns: int = INFLIGHT_TIMEOUT_NS) -> None:
        self._memfd_devs = memfd_devs
        self._all_execs = all_execs
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self.grouper = Grouper(timeout_ns=event_timeout_ns)
        self.extractor = ExecExtractor(all_execs=all_execs)
        self._health: list[HealthInfo] = []
        self._backlogged = False
        self._reported_missing = 0
        self._counts = {"records": 0, "parse_errors": 0, "enobufs": 0, "events_emitted": 0,
                        "tamper": 0}

    # --- Source protocol ----------------------------------------------------------------------

    def load(self) -> None:
        if self._sock is not None:
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as e:
            raise SensorUnavailable(f"audit: cannot open a NETLINK_AUDIT socket: {e}") from e
        try:
            self._set_rcvbuf(sock)
            try:
                sock.bind((0, AUDIT_NLGRP_READLOG))
            except PermissionError as e:
                raise SensorUnavailable(
                    "audit: needs CAP_AUDIT_READ (run as root) to join the audit multicast group"
                ) from e
            except OSError as e:
                raise SensorUnavailable(
                    f"audit: cannot join the audit multicast group ({e.strerror}); "
                    "is this a new network namespace or a kernel without audit?") from e
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        devs = memfd_devices() if self._memfd_devs is None else frozenset(self._memfd_devs)
        self.extractor = ExecExtractor(devs, all_execs=self._all_execs)
        self._sock = sock

    def fileno(self) -> int:
        if self._sock is None:
            raise SensorError("audit: fileno() before load()")
        return self._sock.fileno()

    def read(self) -> list[ExecEvent]:
        if self._sock is None:
            return []
        out: list[ExecEvent] = []
        removed: list[str] = []
        self._backlogged = True
        for _ in range(MAX_RECVS_PER_READ):
            try:
                data = self._sock.recv(RECV_BYTES)
            except BlockingIOError:
                self._backlogged = False
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._on_enobufs()
                    continue
                raise SensorError(f"audit: netlink recv failed: {e}") from e
            for mtype, payload in split_messages(data):
                self._on_message(mtype, payload, out, removed)
        if removed:
            self._health.append(HealthInfo(
                kind="audit_rules_removed", sensor="audit", count=len(removed),
                message=f"{len(removed)} audit rule(s) removed: " + ", ".join(removed[:20])))
        self._check_gaps()
        return out

    def tick(self, now_ns: int) -> list[ExecEvent]:
        out = self._extract(self.grouper.flush(now_ns))
        self._check_gaps()
        return out

    def watermark_ns(self, select_start_ns: int) -> int | None:
        """Every exec before this wall time has been handed out (or is in the grouper, waiting
        for its end): lets correlation stop waiting for audit's view of an exec it missed.
        None while a backlog remains on the socket."""
        if self._sock is None or self._backlogged:
            return None
        mark = select_start_ns - DELIVERY_LAG_NS
        oldest = self.grouper.oldest_inflight_ns()
        return mark if oldest is None else min(mark, oldest - 1)

    def take_health(self) -> list[HealthInfo]:
        taken, self._health = self._health, []
        return taken

    def counters(self) -> dict[str, int]:
        g = self.grouper.counters
        return {
            **self._counts,
            "execs_seen": self.extractor.counters["execs_seen"],
            "lost": g["missing_serials"],
            "serial_gaps": g["serial_gaps"],
            "out_of_order": g["out_of_order"],
            "duplicates": g["duplicates"],
            "evicted": g["evicted"],
            "inflight": self.grouper.inflight,
            **{k: v for k, v in self.extractor.counters.items() if k.startswith("skipped_")},
        }

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # --- internals ----------------------------------------------------------------------------

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf)
        except OSError:
            # Without CAP_NET_ADMIN: capped by rmem_max. The default still works; drops are counted.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)

    def _on_enobufs(self) -> None:
        self._counts["enobufs"] += 1
        self._health.append(HealthInfo(
            kind="audit_records_lost", sensor="audit",
            message="audit netlink socket overflowed (ENOBUFS): records were dropped"))

    def _on_message(self, mtype: int, payload: bytes, out: list[ExecEvent],
                    removed: list[str]) -> None:
        if mtype < _FIRST_EVENT_TYPE:  # netlink control and audit request/reply messages
            return
        try:
            record = parse_netlink(mtype, payload)
        except (AuditParseError, ValueError, UnicodeError):
            self._counts["parse_errors"] += 1
            return
        self._counts["records"] += 1
        tamper = tamper_kind(record)
        if tamper is not None:
            self._counts["tamper"] += 1
            kind, message = tamper
            if kind == "audit_rules_removed":
                removed.append(message.rpartition("key=")[2])
            else:
                self._health.append(HealthInfo(kind=kind, message=message, sensor="audit",
                                               timestamp_ns=record.timestamp_ns))
        out.extend(self._extract(self.grouper.feed(record)))

    def _extract(self, events: list[AuditEvent]) -> list[ExecEvent]:
        out = []
        for ev in events:
            result = self.extractor.extract(ev)
            if result is not None:
                out.append(result)
        self._counts["events_emitted"] += len(out)
        return out

    def _check_gaps(self) -> None:
        missing = self.grouper.counters["missing_serials"]
        if missing > self._reported_missing:
            self._health.append(HealthInfo(
                kind="audit_records_lost", sensor="audit", count=missing - self._reported_missing,
                message=f"{missing - self._reported_missing} audit event serial(s) never arrived"))
        self._reported_missing = max(self._reported_missing, missing)

