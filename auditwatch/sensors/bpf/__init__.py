"""The eBPF exec sensor: kernel program (exec.bpf.c), its ctypes mirror (abi), a pure decoder
(decode), the libbpf boundary (libbpf) and the ``Source`` the event loop drives (sensor).

Import ``BpfExecSource`` from ``auditwatch.sensors.bpf.sensor``; this package does not import
ctypes bindings at import time, so ``abi`` and ``decode`` stay usable without libbpf.
"""
