"""Cost of the BPF exec sensor on fork+exec: /bin/true spawned in a tight loop, probe off vs on.

Rounds alternate (A = no probe, B = probe attached, A, B, ...) in one run, so drift of the machine
(frequency, other load) hits both sides alike; each round spawns ``--execs`` children with
``os.posix_spawn`` and waits for each. Reported: the median per-exec time of each side over its
rounds and their ratio (target <= 1.01). The load/attach itself is outside the timed part.

Reproduce (as root, from the repository root, object built by ``make -C auditwatch/sensors/bpf``
or ``pip install .``):

    python3 bench/bpf_exec_overhead.py --rounds 30 --execs 150 --json
    python3 bench/bpf_exec_overhead.py --script-mode tp_btf     # + the syscall-entry hook
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditwatch.sensors.bpf import build
from auditwatch.sensors.bpf.libbpf import LibBpf
from auditwatch.sensors.bpf.sensor import SCRIPT_MODES, BpfExecSource

TRUE = "/bin/true"


def spawn_round(n: int) -> float:
    """Mean ns per fork+exec+wait of /bin/true over ``n`` children."""
    env = {"PATH": "/usr/bin:/bin"}
    start = time.perf_counter_ns()
    for _ in range(n):
        pid = os.posix_spawn(TRUE, [TRUE], env)
        os.waitpid(pid, 0)
    return (time.perf_counter_ns() - start) / n


def prog_stats(prog_ids: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """run_cnt and run_time_ns of each program (kernel accounting, needs BPF_ENABLE_STATS)."""
    out: dict[str, dict[str, float]] = {}
    for pid in prog_ids:
        proc = subprocess.run(["bpftool", "--json", "prog", "show", "id", str(pid)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            continue
        info = json.loads(proc.stdout)
        cnt, ns = info.get("run_cnt", 0), info.get("run_time_ns", 0)
        out[info.get("name", str(pid))] = {
            "run_cnt": cnt, "run_time_ns": ns, "ns_per_run": round(ns / cnt, 1) if cnt else 0.0}
    return out


def run(rounds: int, execs: int, warmup: int,
        script_modes: tuple[str, ...] = SCRIPT_MODES) -> dict[str, object]:
    build.ensure_built()
    spawn_round(warmup)
    off: list[float] = []
    on: list[float] = []
    counters: dict[str, int] = {}
    stats: dict[str, dict[str, float]] = {}
    attachment = None
    stats_fd = LibBpf.get().enable_run_time_stats()   # accounting on only while we measure
    try:
        for i in range(rounds):
            off.append(spawn_round(execs))
            src = BpfExecSource(script_modes=script_modes)
            src.load()
            try:
                attachment = src.attachment
                on.append(spawn_round(execs))
                counters = src.counters()
                if i == rounds - 1 and attachment is not None:
                    stats = prog_stats(attachment.program_ids)
            finally:
                src.close()
    finally:
        os.close(stats_fd)
    med_off, med_on = statistics.median(off), statistics.median(on)
    return {
        "rounds": rounds,
        "execs_per_round": execs,
        "attach": None if attachment is None else
        {"exec": attachment.exec_mode, "scripts": attachment.script_mode},
        "median_ns_per_exec_off": round(med_off),
        "median_ns_per_exec_on": round(med_on),
        "ratio_on_off": round(med_on / med_off, 4),
        "delta_ns_per_exec": round(med_on - med_off),
        # each B round against the A round just before it: robust to slow drift of the host
        "median_pair_ratio": round(statistics.median(b / a for a, b in zip(off, on, strict=True)),
                                   4),
        "rounds_off_ns": [round(x) for x in off],
        "rounds_on_ns": [round(x) for x in on],
        "last_round_counters": counters,
        "last_round_program_stats": stats,
        "kernel": os.uname().release,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="A/B pairs")
    ap.add_argument("--execs", type=int, default=400, help="execs per round")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--script-mode", default=SCRIPT_MODES[0],
                    choices=("fdtable", "tracepoint", "tp_btf", "raw_tp"),
                    help="how scripts are resolved (default: fd table at exec, no extra hook)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args()
    result = run(args.rounds, args.execs, args.warmup, (args.script_mode,))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"kernel {result['kernel']}, attach {result['attach']}")
        print(f"{args.rounds} x {args.execs} fork+exec of {TRUE} per side, ABAB")
        print(f"median per exec, probe off: {result['median_ns_per_exec_off'] / 1000:.1f} us")
        print(f"median per exec, probe on:  {result['median_ns_per_exec_on'] / 1000:.1f} us")
        print(f"ratio on/off: {result['ratio_on_off']:.4f} (target <= 1.01), "
              f"delta {result['delta_ns_per_exec']} ns, "
              f"median of per-pair ratios {result['median_pair_ratio']:.4f}")
        for name, st in result["last_round_program_stats"].items():  # type: ignore[union-attr]
            print(f"  {name}: {st['run_cnt']} runs, {st['ns_per_run']} ns per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
