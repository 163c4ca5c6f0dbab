"""The data plane's flow hash (bpf/xdplb.c flow_hash), for `xdplb explain` and tests.

The 40-byte flow key read as five host-order 64-bit words, summed with odd
multipliers, then the MurmurHash3 64-bit finalizer. The ring slot is the low
half times M >> 32 (a multiply instead of hash % M's divide); the conntrack
bucket and tag come from the whole hash (xdplbd/conntrack.py).
"""

from __future__ import annotations

import struct
import sys

SEED = 0x9747B28C
PRIMES = (
    0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
    0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5,
)
_MASK64 = (1 << 64) - 1
_WORDS = struct.Struct(("<" if sys.byteorder == "little" else ">") + "5Q")


def flow_hash(flow_key: bytes) -> int:
    h = SEED
    for w, p in zip(_WORDS.unpack(flow_key[: _WORDS.size]), PRIMES):
        h = (h + w * p) & _MASK64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    h ^= h >> 33
    return h


def slot_of_hash(hash64: int, ring_size: int) -> int:
    """ring_pick(): the hash's low half spread over M slots."""
    return ((hash64 & 0xFFFFFFFF) * ring_size) >> 32


def ring_slot(flow_key: bytes, ring_size: int) -> int:
    return slot_of_hash(flow_hash(flow_key), ring_size)
