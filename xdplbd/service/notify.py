"""sd_notify messages to systemd; silent when not run by systemd."""

from __future__ import annotations

import os
import time
from typing import Optional

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._n: Optional[sdnotify.SystemdNotifier] = (
            sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        )
        sock = getattr(self._n, "socket", None)
        if sock is not None:
            # Never block the daemon on a notify socket nobody reads (a full
            # queue is 10 datagrams by default): drop the message instead.
            sock.setblocking(False)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval: Optional[float] = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ours else None
        )

    def send(self, *lines: str) -> None:
        if self._n is not None:
            self._n.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd wants the CLOCK_MONOTONIC time with RELOADING=1 (notify-reload).
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
