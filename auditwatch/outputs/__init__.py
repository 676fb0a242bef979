"""Where findings go: one small interface (``Output``), a fan-out, and the concrete outputs.

    Output (Protocol)
    ├── JsonlOutput     JSON lines to stdout or an append-only file (reopened on SIGHUP)
    ├── SyslogOutput    RFC 5424 over /dev/log, UDP or TCP (RFC 6587 octet counting)
    └── MemoryOutput    keeps findings in a list (tests)
    FanOut              sends each finding to several outputs
"""

from auditwatch.outputs.base import FanOut, MemoryOutput, Output, build_output, build_outputs

__all__ = ["FanOut", "MemoryOutput", "Output", "build_output", "build_outputs"]
