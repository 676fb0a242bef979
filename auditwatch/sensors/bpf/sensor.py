"""``BpfExecSource``: the eBPF exec sensor, a ``Source`` for the event loop.

Life cycle (Tetragon's habit): ``load()`` opens the object, picks one program per hook by
autoload, loads and attaches; any failure destroys what was attached and closes the object before
raising, then the next attach type is tried. Hooks, in order of preference:

    exec:    tp_btf/sched_process_exec -> raw_tp/sched_process_exec -> tracepoint/sched/...
    scripts: "fdtable" by default: no extra hook; at exec the script's fd is looked up in the new
             image's fd table (it must still be open for the interpreter to read the script).
             Opt-in (``script_modes=SYSCALL_SCRIPT_MODES``): a syscall-entry hook stashes the
             fd's file per thread -- tracepoint/syscalls/sys_enter_execve(at) -> tp_btf/sys_enter
             -> raw_tp/sys_enter -> fdtable. It puts every syscall of every task on the traced
             slow path (~80 ns each with tp_btf, several % of a fork+exec; bench/).

Classic tracepoints need tracefs (/sys/kernel/tracing); tp_btf and raw_tp do not.

The ring-buffer callback only copies bytes into a bounded list (counting what does not fit);
decoding happens after ``ring_buffer__consume`` returns, and bad records are counted.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from auditwatch.errors import SensorError, SensorUnavailable
from auditwatch.events import ExecEvent, Sensor
from auditwatch.finding import HealthInfo
from auditwatch.procfs import boot_to_wall_ns  # bpf_ktime_get_boot_ns counts CLOCK_BOOTTIME
from auditwatch.sensors.bpf import abi, build
from auditwatch.sensors.bpf.decode import DecodeError, decode
from auditwatch.sensors.bpf.libbpf import VMLINUX_BTF, LibBpf, RingBufferCallback

EXEC_MODES: Final = ("tp_btf", "raw_tp", "tracepoint")
SCRIPT_MODES: Final = ("fdtable",)
SYSCALL_SCRIPT_MODES: Final = ("tracepoint", "tp_btf", "raw_tp", "fdtable")
_EXEC_PROGS: Final = {"tp_btf": ("aw_exec_btf",), "raw_tp": ("aw_exec_raw",),
                      "tracepoint": ("aw_exec_tp",)}
_SCRIPT_PROGS: Final = {"tracepoint": ("aw_execve_tp", "aw_execveat_tp"),
                        "tp_btf": ("aw_sys_enter_btf",), "raw_tp": ("aw_sys_enter_raw",),
                        "fdtable": ()}
ALL_PROGRAMS: Final = tuple(p for progs in (*_EXEC_PROGS.values(), *_SCRIPT_PROGS.values())
                            for p in progs)
MAX_PENDING: Final = 4096
TRACEFS_HINT: Final = " (classic tracepoints need tracefs mounted on /sys/kernel/tracing)"


@dataclass(frozen=True, slots=True)
class Attachment:
    exec_mode: str
    script_mode: str
    program_ids: tuple[int, ...]


class BpfExecSource:
    """Reports fileless execs seen at ``sched_process_exec`` (see exec.bpf.c for the filter)."""

    name: Sensor = "bpf"

    def __init__(self, object_path: str | os.PathLike[str] | None = None, *,
                 exec_modes: tuple[str, ...] = EXEC_MODES,
                 script_modes: tuple[str, ...] = SCRIPT_MODES,
                 max_pending: int = MAX_PENDING) -> None:
        for m in exec_modes:
            if m not in _EXEC_PROGS:
                raise ValueError(f"unknown exec attach mode {m!r}")
        for m in script_modes:
            if m not in _SCRIPT_PROGS:
                raise ValueError(f"unknown script attach mode {m!r}")
        self._object_path = Path(object_path) if object_path is not None else None
        self._exec_modes = exec_modes
        self._script_modes = script_modes
        self._max_pending = max_pending
        self._lib: LibBpf | None = None
        self._obj: int | None = None
        self._links: list[int] = []
        self._link_fds: list[int] = []
        self._rb: int | None = None
        self._counters_fd = -1
        self._ncpus = 0
        self._callback = RingBufferCallback(self._on_record)   # referenced for libbpf's sake
        self._pending: list[bytes] = []
        self._queue_drops = 0
        self._decode_errors = 0
        self._events_read = 0
        self._drops_reported = 0
        self._tmpdir: str | None = None
        self.attachment: Attachment | None = None
        self.last_decode_error: str | None = None

    # --- loading -------------------------------------------------------------------------

    def _object(self) -> Path:
        if self._object_path is not None:
            if not self._object_path.exists():
                raise SensorUnavailable(f"BPF object {self._object_path} not found")
            return self._object_path
        if build.OBJECT.exists():
            return build.OBJECT
        # A source checkout that was never built: compile into a private directory, which
        # load() removes once libbpf is done with the file.
        self._tmpdir = tempfile.mkdtemp(prefix="auditwatch-bpf-")
        try:
            return build.build(Path(self._tmpdir) / "exec.bpf.o")
        except build.BuildError as e:
            raise SensorUnavailable(f"{build.OBJECT} missing and cannot be built: {e}") from e

    def load(self) -> None:
        if self._obj is not None:
            return
        if not os.path.exists(VMLINUX_BTF):
            raise SensorUnavailable(f"kernel has no BTF ({VMLINUX_BTF} missing)")
        self._lib = LibBpf.get()
        try:
            self._load_any()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _load_any(self) -> None:
        path = self._object()
        errors: list[str] = []
        for exec_mode in self._exec_modes:
            for script_mode in self._script_modes:
                try:
                    self._try_load(path, exec_mode, script_mode)
                    return
                except SensorUnavailable:
                    self._rollback()
                    raise          # privilege / lockdown: no other mode will do better
                except SensorError as e:
                    self._rollback()
                    errors.append(f"[{exec_mode}/{script_mode}] {str(e).splitlines()[0]}")
        raise SensorError("could not load the exec sensor in any mode:\n" + "\n".join(errors))

    def _try_load(self, path: Path, exec_mode: str, script_mode: str) -> None:
        lib = self._lib
        assert lib is not None
        lib.clear_log()
        self._obj = lib.open_object(str(path))
        wanted = (*_EXEC_PROGS[exec_mode], *_SCRIPT_PROGS[script_mode])
        for name in ALL_PROGRAMS:
            lib.set_autoload(lib.program(self._obj, name), name in wanted)
        lib.load_object(self._obj)
        for name in wanted:
            try:
                link = lib.attach(lib.program(self._obj, name), name)
            except SensorError as e:
                if name.endswith("_tp") and not os.path.isdir("/sys/kernel/tracing/events"):
                    raise SensorError(str(e) + TRACEFS_HINT) from e
                raise
            self._links.append(link)
            self._link_fds.append(lib.link_fd(link))
        self._counters_fd = lib.map_fd(self._obj, abi.COUNTERS_MAP)
        self._ncpus = lib.num_possible_cpus()
        self._rb = lib.ring_buffer(lib.map_fd(self._obj, abi.EVENTS_MAP), self._callback)
        ids = tuple(lib.link_info(fd).prog_id for fd in self._link_fds)
        self.attachment = Attachment(exec_mode, script_mode, ids)

    def _rollback(self) -> None:
        lib = self._lib
        if lib is None:
            return
        if self._rb is not None:
            lib.free_ring_buffer(self._rb)
            self._rb = None
        for link in reversed(self._links):
            lib.destroy_link(link)
        self._links.clear()
        self._link_fds.clear()
        if self._obj is not None:
            lib.close_object(self._obj)
            self._obj = None
        self._counters_fd = -1
        self.attachment = None

    # --- the Source protocol -------------------------------------------------------------

    def fileno(self) -> int:
        if self._rb is None or self._lib is None:
            raise SensorError("bpf sensor not loaded")
        return self._lib.epoll_fd(self._rb)

    def _on_record(self, _ctx: int | None, data: int | None, size: int) -> int:
        # Runs inside ring_buffer__consume: copy and return, never raise, never block.
        try:
            if len(self._pending) >= self._max_pending or not data:
                self._queue_drops += 1
            else:
                self._pending.append(ctypes.string_at(data, size))
        except Exception:  # pragma: no cover - ctypes would only print it
            self._queue_drops += 1
        return 0

    def read(self) -> list[ExecEvent]:
        if self._rb is None or self._lib is None:
            return []
        try:
            self._lib.consume(self._rb)
        except SensorError as e:
            self.last_decode_error = str(e)
        raw, self._pending = self._pending, []
        offset = boot_to_wall_ns()
        events: list[ExecEvent] = []
        for record in raw:
            try:
                events.append(decode(record, offset))
            except (DecodeError, ValueError, TypeError) as e:
                self._decode_errors += 1
                self.last_decode_error = str(e)
        self._events_read += len(events)
        return events

    def tick(self, now_ns: int) -> list[ExecEvent]:
        return []   # nothing is buffered across reads

    def watermark_ns(self, select_start_ns: int) -> int | None:
        """Every exec before this wall time has been handed out: a record is committed to the
        ring buffer during the exec itself, and the loop drains the buffer whenever it holds
        any (it was empty, or read(), since the loop's select began)."""
        return select_start_ns if self._rb is not None else None

    def kernel_counters(self) -> dict[str, int]:
        """The per-CPU counters of the BPF object, summed over CPUs."""
        if self._lib is None or self._counters_fd < 0:
            return dict.fromkeys(abi.COUNTERS, 0)
        out: dict[str, int] = {}
        for i, name in enumerate(abi.COUNTERS):
            values = (ctypes.c_uint64 * self._ncpus)()
            self._lib.lookup(self._counters_fd, ctypes.c_uint32(i), values)
            out[name] = sum(values)
        return out

    def counters(self) -> dict[str, int]:
        return {**self.kernel_counters(), "decode_errors": self._decode_errors,
                "queue_drops": self._queue_drops, "events_read": self._events_read}

    def take_health(self) -> list[HealthInfo]:
        out: list[HealthInfo] = []
        now = time.time_ns()
        lost = self.kernel_counters()["rb_drops"] + self._queue_drops
        if lost > self._drops_reported:
            n = lost - self._drops_reported
            self._drops_reported = lost
            out.append(HealthInfo("bpf_events_lost",
                                  f"{n} exec event(s) lost (ring buffer full or reader too slow)",
                                  sensor="bpf", count=n, timestamp_ns=now))
        return out

    def attached(self) -> bool:
        """Every link is still attached (an external ``bpftool link detach`` makes this False)."""
        if self._lib is None or not self._link_fds:
            return False
        try:
            return all(self._lib.link_info(fd).prog_id != 0 for fd in self._link_fds)
        except SensorError:
            return False

    def destroy_links(self) -> None:
        """Detach the programs (destroy our links) but keep the object, ring buffer and counters:
        what an external detach would do. For tests of the detach health path on kernels that
        refuse ``BPF_LINK_DETACH`` for tracing links (EOPNOTSUPP), where nothing else can."""
        if self._lib is None:
            return
        for link in reversed(self._links):
            self._lib.destroy_link(link)
        self._links.clear()
        self._link_fds.clear()

    def close(self) -> None:
        self._rollback()
        self._pending.clear()
