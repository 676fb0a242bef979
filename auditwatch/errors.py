"""The one exception hierarchy of auditwatch.

    AuditwatchError
    ├── UsageError          bad command line (exit 2)
    ├── ConfigError         bad configuration file, names file:line (exit 2)
    ├── SensorError         a sensor could not load or read (exit 1)
    │   └── SensorUnavailable   missing privilege / kernel feature; message says what
    └── OutputError         an output could not be opened (exit 1)

The CLI maps these to exit codes; errors of other libraries are translated at the boundary.
"""

from __future__ import annotations


class AuditwatchError(Exception):
    """Base of every error auditwatch raises on purpose."""

    exit_code = 1


class UsageError(AuditwatchError):
    exit_code = 2


class ConfigError(AuditwatchError):
    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.path = path
        self.line = line
        self.key = key
        where = ""
        if path is not None:
            where = path if line is None else f"{path}:{line}"
            where += ": "
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")


class SensorError(AuditwatchError):
    exit_code = 1


class SensorUnavailable(SensorError):
    """The sensor cannot run on this host (privilege, kernel feature); the message says what."""


class OutputError(AuditwatchError):
    exit_code = 1
