"""Syslog output: RFC 5424 messages to /dev/log (unix datagram), UDP, or TCP (RFC 6587 octet
counting), delivered by a background sender so that a slow or absent receiver never blocks
detection.

Why a thread (the one place auditwatch uses one): connecting (DNS, TCP handshake to a dead host),
a full TCP window, a full /dev/log queue are all waits whose length a remote party decides. Driving
non-blocking sockets from the daemon's loop would work for send, but not for name resolution or
``connect`` timeouts, and it would tie every output's state machine into the loop. Instead
``write()`` only does ``put_nowait`` of the (immutable) finding into a bounded queue, O(1) and
never waiting; the sender thread formats, connects, sends, and reconnects with exponential backoff.
When the queue is full the finding is dropped and counted (``counters()["dropped"]``,
``FanOut.new_drops()``), and a warning is logged at most every ``DROP_LOG_INTERVAL_S``.

Delivery is at-least-once per connection: a message whose send failed is retried after
reconnecting. On TCP a receiver that closed the connection is noticed before the next send (the
socket reads as EOF), so messages are not written into a dead connection. UDP cannot know: a
refusal (ICMP port unreachable) surfaces on the NEXT send, so the datagram before it is counted as
``lost``; after a failure each datagram is checked for a refusal before the next one goes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import threading
import time
from typing import Final

from loguru import logger

from auditwatch.config import FACILITIES, SyslogAddress, SyslogOutputConfig
from auditwatch.finding import Finding
from auditwatch.outputs.rfc5424 import format_rfc5424

__all__ = ["SyslogOutput", "format_rfc5424", "octet_frame"]

BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 5.0
SEND_TIMEOUT_S: Final = 5.0
CLOSE_FLUSH_S: Final = 2.0
DROP_LOG_INTERVAL_S: Final = 10.0
_POLL_S: Final = 0.2
UDP_PROBE_S: Final = 0.02


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d " % len(message) + message


class SyslogOutput:
    def __init__(self, config: SyslogOutputConfig, hostname: str | None = None,
                 procid: int | None = None) -> None:
        self.name = config.describe()
        self.config = config
        self._target: SyslogAddress = config.target
        self._facility = FACILITIES[config.facility]
        self._hostname = hostname or socket.gethostname()
        self._procid = procid if procid is not None else os.getpid()
        self._queue: queue.Queue[Finding] = queue.Queue(maxsize=config.queue_size)
        self._sock: socket.socket | None = None
        self._closing = threading.Event()
        self._reconnect = threading.Event()
        self._close_deadline = 0.0
        self._closed = False
        # Counters: each is written by one thread only.
        self._dropped = 0            # write(): queue full or output closed
        self._dropped_at_close = 0   # sender: still queued when close() gave up
        self._sent = 0
        self._send_errors = 0
        self._connect_errors = 0
        self._connects = 0
        self._format_errors = 0
        self._udp_lost = 0           # datagrams the receiver refused after we had sent them
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self._thread = threading.Thread(target=self._run, name=f"auditwatch {self.name}",
                                        daemon=True)
        self._thread.start()

    # --- detection-loop side ----------------------------------------------------------------

    def write(self, finding: Finding) -> None:
        if self._closed:
            self._dropped += 1
            return
        try:
            self._queue.put_nowait(finding)
        except queue.Full:
            self._dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
                self._last_drop_log = now
                logger.warning("{}: receiver too slow or absent, queue full ({}): {} findings "
                               "dropped so far", self.name, self.config.queue_size, self._dropped)

    def reopen(self) -> None:
        self._reconnect.set()

    def close(self, timeout: float = CLOSE_FLUSH_S) -> None:
        """Give the sender up to ``timeout`` seconds to deliver what is queued, then stop."""
        if self._closed:
            return
        self._closed = True
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._thread.join(timeout + CONNECT_TIMEOUT_S + 1.0)

    def counters(self) -> dict[str, int]:
        return {
            "queued": self._queue.qsize(),
            "sent": self._sent,
            "dropped": self._dropped + self._dropped_at_close,
            "send_errors": self._send_errors,
            "connect_errors": self._connect_errors,
            "connects": self._connects,
            "format_errors": self._format_errors,
            "lost": self._udp_lost,
        }

    # --- sender thread ----------------------------------------------------------------------

    def _format(self, finding: Finding) -> bytes | None:
        try:
            msg = format_rfc5424(finding, self._facility, self.config.app_name, self._hostname,
                                 self._procid, self.config.max_message_bytes)
        except Exception:
            self._format_errors += 1
            logger.exception("{}: cannot format a finding", self.name)
            return None
        return octet_frame(msg) if self._target.transport == "tcp" else msg

    def _connect(self) -> None:
        t = self._target
        if t.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.connect(t.path)
            except OSError:
                sock.close()
                raise
        elif t.transport == "tcp":
            sock = socket.create_connection((t.host, t.port), timeout=CONNECT_TIMEOUT_S)
            sock.settimeout(SEND_TIMEOUT_S)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        else:
            family, kind, proto, _, addr = socket.getaddrinfo(
                t.host, t.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
            try:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
        self._sock = sock
        self._connects += 1

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _peer_closed(self, sock: socket.socket) -> bool:
        """TCP: the receiver closed (or reset) the connection; receivers never send to us."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            data = sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b""

    def _send(self, data: bytes, probation: bool) -> None:
        sock = self._sock
        assert sock is not None
        if self._target.transport == "tcp":
            if self._peer_closed(sock):
                raise ConnectionResetError("receiver closed the connection")
            sock.sendall(data)
            return
        try:
            sock.send(data)
        except ConnectionRefusedError:
            if self._target.transport == "udp":
                # ICMP port unreachable for an EARLIER datagram: that one is lost, not this one.
                self._udp_lost += 1
            raise
        if probation and self._target.transport == "udp":
            # After a failure, learn whether this datagram was refused before calling it sent
            # (loopback/LAN answer within milliseconds; a silent firewall cannot be detected).
            time.sleep(UDP_PROBE_S)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))

    def _stop_now(self, pending: bytes | None) -> bool:
        if not self._closing.is_set():
            return False
        if time.monotonic() >= self._close_deadline:
            return True
        return pending is None and self._queue.empty()

    def _run(self) -> None:
        pending: bytes | None = None
        backoff = BACKOFF_INITIAL_S
        next_attempt = 0.0
        failures = 0
        while not self._stop_now(pending):
            if pending is None:
                try:
                    finding = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                pending = self._format(finding)
                if pending is None:
                    continue
            if self._reconnect.is_set():
                self._reconnect.clear()
                self._disconnect()
                backoff, next_attempt = BACKOFF_INITIAL_S, 0.0
            if self._sock is None:
                wait = next_attempt - time.monotonic()
                if wait > 0:
                    if self._closing.is_set():
                        break                      # no receiver and closing: give up now
                    self._closing.wait(min(wait, _POLL_S))
                    continue
                try:
                    self._connect()
                except OSError as e:
                    self._connect_errors += 1
                    failures += 1
                    if failures == 1:
                        logger.warning("{}: cannot connect ({}); retrying with backoff",
                                       self.name, e)
                    next_attempt = time.monotonic() + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
            try:
                self._send(pending, probation=failures > 0)
            except OSError as e:
                self._send_errors += 1
                failures += 1
                if failures == 1:
                    logger.warning("{}: send failed ({}); reconnecting with backoff", self.name, e)
                self._disconnect()
                next_attempt = time.monotonic() + (0.0 if failures == 1 else backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self._sent += 1
            pending = None
            if failures:
                logger.info("{}: delivering again after {} failed attempts", self.name, failures)
                failures = 0
                backoff = BACKOFF_INITIAL_S
        self._disconnect()
        self._dropped_at_close += self._queue.qsize() + (pending is not None)
