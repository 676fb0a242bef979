"""The running daemon's state, shared with ``auditwatch status`` through one small JSON file."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

STATUS_PATH = os.environ.get("AUDITWATCH_STATUS", "/run/auditwatch/status.json")


def write_status(state: dict[str, Any], path: str = STATUS_PATH) -> None:
    """Atomically replace the status file (a reader never sees half a file)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".status-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**state, "updated": time.time()}, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_status(path: str = STATUS_PATH) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            state: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    state["running"] = isinstance(pid, int) and os.path.exists(f"/proc/{pid}")
    return state


def format_status(state: dict[str, Any] | None) -> str:
    if state is None:
        return "auditwatch: not running (no status file at " + STATUS_PATH + ")"
    lines = [f"auditwatch: {'running' if state['running'] else 'NOT running (stale status)'}"
             f" pid={state.get('pid')} since={state.get('started')}"]
    for name, sensor in sorted(state.get("sensors", {}).items()):
        counters = " ".join(f"{k}={v}" for k, v in sorted(sensor.get("counters", {}).items()))
        lines.append(f"  sensor {name}: {sensor.get('state')}  {counters}")
    health = state.get("health")
    if health is not None:
        conditions = ", ".join(f"{h.get('kind')}" + (f" ({h['sensor']})" if h.get("sensor") else "")
                               for h in health)
        lines.append(f"  health: {conditions or 'ok'}")
    for name, counters in sorted(state.get("stages", {}).items()):
        lines.append(f"  {name}: " + " ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return "\n".join(lines)
