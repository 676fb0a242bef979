"""Cost of the BPF exec sensor on fork+exec: /bin/true spawned in a tight loop, probe off vs on.

Rounds alternate (A = no probe, B = probe attached by a running ``auditwatch run --sensors bpf``,
ABBA order) in one run, so drift of the machine (frequency, other load) and order effects hit both
sides alike; each round spawns ``--execs`` children with ``os.posix_spawn`` and waits for each.
Reported: the median per-exec time of each side and their ratio (target <= 1.01), and, because
wall-clock rounds on a small VM scatter by +-10%, the kernel's own accounting of the probe
(BPF run-time stats: ns per program run) as a share of one fork+exec: the precise figure.

Reproduce (as root, from the repository root, object built by ``make -C auditwatch/sensors/bpf``
or ``pip install .``):

    python3 bench/bpf_exec_overhead.py --rounds 30 --execs 150 --json
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
from auditwatch.sensors.bpf.sensor import SCRIPT_MODES

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


class ProbeHolder:
    """The probe as deployed: ``auditwatch run --sensors bpf`` in its own process (holding the
    BPF object in the timing process itself skews its own fork+exec, by ~7% here)."""

    def __init__(self) -> None:
        env = {**os.environ, "AUDITWATCH_STATUS": "/tmp/auditwatch-bench-status.json"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auditwatch", "run", "--sensors", "bpf", "--no-sweep",
             "--output", "jsonl:/dev/null"], stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "auditwatch running" in line:
                break
        else:
            raise SystemExit(f"auditwatch did not start (exit {self.proc.wait()})")
        time.sleep(0.2)  # attach settled (static keys flipped, RCU grace periods over)

    def program_ids(self) -> tuple[int, ...]:
        """Our programs, found through the holder's fds (``prog_id:`` in their fdinfo)."""
        ids = set()
        fdinfo = f"/proc/{self.proc.pid}/fdinfo"
        for fd in os.listdir(fdinfo):
            try:
                with open(f"{fdinfo}/{fd}") as f:
                    ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
            except OSError:
                continue
        return tuple(sorted(ids))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run(rounds: int, execs: int, warmup: int) -> dict[str, object]:
    build.ensure_built()
    spawn_round(warmup)
    off: list[float] = []
    on: list[float] = []
    stats: dict[str, dict[str, float]] = {}
    stats_fd = LibBpf.get().enable_run_time_stats()   # accounting on only while we measure
    try:
        for i in range(rounds):
            # ABBA: each side goes first half of the time, so order effects cancel.
            for probe in ((False, True) if i % 2 == 0 else (True, False)):
                if not probe:
                    off.append(spawn_round(execs))
                    continue
                holder = ProbeHolder()
                try:
                    on.append(spawn_round(execs))
                    if i == rounds - 1:
                        stats = prog_stats(holder.program_ids())
                finally:
                    holder.stop()
    finally:
        os.close(stats_fd)
    med_off, med_on = statistics.median(off), statistics.median(on)
    probe_ns = sum(st["ns_per_run"] for st in stats.values())
    return {
        "rounds": rounds,
        "execs_per_round": execs,
        "script_mode": SCRIPT_MODES[0],
        "median_ns_per_exec_off": round(med_off),
        "median_ns_per_exec_on": round(med_on),
        "ratio_on_off": round(med_on / med_off, 4),
        "delta_ns_per_exec": round(med_on - med_off),
        # each probe round against the probe-less round of the same pair: robust to drift
        "median_pair_ratio": round(statistics.median(b / a for a, b in zip(off, on, strict=True)),
                                   4),
        "rounds_off_ns": [round(x) for x in off],
        "rounds_on_ns": [round(x) for x in on],
        "last_round_program_stats": stats,
        "probe_ns_per_exec": probe_ns,
        "kernel_cost_ratio": round(1 + probe_ns / med_off, 5),
        "kernel": os.uname().release,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="A/B pairs")
    ap.add_argument("--execs", type=int, default=400, help="execs per round")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args()
    result = run(args.rounds, args.execs, args.warmup)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"kernel {result['kernel']}, script mode {result['script_mode']}")
        print(f"{args.rounds} x {args.execs} fork+exec of {TRUE} per side, ABBA, probe held by "
              "a separate `auditwatch run --sensors bpf`")
        print(f"median per exec, probe off: {result['median_ns_per_exec_off'] / 1000:.1f} us")
        print(f"median per exec, probe on:  {result['median_ns_per_exec_on'] / 1000:.1f} us")
        print(f"ratio on/off: {result['ratio_on_off']:.4f} (target <= 1.01), "
              f"delta {result['delta_ns_per_exec']} ns, "
              f"median of per-pair ratios {result['median_pair_ratio']:.4f}")
        for name, st in result["last_round_program_stats"].items():  # type: ignore[union-attr]
            print(f"  {name}: {st['run_cnt']} runs, {st['ns_per_run']} ns per run")
        print(f"kernel-accounted probe cost: {result['probe_ns_per_exec']} ns per exec, "
              f"ratio {result['kernel_cost_ratio']} (target <= 1.01)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
