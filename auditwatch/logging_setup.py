"""The daemon's own logs: loguru to stderr, apart from findings (which go to the outputs).

Log lines may quote attacker-chosen text (memfd names, argv): pass such values as arguments
(``logger.debug("suppressed {}", name)``), never inside the format string, and prefer ``{!r}``.
"""

from __future__ import annotations

import sys
from typing import Final, TextIO

from loguru import logger

from auditwatch.config import LOG_LEVELS

FORMAT: Final = "{time:YYYY-MM-DDTHH:mm:ss.SSSZZ} {level: <7} auditwatch: {message}"


def setup_logging(level: str = "INFO", sink: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to stderr (or ``sink``), replacing loguru's
    default handler. No variable values in tracebacks (``diagnose=False``): they could hold
    secrets or hostile text."""
    level = level.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LOG_LEVELS)})")
    logger.remove()
    out = sink if sink is not None else sys.stderr
    logger.add(out, level=level, format=FORMAT, backtrace=False, diagnose=False,
               colorize=out.isatty() if hasattr(out, "isatty") else False)
