"""A trivial XDP program (``r0 = ACTION; exit``) loaded and attached through libbpf.

Used by the namespace lab: XDP_TX on a veth is only delivered if the peer veth
has an XDP program attached, and an XDP_PASS one will do (DESIGN.md section 3).
No BCC, no compiler: two raw instructions through ``libbpf.so.1`` via ctypes.

Attachment is over netlink, so it happens in the network namespace of the
*calling thread* (see ``xdplbd.netns.in_netns``). A netlink-attached program stays
attached after its fd is closed and after the process exits.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Sequence

BPF_PROG_TYPE_XDP = 6

XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4
ACTIONS = {"aborted": XDP_ABORTED, "drop": XDP_DROP, "pass": XDP_PASS, "tx": XDP_TX}

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2  # generic
XDP_FLAGS_DRV_MODE = 4  # native
XDP_FLAGS_HW_MODE = 8
XDP_FLAGS_REPLACE = 16
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

_lib: ctypes.CDLL | None = None


def _libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        lib.bpf_prog_load.argtypes = [
            ctypes.c_int,  # enum bpf_prog_type
            ctypes.c_char_p,  # prog_name
            ctypes.c_char_p,  # license
            ctypes.c_void_p,  # const struct bpf_insn *
            ctypes.c_size_t,  # insn_cnt
            ctypes.c_void_p,  # const struct bpf_prog_load_opts * (NULL)
        ]
        lib.bpf_prog_load.restype = ctypes.c_int
        lib.bpf_xdp_attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
        lib.bpf_xdp_attach.restype = ctypes.c_int
        lib.bpf_xdp_detach.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
        lib.bpf_xdp_detach.restype = ctypes.c_int
        lib.bpf_xdp_query_id.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_uint32),
        ]
        lib.bpf_xdp_query_id.restype = ctypes.c_int
        _lib = lib
    return _lib


def _check(ret: int, what: str) -> int:
    # libbpf 1.x returns -errno directly.
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """Encode one ``struct bpf_insn`` (little-endian host)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def stub_insns(action: int) -> bytes:
    """``r0 = action; exit``."""
    return insn(0xB7, dst=0, imm=action) + insn(0x95)  # BPF_ALU64|BPF_MOV|BPF_K ; BPF_JMP|BPF_EXIT


def load_insns(insns: bytes, name: str = "xdp_stub") -> int:
    """Load raw instructions as an XDP program; return its fd (the caller closes it)."""
    if not insns or len(insns) % 8:
        raise ValueError("instructions must be a non-empty multiple of 8 bytes")
    buf = ctypes.create_string_buffer(insns, len(insns))
    ret = _libbpf().bpf_prog_load(
        BPF_PROG_TYPE_XDP, name.encode()[:15], b"GPL", buf, len(insns) // 8, None
    )
    return _check(ret, f"bpf_prog_load({name})")


def load(action: int = XDP_PASS, name: str = "xdp_stub") -> int:
    """Load the trivial program returning *action*; return its fd."""
    return load_insns(stub_insns(action), name)


def attach(ifindex: int, fd: int, flags: int = XDP_FLAGS_DRV_MODE) -> None:
    """Attach program *fd* to *ifindex* in the calling thread's netns."""
    _check(_libbpf().bpf_xdp_attach(ifindex, fd, flags, None), f"bpf_xdp_attach(ifindex={ifindex})")


def detach(ifindex: int, flags: int = XDP_FLAGS_DRV_MODE) -> None:
    """Remove the XDP program of that mode from *ifindex* (no error if there is none)."""
    _check(_libbpf().bpf_xdp_detach(ifindex, flags, None), f"bpf_xdp_detach(ifindex={ifindex})")


def query_id(ifindex: int, flags: int = 0) -> int:
    """Id of the program attached to *ifindex* (0 if none). flags selects a mode, 0 = any."""
    out = ctypes.c_uint32(0)
    _check(_libbpf().bpf_xdp_query_id(ifindex, flags, ctypes.byref(out)), "bpf_xdp_query_id")
    return out.value


def attach_stub(
    ifindex: int, action: int = XDP_PASS, mode: str = "native", name: str = "xdp_stub"
) -> int:
    """Load the trivial program and attach it; return its program id. The fd is closed."""
    fd = load(action, name)
    try:
        attach(ifindex, fd, MODE_FLAGS[mode])
    finally:
        os.close(fd)
    return query_id(ifindex, MODE_FLAGS[mode])


def attach_insns(
    ifindex: int, insns: Sequence[bytes], mode: str = "native", name: str = "xdp_test"
) -> int:
    """Load a list of encoded instructions and attach them; return the program id."""
    fd = load_insns(b"".join(insns), name)
    try:
        attach(ifindex, fd, MODE_FLAGS[mode])
    finally:
        os.close(fd)
    return query_id(ifindex, MODE_FLAGS[mode])
