"""A private ``rsyslogd -n`` on loopback for tests (UDP, TCP, a unix socket), shared by the
syslog output tests and the daemon's end-to-end tests (fixture ``rsyslog`` in conftest.py).

For every message it writes the input it came by, the MSGID and STRUCTURED-DATA as rsyslog's own
RFC 5424 parser read them, and the raw message.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass(frozen=True)
class Received:
    input: str
    msgid: str
    sd: str
    raw: bytes


class Rsyslog:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.udp_port = free_port()
        self.tcp_port = free_port()
        self.sock = workdir / "log.sock"
        self.out = workdir / "received.log"
        self.conf = workdir / "rsyslog.conf"
        self.pidfile = workdir / "rsyslogd.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(f"""
global(workDirectory="{workdir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="raw")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="raw")
input(type="imuxsock" socket="{self.sock}" useSpecialParser="off" ruleset="raw")
template(name="raw" type="string"
         string="%inputname%\\t%msgid%\\t%structured-data%\\t%rawmsg%\\n")
ruleset(name="raw") {{ action(type="omfile" file="{self.out}" template="raw") }}
""")

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        log = open(self.dir / "rsyslogd.stderr", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i",
                                      str(self.pidfile)], stdout=log, stderr=log)
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        probe = b"<13>1 - probe probe - probe -"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.stderr()
                try:
                    socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.2).close()
                    u.sendto(probe, ("127.0.0.1", self.udp_port))
                    seen = self.records(probes=True)
                    if self.sock.exists() and any(r.msgid == "probe" for r in seen):
                        return
                except OSError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"rsyslogd did not come up: {self.stderr()}")

    def stderr(self) -> str:
        p = self.dir / "rsyslogd.stderr"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def records(self, probes: bool = False) -> list[Received]:
        if not self.out.exists():
            return []
        result = []
        for line in self.out.read_bytes().split(b"\n"):
            if not line:
                continue
            inp, msgid, sd, raw = line.split(b"\t", 3)
            result.append(Received(inp.decode(), msgid.decode(), sd.decode(), raw))
        return [r for r in result if probes or r.msgid != "probe"]

    def wait_for(self, pred: object, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if pred(recs) or time.monotonic() > deadline:  # type: ignore[operator]
                return recs
            time.sleep(0.05)
