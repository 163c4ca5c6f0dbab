"""Watch every directory that decides what the config path is, so every way of
deploying it is seen.

Editors that write a temp file and rename it over the config, `cp`, `tee`,
in-place writes and delete-then-create all end with an event naming the
config; the daemon debounces them into one reload of the final content.

A config path may also go through symlinks: a Kubernetes ConfigMap mount is
`lb_conf.json -> ..data/lb_conf.json` with `..data -> ..2026_12_05_x`, and an
update swaps `..data` by a rename. So the watcher follows the path component by
component, watches the directory of every link on the way and of the file it ends
at, plus the parent of each (a replaced containing directory), and re-does this
after every event that touches the chain. Events that no longer concern what the
path points to (the old ConfigMap directory being removed) are ignored.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

CHANGE_EVENTS = {"created", "modified", "moved", "deleted", "closed"}
# A rename into place or a close after writing means the content is complete;
# other events (a write still going on, a delete before a create) are not.
FINAL_EVENTS = {"moved", "closed"}
MAX_LINKS = 40  # as the kernel's symlink limit; a loop ends here


def resolution_chain(path: str) -> List[str]:
    """Every absolute path that resolving `path` goes through: each symlink met, at any
    component, and the path it ends at (which may not exist)."""
    out: List[str] = []
    todo = [p for p in os.path.abspath(path).split("/") if p]
    cur = "/"
    hops = 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, name)
        if hops < MAX_LINKS and os.path.islink(nxt):
            hops += 1
            out.append(nxt)
            try:
                target = os.readlink(nxt)
            except OSError:
                cur = nxt
                continue
            if target.startswith("/"):
                cur = "/"
            todo = [p for p in target.split("/") if p] + todo
            continue
        cur = nxt
    out.append(cur)
    return out


def watch_set(path: str) -> Tuple[FrozenSet[str], Set[str]]:
    """(paths whose change may change the config, directories to watch for them)."""
    relevant: Set[str] = {os.path.abspath(path)}
    for p in resolution_chain(path):
        relevant.add(p)
        relevant.add(os.path.dirname(p))  # a replaced containing directory
    dirs = {os.path.dirname(p) for p in relevant if p != "/"}
    return frozenset(relevant), dirs


def _fingerprint(path: str) -> Optional[Tuple[int, ...]]:
    """What is at the path now (through every link), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class _ConfigHandler(FileSystemEventHandler):
    def __init__(self, watcher: ConfigWatcher) -> None:
        self._w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGE_EVENTS:
            return
        paths = {os.path.abspath(str(event.src_path))}
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.add(os.path.abspath(str(dest)))
        self._w.event(paths, event.event_type in FINAL_EVENTS)


class ConfigWatcher:
    """Calls `on_change(final)` (from a watchdog thread) when the config may have changed;
    `final` is True when the event says the new content is complete."""

    def __init__(self, path: str, on_change: Callable[[bool], None]) -> None:
        self._path = os.path.abspath(path)
        self._on_change = on_change
        self._observer = Observer()
        self._observer.daemon = True
        self._handler = _ConfigHandler(self)
        self._lock = threading.RLock()
        self._relevant: FrozenSet[str] = frozenset()
        self._watches: Dict[str, Tuple[int, Any]] = {}  # dir -> (inode, ObservedWatch)
        self._seen = _fingerprint(self._path)
        self._refresh()

    def _refresh(self) -> None:
        """Watch the directories the path depends on now; re-watch a replaced one."""
        relevant, dirs = watch_set(self._path)
        with self._lock:
            self._relevant = relevant
            for d in sorted(dirs):
                try:
                    ino = os.stat(d).st_ino
                except OSError:
                    continue
                old = self._watches.get(d)
                if old is not None and old[0] == ino:
                    continue
                if old is not None:
                    with contextlib.suppress(KeyError, OSError):
                        self._observer.unschedule(old[1])
                try:
                    w = self._observer.schedule(self._handler, d, recursive=False)
                except OSError:
                    self._watches.pop(d, None)
                    continue
                self._watches[d] = (ino, w)
            for d in set(self._watches) - dirs:
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(self._watches.pop(d)[1])

    def event(self, paths: Set[str], final: bool) -> None:
        with self._lock:
            if not paths & self._relevant:
                return
            self._refresh()  # a link or a directory on the way may have been swapped
            now = _fingerprint(self._path)
            # Not a rename or a close, and what the path leads to is as it was when we
            # last said so: an echo (the old ConfigMap directory going away, a stale
            # event from a replaced directory's watch).
            if not final and now == self._seen and now is not None:
                return
            self._seen = now
        self._on_change(final)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)
