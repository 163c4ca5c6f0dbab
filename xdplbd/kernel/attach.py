"""Keep the data plane attached to the interface: attach, or replace atomically.

Replacing uses XDP_FLAGS_REPLACE with the old program's fd, so there is no
instant without a program (detach-then-attach loses ~10 ms of traffic).
"""

from __future__ import annotations

import logging
import os

from xdplbd.kernel import libbpf

log = logging.getLogger("xdplbd")


class AttachError(RuntimeError):
    pass


def ensure_attached(ifname: str, ifindex: int, prog_fd: int, prog_id: int, mode: str,
                    quiet: bool = False) -> str:
    """Make `prog_id` the interface's XDP program; returns the mode it runs in.
    `quiet` logs the attach at debug level, for a caller that logs it in its own line."""
    level = logging.DEBUG if quiet else logging.INFO
    current = libbpf.xdp_query(ifindex)
    if current.prog_id == prog_id:
        return current.mode
    if current.prog_id:
        if mode != "auto" and mode != current.mode:
            # The kernel cannot swap a program across modes atomically.
            raise AttachError(
                f"{ifname} runs XDP in {current.mode} mode and {mode} was asked for; "
                f"run `xdplb detach` first to change mode (this drops traffic)"
            )
        old_fd = libbpf.prog_fd_by_id(current.prog_id)
        try:
            libbpf.xdp_attach(ifindex, prog_fd, current.mode, old_prog_fd=old_fd)
        finally:
            os.close(old_fd)
        log.info("replaced XDP program %d with %d on %s (%s mode, atomic)",
                 current.prog_id, prog_id, ifname, current.mode)
        return current.mode
    modes = ["native", "generic"] if mode == "auto" else [mode]
    errors = []
    for m in modes:
        try:
            libbpf.xdp_attach(ifindex, prog_fd, m)
        except libbpf.BpfError as e:
            errors.append(f"{m}: {e}")
            if mode == "auto":
                log.warning("native XDP unavailable on %s (%s); falling back to generic",
                            ifname, e.strerror)
            continue
        log.log(level, "attached XDP program %d to %s in %s mode", prog_id, ifname, m)
        return m
    raise AttachError(f"cannot attach XDP to {ifname}: " + "; ".join(errors))
