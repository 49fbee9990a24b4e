"""Where the log goes: stderr, with journald's priority prefix when systemd's journal reads it."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, ClassVar, Optional


class JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the priority from the prefix."""

    PRIORITY: ClassVar[dict[str, int]] = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelname, 6)}>{record.getMessage()}"


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record, not as it was when logging was set up."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler's own assignment: the property above is the stream


def setup(level: Optional[str]) -> None:
    """One handler on the root logger, at ``level`` (default info)."""
    handler = StderrHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("dtlnd: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or "info").upper())
