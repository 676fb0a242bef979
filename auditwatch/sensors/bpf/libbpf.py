"""ctypes binding of the system ``libbpf.so.1``: only what the exec sensor uses.

This is the boundary where libbpf's conventions (NULL + errno, negative errno returns, log lines
through a print callback) become ``SensorError``/``SensorUnavailable`` with a message that says
what is missing. Nothing above this module sees an errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections import deque
from collections.abc import Callable

from auditwatch.errors import SensorError, SensorUnavailable

NEEDS_PRIVILEGE = "needs CAP_BPF and CAP_PERFMON (or root)"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
LOCKDOWN = "/sys/kernel/security/lockdown"

# int (*)(void *ctx, void *data, size_t size)
RingBufferCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_size_t)
# int (*)(enum libbpf_print_level, const char *fmt, va_list)
_PrintFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_LOG_LINES = 200
_LOG_BYTES = 1 << 16    # libbpf prints the whole verifier log as one message
_log: deque[str] = deque(maxlen=_LOG_LINES)


class BpfLinkInfo(ctypes.Structure):
    """The head of ``struct bpf_link_info`` (uapi/linux/bpf.h); a short buffer is accepted."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("_union", ctypes.c_uint8 * 32)]


def lockdown_mode() -> str | None:
    """``integrity``/``confidentiality`` when the kernel is locked down, else ``None``."""
    try:
        with open(LOCKDOWN) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    mode = text[start + 1 : end] if 0 <= start < end else ""
    return mode if mode and mode != "none" else None


def translate(err: int, what: str) -> SensorError:
    """An errno from libbpf or the kernel -> our error, naming the likely cause. A missing
    privilege or kernel feature is one line saying what is missing; any other failure carries
    libbpf's last messages (verifier, CO-RE) for whoever debugs it."""
    err = abs(err)
    if err in (errno.EPERM, errno.EACCES):
        mode = lockdown_mode()
        if mode is not None:
            return SensorUnavailable(f"{what}: kernel lockdown ({mode}) forbids BPF tracing")
        return SensorUnavailable(f"{what}: {os.strerror(err)}: {NEEDS_PRIVILEGE}")
    if err == errno.ENOENT and not os.path.exists(VMLINUX_BTF):
        return SensorUnavailable(f"{what}: kernel has no BTF ({VMLINUX_BTF} missing)")
    return SensorError(f"{what}: {os.strerror(err) if err else 'failed'} (errno {err})"
                       f"{_recent_log()}")


def _recent_log() -> str:
    """The last libbpf warnings (verifier and CO-RE messages), for error messages."""
    if not _log:
        return ""
    return "\nlibbpf: " + "\nlibbpf: ".join(list(_log)[-12:])


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf")
    candidates = ["libbpf.so.1"] + ([name] if name and name != "libbpf.so.1" else [])
    for cand in candidates:
        try:
            return ctypes.CDLL(cand, use_errno=True)
        except OSError:
            continue
    raise SensorUnavailable("libbpf.so.1 not found: install libbpf1")


def _sig(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_VP, _CP, _I = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
_U32P = ctypes.POINTER(ctypes.c_uint32)


def _declare(lib: ctypes.CDLL) -> None:
    _sig(lib, "libbpf_set_print", _VP, _PrintFn)
    _sig(lib, "libbpf_num_possible_cpus", _I)
    _sig(lib, "bpf_object__open_file", _VP, _CP, _VP)
    _sig(lib, "bpf_object__load", _I, _VP)
    _sig(lib, "bpf_object__close", None, _VP)
    _sig(lib, "bpf_object__find_program_by_name", _VP, _VP, _CP)
    _sig(lib, "bpf_object__find_map_fd_by_name", _I, _VP, _CP)
    _sig(lib, "bpf_program__set_autoload", _I, _VP, ctypes.c_bool)
    _sig(lib, "bpf_program__attach", _VP, _VP)
    _sig(lib, "bpf_program__fd", _I, _VP)
    _sig(lib, "bpf_link__fd", _I, _VP)
    _sig(lib, "bpf_link__destroy", _I, _VP)
    _sig(lib, "bpf_map_lookup_elem", _I, _I, _VP, _VP)
    _sig(lib, "bpf_obj_get_info_by_fd", _I, _I, _VP, _U32P)
    _sig(lib, "bpf_enable_stats", _I, _I)
    _sig(lib, "ring_buffer__new", _VP, _I, RingBufferCallback, _VP, _VP)
    _sig(lib, "ring_buffer__consume", _I, _VP)
    _sig(lib, "ring_buffer__epoll_fd", _I, _VP)
    _sig(lib, "ring_buffer__free", None, _VP)


class LibBpf:
    """The loaded library, with typed calls that raise our errors instead of returning errno."""

    _instance: LibBpf | None = None

    def __init__(self) -> None:
        self.lib = _load()
        _declare(self.lib)
        libc = ctypes.CDLL(None)
        self._vsnprintf = libc.vsnprintf
        self._vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, _VP]
        self._vsnprintf.restype = ctypes.c_int
        self._print = _PrintFn(self._on_print)   # keep the callback alive
        self.lib.libbpf_set_print(self._print)

    @classmethod
    def get(cls) -> LibBpf:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        if level > 1 or fmt is None:   # 0 warn, 1 info, 2 debug
            return 0
        buf = ctypes.create_string_buffer(_LOG_BYTES)
        self._vsnprintf(buf, len(buf), fmt, args)
        for line in buf.value.decode("utf-8", "backslashreplace").splitlines():
            if line.strip():
                _log.append(line.removeprefix("libbpf: "))
        return 0

    @staticmethod
    def clear_log() -> None:
        _log.clear()

    @staticmethod
    def _errno() -> int:
        return ctypes.get_errno() or errno.EINVAL

    def num_possible_cpus(self) -> int:
        n = int(self.lib.libbpf_num_possible_cpus())
        if n <= 0:
            raise translate(n, "libbpf_num_possible_cpus")
        return n

    def open_object(self, path: str) -> int:
        obj = self.lib.bpf_object__open_file(os.fsencode(path), None)
        if not obj:
            raise translate(self._errno(), f"open {path}")
        return int(obj)

    def load_object(self, obj: int) -> None:
        rc = self.lib.bpf_object__load(obj)
        if rc < 0:
            raise translate(rc, "bpf_object__load")

    def close_object(self, obj: int) -> None:
        self.lib.bpf_object__close(obj)

    def program(self, obj: int, name: str) -> int:
        prog = self.lib.bpf_object__find_program_by_name(obj, name.encode())
        if not prog:
            raise SensorError(f"BPF object has no program {name!r}")
        return int(prog)

    def set_autoload(self, prog: int, on: bool) -> None:
        rc = self.lib.bpf_program__set_autoload(prog, on)
        if rc < 0:
            raise translate(rc, "bpf_program__set_autoload")

    def attach(self, prog: int, what: str) -> int:
        link = self.lib.bpf_program__attach(prog)
        if not link:
            raise translate(self._errno(), f"attach {what}")
        return int(link)

    def link_fd(self, link: int) -> int:
        return int(self.lib.bpf_link__fd(link))

    def destroy_link(self, link: int) -> None:
        self.lib.bpf_link__destroy(link)

    def map_fd(self, obj: int, name: str) -> int:
        fd = int(self.lib.bpf_object__find_map_fd_by_name(obj, name.encode()))
        if fd < 0:
            raise translate(fd, f"map {name}")
        return fd

    def lookup(self, map_fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
        rc = self.lib.bpf_map_lookup_elem(map_fd, ctypes.byref(key), ctypes.byref(value))
        if rc < 0:
            raise translate(rc, "bpf_map_lookup_elem")

    def link_info(self, fd: int) -> BpfLinkInfo:
        info = BpfLinkInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        rc = self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
        if rc < 0:
            raise translate(rc, "bpf_obj_get_info_by_fd")
        return info

    def enable_run_time_stats(self) -> int:
        """An fd that keeps per-program run time accounting on until closed (BPF_STATS_RUN_TIME)."""
        fd = int(self.lib.bpf_enable_stats(0))
        if fd < 0:
            raise translate(fd, "bpf_enable_stats")
        return fd

    def ring_buffer(self, map_fd: int, callback: Callable[..., int]) -> int:
        rb = self.lib.ring_buffer__new(map_fd, callback, None, None)
        if not rb:
            raise translate(self._errno(), "ring_buffer__new")
        return int(rb)

    def consume(self, rb: int) -> int:
        n = int(self.lib.ring_buffer__consume(rb))
        if n < 0 and n != -errno.EINTR:
            raise translate(n, "ring_buffer__consume")
        return max(n, 0)

    def epoll_fd(self, rb: int) -> int:
        return int(self.lib.ring_buffer__epoll_fd(rb))

    def free_ring_buffer(self, rb: int) -> None:
        self.lib.ring_buffer__free(rb)
