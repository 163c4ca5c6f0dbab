"""BIRD 2's control socket (what `birdc` speaks) and the atomic include file.

The protocol is line-based text: the server greets with `0001 BIRD ... ready.`,
each reply line starts with a 4-digit code, followed by `-` when more lines
follow or a space on the last one; a line starting with a space continues
the previous code. Codes 0xxx are success, 1xxx table rows, 8xxx runtime
errors and 9xxx parse errors.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from typing import List, Tuple

CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 10.0  # a reconfigure of a large config may take a while


class BirdError(RuntimeError):
    """BIRD is unreachable or refused a command; str() says which and why."""


Reply = List[Tuple[int, str]]


def _read_reply(f: socket.SocketIO, sock_path: str) -> Reply:
    lines: Reply = []
    code = 0
    while True:
        raw = f.readline()
        if not raw:
            raise BirdError(f"{sock_path}: BIRD closed the connection mid-reply")
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line[:4].isdigit() and len(line) >= 5 and line[4] in "- ":
            code = int(line[:4])
            lines.append((code, line[5:]))
            if line[4] == " ":
                return lines
        else:  # a continuation line: " text"
            lines.append((code, line[1:]))


def command(sock_path: str, cmd: str) -> Reply:
    """Run one CLI command; returns the reply lines. Raises BirdError when BIRD
    cannot be reached or answers with an error code."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(sock_path)
        except OSError as e:
            raise BirdError(f"cannot reach BIRD at {sock_path}: {e.strerror or e}") from None
        s.settimeout(REPLY_TIMEOUT_S)
        f = s.makefile("rwb", buffering=0)
        try:
            _read_reply(f, sock_path)  # the greeting
            f.write(cmd.encode() + b"\n")
            reply = _read_reply(f, sock_path)
        except OSError as e:
            raise BirdError(f"{sock_path}: {cmd}: {e.strerror or e}") from None
        finally:
            f.close()
    finally:
        s.close()
    errors = [text for code, text in reply if code >= 8000]
    if errors:
        raise BirdError(f"BIRD refused `{cmd}`: {'; '.join(errors)}")
    return reply


def configure(sock_path: str) -> str:
    """`birdc configure`: re-read the config (and our include). Returns BIRD's word."""
    reply = command(sock_path, "configure")
    return reply[-1][1] if reply else ""


def route_count(sock_path: str, protocol: str) -> int:
    """How many routes BIRD holds from one protocol (`show route protocol P count`)."""
    for _code, text in command(sock_path, f"show route protocol {protocol} count"):
        words = text.split()
        if len(words) > 2 and words[0].isdigit() and words[1] == "of":
            return int(words[0])
    return 0


def write_atomically(path: str, text: str) -> bool:
    """Replace `path` with `text` (temp file, fsync, rename); False if it already held it."""
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as f:
        if f.read() == text:
            return False
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".xdplb-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True
