"""Where log lines go: journald (via stderr), plain stderr, or syslog + a file.

Under systemd, JOURNAL_STREAM is set and stderr is the journal: a `<N>`
prefix gives each line its syslog priority, so `journalctl -p info` works.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Optional

LOGGER = "xdplbd"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        # One journal entry per line: prefix every line of a multi-line message.
        return "\n".join(f"<{prio}>{line}" for line in record.getMessage().splitlines() or [""])


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup(verbose: bool = False, syslog: bool = False, log_file: Optional[str] = None) -> None:
    """Configure the xdplbd logger once for this process."""
    log = logging.getLogger(LOGGER)
    log.handlers.clear()
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    if syslog or log_file:
        # `xdplb start` mode, as the original C xdplb did: syslog plus a file.
        if syslog:
            sh = logging.handlers.SysLogHandler(address="/dev/log") if os.path.exists(
                "/dev/log") else None
            if sh is not None:
                sh.setFormatter(logging.Formatter("xdplbd[%(process)d]: %(message)s"))
                log.addHandler(sh)
        if log_file:
            fh = logging.FileHandler(log_file)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(fh)
        return
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("xdplbd: %(levelname)s: %(message)s"))
    log.addHandler(handler)
