"""Run the real ``auditwatch`` daemon as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

READY_MARK = "auditwatch running"


class Daemon:
    """``auditwatch run`` writing JSON lines to a file; stderr collected for assertions."""

    def __init__(self, tmp: Path, sensors: Sequence[str] | None, *extra: str,
                 config_jsonl: Path | None = None) -> None:
        """``config_jsonl``: the outputs come from ``--config`` and one of them is this JSON
        lines file (no ``--output`` given, it would replace the config's outputs)."""
        self.out = config_jsonl if config_jsonl is not None else tmp / "findings.jsonl"
        self.status = tmp / "status.json"
        args = [sys.executable, "-m", "auditwatch", "run", *extra]
        if config_jsonl is None:
            args += ["--output", f"jsonl:{self.out}"]
        if sensors:
            args += ["--sensors", ",".join(sensors)]
        env = {**os.environ, "AUDITWATCH_STATUS": str(self.status)}
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if READY_MARK in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("daemon did not start:\n" + "".join(self.stderr))

    def findings(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        # The daemon may be half-way through writing the last line: only whole lines count.
        whole = self.out.read_bytes().split(b"\n")[:-1]
        return [json.loads(line) for line in whole if line.strip()]

    def wait_for(self, predicate: Any, timeout: float = 8.0) -> list[dict[str, Any]]:
        """Poll the output until ``predicate(findings)`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.findings()
            if predicate(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("daemon ignored SIGTERM:\n" + "".join(self.stderr)) from None


def args_of(finding: dict[str, Any]) -> dict[str, Any]:
    return {a["name"]: a["value"] for a in finding["Event"]["args"]}


def for_pid(findings: list[dict[str, Any]], pid: int, token: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["Event"]["hostProcessId"] == pid
            and token in args_of(f)["argv"]]


def with_token(findings: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["Event"]["eventName"] == "sched_process_exec"
            and any(token in a for a in args_of(f)["argv"])]


def assert_scenarios_reported(daemon: Daemon, results: Sequence[Any],
                              sensors: set[str]) -> list[dict[str, Any]]:
    """Every positive ``scenarios.ScenarioResult`` is reported exactly once, with its technique
    and exactly ``sensors``; no negative one is reported at all. Returns the findings read."""
    positives = [r for r in results if r.expected]

    def complete(found: list[dict[str, Any]]) -> bool:
        return all(any(set(f["Event"]["auditwatch"]["sensors"]) >= sensors
                       for f in for_pid(found, r.pid, r.argv[-1])) for r in positives)

    daemon.wait_for(complete)
    time.sleep(1.0)  # let a late duplicate or false positive arrive
    found = daemon.findings()
    for r in results:
        if r.expected is None:
            mine = [f for f in found if f["Event"]["hostProcessId"] == r.pid]
            assert mine == [], f"{r.name}: false positive {mine}"
            continue
        mine = for_pid(found, r.pid, r.argv[-1])
        assert len(mine) == 1, f"{r.name}: expected one finding, got {mine}"
        f = mine[0]
        block = f["Event"]["auditwatch"]
        assert block["technique"] == r.expected, r.name
        assert set(block["sensors"]) == sensors, (r.name, block)
        assert f["SigMetadata"]["ID"] == "TRC-105"
        assert args_of(f)["argv"][-1] == r.argv[-1]
        if "audit" in sensors:
            assert block["audit"]["syscall"] in ("execve", "execveat")
        if r.expected == "memfd":
            assert args_of(f)["pathname"].startswith("memfd:")
    return found


def started(tmp: Path, sensors: Sequence[str] | None, *extra: str,
            config_jsonl: Path | None = None) -> Daemon:
    """A daemon that is up (its sensors loaded); stopped again if it never gets there."""
    d = Daemon(tmp, sensors, *extra, config_jsonl=config_jsonl)
    try:
        d.wait_ready()
    except BaseException:
        d.stop()
        raise
    return d
