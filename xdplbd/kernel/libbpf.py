"""Thin ctypes layer over libbpf.so.1: pins, maps, program info, XDP attach,
raw-instruction programs and test_run.

The daemon, the CLI and the lab all use this. It deliberately avoids importing
bcc, which costs ~70 MB and a second of start-up; bcc is used only to compile.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

# enum bpf_map_type / bpf_prog_type values (uapi/linux/bpf.h).
MAP_TYPES = {
    1: "hash",
    2: "array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    12: "array_of_maps",
    13: "hash_of_maps",
}
MAP_TYPE_ARRAY = 2
PROG_TYPE_SCHED_CLS = 3
PROG_TYPE_XDP = 6

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

# enum xdp_action
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4
XDP_ACTIONS = {"aborted": XDP_ABORTED, "drop": XDP_DROP, "pass": XDP_PASS, "tx": XDP_TX}
XDP_MODES = ("native", "generic")

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class BpfError(OSError):
    """A failed BPF syscall, with the operation and object named."""


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int), ("_pad", ctypes.c_int)]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64),
    ]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_lib: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            _lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError:
            _lib = ctypes.CDLL(name, use_errno=True)
        _lib.bpf_map_create.argtypes = [
            ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
            ctypes.c_uint32, ctypes.c_void_p,
        ]
        _lib.bpf_map_update_elem.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
        ]
        _lib.bpf_prog_load.argtypes = [
            ctypes.c_int,  # enum bpf_prog_type
            ctypes.c_char_p,  # prog_name
            ctypes.c_char_p,  # license
            ctypes.c_void_p,  # const struct bpf_insn *
            ctypes.c_size_t,  # insn_cnt
            ctypes.c_void_p,  # const struct bpf_prog_load_opts * (NULL)
        ]
    return _lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def possible_cpus() -> int:
    """Per-CPU values come back for every *possible* CPU, not just online ones."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"open pin {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPES.get(self.type, str(self.type))


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    tag: str
    name: str


def map_info(fd: int) -> MapInfo:
    buf = ctypes.create_string_buffer(128)
    n = ctypes.c_uint32(128)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)), "map info")
    raw = buf.raw
    u32 = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 24, 4)]
    name = raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(u32[0], u32[1], u32[2], u32[3], u32[4], u32[5], name)


def prog_info(fd: int) -> ProgInfo:
    buf = ctypes.create_string_buffer(256)
    n = ctypes.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)), "program info")
    raw = buf.raw
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(
        int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little"),
        raw[8:16].hex(), name,
    )


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id)), f"program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(ctypes.c_uint32(map_id)), f"map id {map_id}")


class Map:
    """An open BPF map: raw bytes in, raw bytes out (schema.py gives meaning)."""

    def __init__(self, fd: int, name: str, owned: bool = True) -> None:
        self.fd = fd
        self.name = name
        self.info = map_info(fd)
        self._owned = owned
        ncpu = possible_cpus()
        self.percpu = self.info.type in (5, 6)
        slot = (self.info.value_size + 7) // 8 * 8
        self.read_size = ncpu * slot if self.percpu else self.info.value_size
        self.ncpu = ncpu

    @classmethod
    def open_pinned(cls, path: str) -> Map:
        return cls(obj_get(path), os.path.basename(path))

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: bytes) -> Optional[bytes]:
        out = ctypes.create_string_buffer(self.read_size)
        ret = lib().bpf_map_lookup_elem(self.fd, key, out)
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            _check(-err, f"lookup in map {self.name}")
        return out.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        _check(lib().bpf_map_update_elem(self.fd, key, value, flags), f"update map {self.name}")

    def update_fd(self, key: bytes, inner_fd: int) -> None:
        """Point a map-in-map slot at another map (one atomic update)."""
        self.update(key, inner_fd.to_bytes(4, "little"))

    def delete(self, key: bytes) -> bool:
        ret = lib().bpf_map_delete_elem(self.fd, key)
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            _check(-err, f"delete from map {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        ks = self.info.key_size
        prev: Optional[ctypes.Array[ctypes.c_char]] = None
        nxt = ctypes.create_string_buffer(ks)
        while True:
            ret = lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                err = -ret if ret != -1 else ctypes.get_errno()
                if err == errno.ENOENT:
                    return
                _check(-err, f"iterate map {self.name}")
            yield nxt.raw
            prev = ctypes.create_string_buffer(nxt.raw, ks)

    def items(self) -> List[Tuple[bytes, bytes]]:
        """All entries; hash maps may change while iterating, so skip vanished keys."""
        out = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        n = ctypes.c_uint32(count)
        _check(
            lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(n), ctypes.byref(opts)),
            f"batch update map {self.name}",
        )

    def lookup_array_raw(self) -> bytes:
        """Every value of an array map, concatenated (read_size bytes each), by one
        batch lookup; falls back to one lookup per slot (an absent slot reads as 0s)."""
        n = self.info.max_entries
        keys = ctypes.create_string_buffer(4 * n)
        values = ctypes.create_string_buffer(self.read_size * n)
        count = ctypes.c_uint32(n)
        out_batch = ctypes.c_uint32(0)
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        ret = lib().bpf_map_lookup_batch(
            self.fd, None, ctypes.byref(out_batch), keys, values, ctypes.byref(count),
            ctypes.byref(opts),
        )
        err = 0 if ret >= 0 else (-ret if ret != -1 else ctypes.get_errno())
        if err not in (0, errno.ENOENT) or count.value != n:
            blank = bytes(self.read_size)
            return b"".join(self.lookup(i.to_bytes(4, "little")) or blank for i in range(n))
        return values.raw

    def lookup_array_all(self) -> List[bytes]:
        """Every value of an array map via batch lookup (falls back to one by one)."""
        raw = self.lookup_array_raw()
        size = self.read_size
        return [raw[i * size : (i + 1) * size] for i in range(self.info.max_entries)]

    def batches(self, chunk: int = 8192) -> Iterator[Tuple[bytes, bytes, int]]:
        """(keys, values, n) chunks of a (non per-CPU) hash map, by BPF_MAP_LOOKUP_BATCH.

        About 1000 times fewer syscalls than get_next_key + lookup. Entries added or
        removed during the scan may be missed or seen twice, as with any walk of a
        live hash table. Falls back to one-by-one reads if batching is unsupported.
        """
        ks, vs = self.info.key_size, self.read_size
        keys = ctypes.create_string_buffer(ks * chunk)
        values = ctypes.create_string_buffer(vs * chunk)
        in_batch = ctypes.create_string_buffer(8)
        out_batch = ctypes.create_string_buffer(8)
        opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            ret = lib().bpf_map_lookup_batch(
                self.fd, None if first else in_batch, out_batch, keys, values,
                ctypes.byref(count), ctypes.byref(opts),
            )
            err = 0 if ret >= 0 else (-ret if ret != -1 else ctypes.get_errno())
            if err not in (0, errno.ENOENT):
                if first and err in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    items = self.items()
                    yield b"".join(k for k, _ in items), b"".join(v for _, v in items), len(items)
                    return
                if err == errno.ENOSPC:  # one hash bucket holds more than `chunk` entries
                    chunk *= 4
                    keys = ctypes.create_string_buffer(ks * chunk)
                    values = ctypes.create_string_buffer(vs * chunk)
                    continue
                raise BpfError(err, f"batch lookup in map {self.name}: {errno.errorcode[err]}")
            n = count.value
            if n:
                yield keys.raw[: n * ks], values.raw[: n * vs], n
            if err == errno.ENOENT:
                return
            first = False
            ctypes.memmove(in_batch, out_batch, 8)

    def lookup_batch_all(self) -> List[Tuple[bytes, bytes]]:
        """Every (key, value) of a hash map: items() in a syscall or a few."""
        ks, vs = self.info.key_size, self.read_size
        out: List[Tuple[bytes, bytes]] = []
        for keys, values, n in self.batches(max(1, min(self.info.max_entries, 8192))):
            out.extend((keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs])
                       for i in range(n))
        return out


def create_array(name: str, value_size: int, max_entries: int) -> int:
    return _check(
        lib().bpf_map_create(MAP_TYPE_ARRAY, name.encode(), 4, value_size, max_entries, None),
        f"create map {name}",
    )


# --- XDP attach --------------------------------------------------------------

@dataclass(frozen=True)
class XdpState:
    prog_id: int  # the program attached in `mode`, 0 if none
    mode: str  # "native", "generic", "offload" or "none"


def xdp_query(ifindex: int) -> XdpState:
    opts = _XdpQueryOpts()
    opts.sz = ctypes.sizeof(_XdpQueryOpts)
    _check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"query XDP on ifindex {ifindex}")
    if opts.drv_prog_id:
        return XdpState(opts.drv_prog_id, "native")
    if opts.skb_prog_id:
        return XdpState(opts.skb_prog_id, "generic")
    if opts.hw_prog_id:
        return XdpState(opts.hw_prog_id, "offload")
    return XdpState(0, "none")


def mode_flags(mode: str) -> int:
    return {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}[mode]


def xdp_attach(ifindex: int, prog_fd: int, mode: str, old_prog_fd: Optional[int] = None,
               exclusive: bool = True) -> None:
    """Attach, or atomically replace `old_prog_fd` (never detach-then-attach).

    exclusive (the daemon's rule) refuses to displace a program nobody named;
    the lab's helper programs pass exclusive=False and replace whatever is there."""
    flags = mode_flags(mode)
    opts = _XdpAttachOpts(ctypes.sizeof(_XdpAttachOpts), 0, 0)
    if old_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        opts.old_prog_fd = old_prog_fd
    elif exclusive:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    _check(
        lib().bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts)),
        f"attach XDP ({mode}) to ifindex {ifindex}",
    )


def xdp_detach(ifindex: int, mode: str) -> None:
    _check(lib().bpf_xdp_detach(ifindex, mode_flags(mode), None), f"detach XDP from {ifindex}")


def xdp_prog_id(ifindex: int, mode: Optional[str] = None) -> int:
    """The program attached to `ifindex` (in `mode`, if given), 0 if none."""
    state = xdp_query(ifindex)
    return state.prog_id if mode is None or state.mode == mode else 0


# --- programs from raw instructions (the lab's stubs, the clock calibration) ------

def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """Encode one ``struct bpf_insn`` (little-endian host)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def stub_insns(action: int) -> bytes:
    """``r0 = action; exit``."""
    return insn(0xB7, dst=0, imm=action) + insn(0x95)  # BPF_ALU64|BPF_MOV|BPF_K ; BPF_JMP|BPF_EXIT


def load_insns(insns: bytes, name: str = "xdp_stub", prog_type: int = PROG_TYPE_XDP) -> int:
    """Load raw instructions as a program (XDP unless *prog_type* says otherwise, e.g. the
    lab router's tc program); return its fd (the caller closes it)."""
    if not insns or len(insns) % 8:
        raise ValueError("instructions must be a non-empty multiple of 8 bytes")
    buf = ctypes.create_string_buffer(insns, len(insns))
    return _check(
        lib().bpf_prog_load(prog_type, name.encode()[:15], b"GPL", buf, len(insns) // 8, None),
        f"load program {name}",
    )


def load_stub(action: int = XDP_PASS, name: str = "xdp_stub") -> int:
    """Load the trivial program returning `action`; return its fd."""
    return load_insns(stub_insns(action), name)


# --- test_run (tests and benchmarks only) ---------------------------------------

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data: bytes
    duration_ns: int


def test_run(prog_fd: int, frame: bytes, repeat: int = 1, flags: int = 0,
             batch_size: int = 0, ctx: Optional[bytes] = None) -> TestRunResult:
    out = ctypes.create_string_buffer(max(len(frame) + 256, 4096))
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    inp = ctypes.create_string_buffer(frame, len(frame))
    opts.data_in = ctypes.cast(inp, ctypes.c_void_p)
    opts.data_size_in = len(frame)
    if not flags & BPF_F_TEST_XDP_LIVE_FRAMES:
        opts.data_out = ctypes.cast(out, ctypes.c_void_p)
        opts.data_size_out = len(out)
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
        opts.ctx_in = ctypes.cast(ctx_buf, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
    opts.repeat = repeat
    opts.flags = flags
    opts.batch_size = batch_size
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test_run")
    data = out.raw[: opts.data_size_out] if opts.data_out else b""
    return TestRunResult(opts.retval, data, opts.duration)
