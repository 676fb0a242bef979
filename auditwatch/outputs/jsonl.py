"""JSON lines: one finding per line, to stdout or appended to a file.

Each line is flushed as it is written, so a crash loses nothing already detected and ``tail -f``
sees findings at once. The file is created 0600 (findings name users and command lines) and
reopened on SIGHUP, so that logrotate can move it away (``create``/``postrotate`` style, no
``copytruncate`` needed). Writing to a local file does not wait on anyone; stdout does, if the
process reading it stops reading: that pipe is the operator's choice.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO

from loguru import logger

from auditwatch.errors import OutputError
from auditwatch.finding import Finding, to_json

FILE_MODE = 0o600


class JsonlOutput:
    def __init__(self, path: str = "-") -> None:
        self.path = path
        self.name = f"jsonl:{path}"
        self._file: TextIO | None = None
        self._written = 0
        self._errors = 0
        self._closed = False
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         FILE_MODE)
        except OSError as e:
            raise OutputError(f"cannot open {self.path}: {e.strerror}") from None
        self._file = os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace",
                               buffering=1)

    def write(self, finding: Finding) -> None:
        if self._file is None:
            self._errors += 1
            return
        try:
            self._file.write(to_json(finding) + "\n")
            self._file.flush()
            self._written += 1
        except (OSError, ValueError) as e:  # ENOSPC, EPIPE, closed stream
            self._errors += 1
            if self._errors == 1 or self._errors % 1000 == 0:
                logger.error("{}: cannot write finding ({} errors so far): {}",
                             self.name, self._errors, e)

    def reopen(self) -> None:
        if self.path == "-" or self._closed:
            return
        old = self._file
        try:
            self._open()
        except OutputError as e:
            logger.error("{}: reopen failed, keeping the old file: {}", self.name, e)
            return
        if old is not None:
            try:
                old.close()
            except OSError as e:
                logger.warning("{}: closing the old file: {}", self.name, e)
        logger.info("{}: reopened", self.name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None and self._file is not sys.stdout:
            try:
                self._file.close()
            except OSError as e:
                logger.warning("{}: close: {}", self.name, e)
        elif self._file is not None:     # stdout: not ours to close
            with contextlib.suppress(OSError, ValueError):
                self._file.flush()
        self._file = None

    def counters(self) -> dict[str, int]:
        return {"written": self._written, "errors": self._errors}
