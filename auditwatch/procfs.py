"""Process facts in one place: ``/proc/PID/stat`` (whose comm may hold spaces and parentheses)
and the offset between the wall clock and CLOCK_BOOTTIME (which process start times and BPF
timestamps count)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from auditwatch.text import decode_untrusted


@dataclass(frozen=True, slots=True)
class ProcStat:
    comm: str
    ppid: int
    flags: int
    start_ticks: int   # since boot, in clock ticks (SC_CLK_TCK)


def parse_stat(raw: bytes) -> ProcStat:
    """``/proc/PID/stat`` -> its fields; ValueError/IndexError when it is not one."""
    lpar, rpar = raw.index(b"("), raw.rindex(b")")
    rest = raw[rpar + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, flags field 9, starttime field 22.
    return ProcStat(decode_untrusted(raw[lpar + 1 : rpar]), int(rest[1]), int(rest[6]),
                    int(rest[19]))


def read_stat(pid: int | str, proc_root: str = "/proc") -> ProcStat:
    """OSError when the process is gone; ValueError/IndexError when the file is not a stat."""
    with open(f"{proc_root}/{pid}/stat", "rb") as f:
        return parse_stat(f.read())


def boot_to_wall_ns() -> int:
    """Wall clock minus CLOCK_BOOTTIME: add it to a boot-time stamp to get epoch ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
