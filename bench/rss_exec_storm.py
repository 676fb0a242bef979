"""RSS of ``auditwatch run`` under a sustained exec storm (issue C: memory stays bounded).

Starts the real daemon (both sensors by default, JSONL to a temporary file, status file in the
same directory), lets a few worker processes fork+exec as fast as they can for ``--seconds``
(a mix of ordinary execs of /bin/true and memfd execs via execveat(AT_EMPTY_PATH), 90/10 by
default, each carrying one token), and samples the daemon's VmRSS from /proc/PID/status every
second. Reports start / peak / end RSS, findings vs memfd execs, and whether RSS is bounded:

- warm-up: the first ``--warmup`` seconds (default 10) are ignored;
- plateau: the median RSS of the second half of the run;
- bounded: the peak after warm-up is within ``--margin`` (default 10 %) of the plateau AND the
  least-squares slope over the second half, times its duration, is below the same margin
  (no linear growth).

Reproduce (root; auditd running with our rules: ``auditwatch rules --install``)::

    python3 bench/rss_exec_storm.py --seconds 60 --workers 2 --json /tmp/rss.json

Exit status 0 when bounded, 1 when not, 2 when the daemon could not start.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from auditwatch import scenarios

READY = "auditwatch running"


def vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def worker(tag: str, stop_at: float, fileless_ratio: float, seed: int,
           out: mp.Queue) -> None:  # type: ignore[type-arg]
    rnd = random.Random(seed)
    counts = {"ordinary": 0, "memfd": 0, "failed": 0}
    while time.monotonic() < stop_at:
        if rnd.random() < fileless_ratio:
            # A unique last argument per memfd exec: pids wrap around during a long storm.
            r = scenarios.memfd_execveat(tag, extra_args=(f"w{seed}-{counts['memfd']}",))
            kind = "memfd"
        else:
            r = scenarios.ordinary_exec(tag)
            kind = "ordinary"
        counts[kind if r.exit_status == 0 else "failed"] += 1
    out.put(counts)


def slope_per_s(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (t, kB) in kB/s."""
    if len(samples) < 2:
        return 0.0
    ts = [t for t, _ in samples]
    vs = [v for _, v in samples]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (v - mv) for t, v in samples) / den if den else 0.0


def analyse(samples: list[tuple[float, int]], seconds: float, warmup: float,
            margin: float) -> dict[str, Any]:
    after = [(t, v) for t, v in samples if t >= warmup] or samples
    half = [(t, v) for t, v in samples if t >= seconds / 2] or after
    plateau = statistics.median(v for _, v in half)
    peak = max(v for _, v in after)
    slope = slope_per_s(half)
    span = (half[-1][0] - half[0][0]) if len(half) > 1 else 0.0
    growth = slope * span
    return {
        "start_kb": samples[0][1], "peak_kb": max(v for _, v in samples),
        "peak_after_warmup_kb": peak, "end_kb": samples[-1][1], "plateau_kb": plateau,
        "slope_kb_per_s_second_half": round(slope, 2),
        "growth_kb_second_half": round(growth, 1),
        "peak_within_margin": peak <= plateau * (1 + margin),
        "no_linear_growth": growth <= plateau * margin,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fileless-ratio", type=float, default=0.1)
    ap.add_argument("--sensors", default="bpf,audit")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--margin", type=float, default=0.10)
    ap.add_argument("--json", help="also write the result as JSON to this path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="aw-rss-"))
    out_file = tmp / "findings.jsonl"
    env = {**os.environ, "AUDITWATCH_STATUS": str(tmp / "status.json")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "auditwatch", "run", "--no-sweep", "--sensors", args.sensors,
         "--output", f"jsonl:{out_file}"], stderr=subprocess.PIPE, text=True, env=env)
    ready = threading.Event()
    stderr: list[str] = []

    def read_stderr() -> None:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            stderr.append(line)
            if READY in line:
                ready.set()
    threading.Thread(target=read_stderr, daemon=True).start()
    if not ready.wait(30) or daemon.poll() is not None:
        print("daemon did not start:\n" + "".join(stderr), file=sys.stderr)
        daemon.kill()
        return 2

    tag = scenarios.token()
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    stop_at = t0 + args.seconds
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=worker, args=(tag, stop_at, args.fileless_ratio, i, queue))
               for i in range(args.workers)]
    for w in workers:
        w.start()
    try:
        next_sample = t0
        while time.monotonic() < stop_at:
            rss = vm_rss_kb(daemon.pid)
            if rss is None:
                print("daemon exited during the storm:\n" + "".join(stderr), file=sys.stderr)
                return 2
            samples.append((round(time.monotonic() - t0, 2), rss))
            next_sample += 1.0
            time.sleep(max(0.0, next_sample - time.monotonic()))
        counts = {"ordinary": 0, "memfd": 0, "failed": 0}
        for _ in workers:
            for k, v in queue.get(timeout=60).items():
                counts[k] += v
        for w in workers:
            w.join(timeout=30)
        time.sleep(2.0)  # let the daemon drain its backlog
        rss_drained = vm_rss_kb(daemon.pid)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()

    findings = [json.loads(line) for line in out_file.read_text().splitlines() if line.strip()]
    mine = [f for f in findings if f["Event"].get("eventName") == "sched_process_exec"
            and tag in next((a["value"] for a in f["Event"]["args"] if a["name"] == "argv"), [])]
    keys = [next(a["value"] for a in f["Event"]["args"] if a["name"] == "argv")[-1]
            for f in mine]
    health = [f["Event"]["eventName"] for f in findings
              if f["SigMetadata"].get("ID") == "AW-HEALTH"]
    result = {
        "seconds": args.seconds, "workers": args.workers, "sensors": args.sensors,
        "execs": counts, "execs_per_s": round((counts["ordinary"] + counts["memfd"])
                                              / args.seconds, 1),
        "findings": len(mine), "duplicate_findings": len(keys) - len(set(keys)),
        "execs_not_reported": counts["memfd"] - len(set(keys)),
        "findings_both_sensors": sum(f["Event"]["auditwatch"]["sensors"] == ["bpf", "audit"]
                                     for f in mine),
        "health_findings": health,
        "rss_after_drain_kb": rss_drained,
        **analyse(samples, args.seconds, args.warmup, args.margin),
        "samples": samples,
    }
    bounded = result["peak_within_margin"] and result["no_linear_growth"]
    result["bounded"] = bounded
    print(f"exec storm: {args.seconds:g}s, {args.workers} workers, sensors {args.sensors}: "
          f"{counts['ordinary']} ordinary + {counts['memfd']} memfd execs "
          f"({result['execs_per_s']}/s), {counts['failed']} failed")
    print(f"findings: {len(mine)} for {counts['memfd']} memfd execs "
          f"({result['findings_both_sensors']} with both sensors, "
          f"{result['duplicate_findings']} duplicates, "
          f"{result['execs_not_reported']} not reported); health: {health or 'none'}")
    print(f"RSS kB: start {result['start_kb']}  peak {result['peak_kb']}  "
          f"peak after {args.warmup:g}s warm-up {result['peak_after_warmup_kb']}  "
          f"plateau {result['plateau_kb']}  end {result['end_kb']}  after drain {rss_drained}")
    print(f"second half: slope {result['slope_kb_per_s_second_half']} kB/s, "
          f"growth {result['growth_kb_second_half']} kB -> "
          f"{'BOUNDED' if bounded else 'NOT BOUNDED'} (margin {args.margin:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return 0 if bounded else 1


if __name__ == "__main__":
    sys.exit(main())
