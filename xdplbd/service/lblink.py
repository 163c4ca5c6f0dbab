"""The LB's interface as the kernel has it now: there or gone, its index and MAC,
and whether our program is attached to it.

The kernel holds the truth, so this is read, never remembered: after a link event
and on every reload the daemon compares it with what it last knew and acts (re-attach
with the same mode rule, new LB MAC into the maps). One line is logged per change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from xdplbd.kernel import attach, iface, libbpf


def gone_text(ifname: str) -> str:
    return f"interface {ifname} gone; the data plane is not attached"


@dataclass
class LinkOutcome:
    gone: bool
    ifindex: int = 0
    mac: str = ""
    mode: str = ""
    attached_now: bool = False  # we (re-)attached the program
    mac_changed: bool = False
    error: str = ""  # could not attach
    lines: List[str] = field(default_factory=list)


def follow(ifname: str, known_ifindex: int, known_mac: str, known_mode: str,
           was_gone: bool, prog_fd: int, prog_id: int, mode_rule: str) -> LinkOutcome:
    """Read the interface and make our program its XDP program (attach.py's rule)."""
    try:
        ifindex = iface.ifindex(ifname)
        mac = iface.mac_address(ifname)
    except iface.InterfaceError:
        lines = [] if was_gone else [gone_text(ifname) + " (it is re-attached when an "
                                     f"interface named {ifname} appears)"]
        return LinkOutcome(gone=True, lines=lines)
    out = LinkOutcome(gone=False, ifindex=ifindex, mac=mac, mode=known_mode)
    try:
        current = libbpf.xdp_query(ifindex).prog_id
    except libbpf.BpfError:
        current = 0
    if current != prog_id:
        try:
            out.mode = attach.ensure_attached(ifname, ifindex, prog_fd, prog_id, mode_rule,
                                              quiet=True)
            out.attached_now = True
        except (attach.AttachError, libbpf.BpfError, OSError) as e:
            out.error = str(e)
    out.mac_changed = mac != known_mac
    mac_note = f", MAC {known_mac} -> {mac}" if out.mac_changed else ""
    if out.error:
        out.lines.append(f"interface {ifname} (ifindex {ifindex}{mac_note}): cannot attach "
                         f"the data plane: {out.error}")
    elif out.attached_now:
        why = "is back" if was_gone or ifindex != known_ifindex else "had lost the program"
        out.lines.append(f"interface {ifname} {why} (ifindex {ifindex}{mac_note}): re-attached "
                         f"XDP program {prog_id} in {out.mode} mode")
    elif out.mac_changed:
        out.lines.append(f"interface {ifname}: MAC {known_mac} -> {mac}; the data plane "
                         "takes frames for the new one")
    elif was_gone:
        out.lines.append(f"interface {ifname} is back (ifindex {ifindex}); the program is "
                         "attached")
    return out


def problem(outcome: Optional[LinkOutcome], ifname: str) -> str:
    """What STATUS= and `xdplb status` say about the link ("" when all is well)."""
    if outcome is None:
        return ""
    if outcome.gone:
        return gone_text(ifname)
    if outcome.error:
        return f"interface {ifname}: the data plane is not attached: {outcome.error}"
    return ""
