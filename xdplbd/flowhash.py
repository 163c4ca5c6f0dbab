"""The data plane's flow hash (bpf/xdplb.c flow_hash), for `xdplb explain` and tests.

MurmurHash3 x86_32 over the 40-byte flow key read as ten host-order words.
"""

from __future__ import annotations

import struct
import sys

SEED = 0x9747B28C
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct(("<" if sys.byteorder == "little" else ">") + "10I")


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK


def flow_hash(flow_key: bytes) -> int:
    h = SEED
    for w in _WORDS.unpack(flow_key[: _WORDS.size]):
        k = (w * 0xCC9E2D51) & _MASK
        k = (_rotl(k, 15) * 0x1B873593) & _MASK
        h ^= k
        h = (_rotl(h, 13) * 5 + 0xE6546B64) & _MASK
    h ^= _WORDS.size
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def ring_slot(flow_key: bytes, ring_size: int) -> int:
    return flow_hash(flow_key) % ring_size
