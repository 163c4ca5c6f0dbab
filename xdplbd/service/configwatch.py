"""Watch the config file's *directory*, so every way of writing it is seen.

Editors that write a temp file and rename it over the config, `cp`, `tee`,
in-place writes and delete-then-create all end with an event naming the
config; the daemon debounces them into one reload of the final content.
"""

from __future__ import annotations

import os
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

CHANGE_EVENTS = {"created", "modified", "moved", "deleted", "closed"}
# A rename into place or a close after writing means the content is complete;
# other events (a write still going on, a delete before a create) are not.
FINAL_EVENTS = {"moved", "closed"}


class _ConfigHandler(FileSystemEventHandler):
    def __init__(self, path: str, on_change: Callable[[bool], None]) -> None:
        self._path = os.path.abspath(path)
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGE_EVENTS or event.is_directory:
            return
        paths = {os.path.abspath(str(event.src_path))}
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.add(os.path.abspath(str(dest)))
        if self._path in paths:
            self._on_change(event.event_type in FINAL_EVENTS)


class ConfigWatcher:
    """Calls `on_change(final)` (from a watchdog thread) when the config may have changed;
    `final` is True when the event says the new content is complete."""

    def __init__(self, path: str, on_change: Callable[[bool], None]) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        directory = os.path.dirname(os.path.abspath(path))
        self._observer.schedule(_ConfigHandler(path, on_change), directory, recursive=False)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)
