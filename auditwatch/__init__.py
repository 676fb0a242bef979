"""auditwatch: detect fileless execution (Tracee TRC-105) from eBPF and the Linux audit stream."""

__version__ = "0.1.0"
