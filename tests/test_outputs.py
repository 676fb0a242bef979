"""Outputs other than syslog: JSON lines file (0600, append, reopen for logrotate), the fan-out,
the builder, and the daemon's log setup."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from loguru import logger

from auditwatch.config import JsonlOutputConfig, SyslogOutputConfig, parse_output_spec
from auditwatch.errors import OutputError
from auditwatch.events import ExecEvent
from auditwatch.finding import Finding, exec_finding
from auditwatch.logging_setup import setup_logging
from auditwatch.outputs import FanOut, MemoryOutput, Output, build_outputs
from auditwatch.outputs.jsonl import JsonlOutput
from auditwatch.outputs.syslog import SyslogOutput


def finding(seq: int, name: str = "payload") -> Finding:
    ev = ExecEvent(sensor="bpf", timestamp_ns=seq, pid=seq, tgid=seq, ppid=1, uid=0, euid=0,
                   comm="x", exe=f"/memfd:{name} (deleted)", exec_path="/dev/fd/3",
                   argv=(name,), nlink=0, memfd_name=name)
    return exec_finding(ev, "memfd", "h")


def lines(p: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_jsonl_file_0600_append_and_flushed(tmp_path: Path) -> None:
    p = tmp_path / "f.jsonl"
    out = JsonlOutput(str(p))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    out.write(finding(1, "a\nb"))
    assert len(lines(p)) == 1                     # flushed per finding, newline kept inside
    out.close()
    out2 = JsonlOutput(str(p))
    out2.write(finding(2))
    out2.close()
    assert [d["Event"]["hostProcessId"] for d in lines(p)] == [1, 2]   # type: ignore[index]
    assert out2.counters() == {"written": 1, "errors": 0}


def test_jsonl_reopen_after_logrotate(tmp_path: Path) -> None:
    p = tmp_path / "f.jsonl"
    out = JsonlOutput(str(p))
    out.write(finding(1))
    os.rename(p, tmp_path / "f.jsonl.1")           # logrotate moves it away
    out.write(finding(2))                          # still goes to the moved file
    out.reopen()                                   # SIGHUP
    out.write(finding(3))
    out.close()
    out.close()                                    # twice is fine
    assert len(lines(tmp_path / "f.jsonl.1")) == 2
    assert len(lines(p)) == 1 and stat.S_IMODE(p.stat().st_mode) == 0o600


def test_jsonl_unopenable(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot open"):
        JsonlOutput(str(tmp_path / "missing-dir" / "f.jsonl"))


def test_jsonl_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    out = JsonlOutput("-")
    out.write(finding(7))
    out.reopen()
    out.close()
    assert json.loads(capsys.readouterr().out)["Event"]["hostProcessId"] == 7


class Broken(MemoryOutput):
    def write(self, finding: Finding) -> None:
        raise RuntimeError("bug")


def test_fanout_isolates_a_failing_output() -> None:
    a, b = MemoryOutput("a"), MemoryOutput("b")
    fan = FanOut([a, Broken("broken"), b])
    fan.write(finding(1))
    assert len(a.findings) == len(b.findings) == 1
    fan.reopen()
    fan.close()
    assert a.reopened == 1 and a.closed and b.closed
    assert fan.counters()["fanout.errors"] == 1 and fan.counters()["a.written"] == 1
    assert isinstance(a, Output)


def test_build_outputs(tmp_path: Path) -> None:
    fan = build_outputs([JsonlOutputConfig(str(tmp_path / "x.jsonl")),
                         parse_output_spec("syslog+udp://127.0.0.1:9")], hostname="h")
    try:
        assert [type(o) for o in fan.outputs] == [JsonlOutput, SyslogOutput]
        assert [o.name for o in fan.outputs] == [f"jsonl:{tmp_path}/x.jsonl",
                                                 "syslog+udp://127.0.0.1:9"]
    finally:
        fan.close()


def test_build_outputs_closes_opened_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OutputError):
        build_outputs([SyslogOutputConfig(address="udp://127.0.0.1:9"),
                       JsonlOutputConfig(str(tmp_path / "no" / "x.jsonl"))])


def test_setup_logging_levels() -> None:
    sink = io.StringIO()
    setup_logging("WARNING", sink=sink)
    try:
        logger.info("hidden")
        logger.warning("shown {!r}", "evil\x1b[31m")
        text = sink.getvalue()
        assert "hidden" not in text and "shown 'evil\\x1b[31m'" in text
        with pytest.raises(ValueError):
            setup_logging("LOUD")
    finally:
        logger.remove()
        logger.add(sys.stderr)          # loguru's default, as the other tests expect
