"""Parse and validate lb_conf.json into a Config.

Everything is checked before anything reaches the kernel, and every problem is
reported at once, each with the field's path (`vips[1].reals[0].mac`) and the
reason, so an operator fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import hashlib
import ipaddress
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, cast

from xdplbd.core.model import (
    HEALTHCHECK_TYPES,
    PROTOCOLS,
    XDP_MODES,
    BirdAnnounce,
    Config,
    HealthCheck,
    IPAddress,
    Metrics,
    Real,
    Tunables,
    Vip,
    VipKey,
)

MAX_RING_SIZE = 1_000_003  # a prime; each ring costs 8 bytes a slot in the kernel
MAX_REALS_LIMIT = 65535  # backend ids are u16 in the ring
MAX_WEIGHT = 1000
MAX_UDP_TIMEOUT = 64800  # 18 h: conntrack entries keep time in 16 bits of ~1.07 s ticks
RING_SLOTS_PER_REAL = 100  # Maglev paper: M >= 100 x N keeps shares within ~1%

_TOP_KEYS = ("interface", "xdp_mode", "extra_macs", "vips", "tunables", "metrics",
             "announce")
MAX_EXTRA_MACS = 8  # the data plane's lb_macs record holds this many (xdplbd/core/schema.py)
_ANNOUNCE_KEYS = ("bird",)
_BIRD_KEYS = ("file", "socket")
_VIP_KEYS = ("vip", "port", "protocol", "reals", "healthcheck")
_REAL_KEYS = ("ip", "mac", "weight", "healthcheck")
_HEALTHCHECK_KEYS = ("type", "port", "dsr", "path", "host", "expect", "send", "receive",
                     "interval", "timeout", "rise", "fall")
# Which check types a type-specific key applies to (the rest apply to all).
_HEALTHCHECK_ONLY = {"dsr": ("tcp",), "path": ("http",), "host": ("http",),
                     "expect": ("http",), "send": ("udp",), "receive": ("udp",)}
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0  # seconds
MIN_TIMEOUT = 0.01
MAX_RISE_FALL = 100
_TUNABLE_KEYS = ("max_vips", "max_reals", "conntrack_size", "ring_size", "udp_timeout")
_METRICS_KEYS = ("listen",)

# A string, or a comment (line, block, or an unterminated block to report).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|/\*.*?\*/|/\*', re.S)
_HTTP_PATH = re.compile(r"^/[\x21-\x7e]*$")  # printable ASCII, no blanks (one request line)
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})*$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. "vips[1].reals[0].mac"; "" for the whole document
    reason: str


class ConfigError(Exception):
    """The config is unusable; str() gives one `{source}: {path}: {reason}` line per error."""

    def __init__(self, source: str, errors: Sequence[FieldError]) -> None:
        self.source = source
        self.errors: List[FieldError] = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(
            f"{self.source}: {e.path}: {e.reason}" if e.path else f"{self.source}: {e.reason}"
            for e in self.errors
        )


class _Object(Dict[str, Any]):
    """A JSON object that remembers keys given twice (json keeps only the last)."""

    duplicates: List[str]


def _object_hook(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A plain dict, or an _Object naming its duplicate keys if it has any."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    dup = _Object()
    dup.duplicates = []
    for k, v in pairs:
        if k in dup:
            dup.duplicates.append(k)
        dup[k] = v
    return dup


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """For the fast path: a repeated key sends the document to the full validator."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Fallback
    return obj


class _NonFinite:
    """NaN, Infinity or -Infinity in the file: Python's json reads them, JSON has none."""

    def __init__(self, text: str) -> None:
        self.text = text


def _no_constants(text: str) -> Any:
    """For the fast path: NaN or Infinity sends the document to the full validator."""
    raise _Fallback


def config_digest(text: bytes) -> str:
    """sha256 hex of the raw file, recorded in state.toml."""
    return hashlib.sha256(text).hexdigest()


def read_config_file(path: str) -> Tuple[Config, str]:
    """Read and parse a config file; returns the Config and the digest of its bytes.

    Anything but a readable regular file of at most MAX_CONFIG_BYTES (a FIFO, a
    device, a socket, a directory, a symlink loop, a huge file) raises ConfigError
    with one line naming the file and the reason, and never blocks: a FIFO is
    refused before it is opened, and the file is opened non-blocking anyway in
    case it was swapped for one in between.
    """
    raw = read_config_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte order mark is accepted
    except UnicodeDecodeError as e:
        line, col = _line_col(raw[: e.start].decode("utf-8", "replace"), e.start)
        raise ConfigError(path, [FieldError(
            "", f"line {line} column {col}: not UTF-8 text (byte 0x{raw[e.start]:02x} at "
            f"offset {e.start})")]) from None
    return parse_config(text, path), config_digest(raw)


MAX_CONFIG_BYTES = 16 << 20  # 16 MiB: 65534 reals (tunables.max_reals' limit) take ~6 MB


def _not_regular(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file"


def read_config_bytes(path: str) -> bytes:
    """The bytes of the config file, or ConfigError naming the file and why not."""

    def fail(reason: str) -> ConfigError:
        return ConfigError(path, [FieldError("", reason)])

    def os_reason(e: OSError) -> str:
        if e.errno == errno.ELOOP:
            return "cannot read: a symbolic link loop (too many levels of symbolic links)"
        return f"cannot read: {e.strerror or e}"

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise fail(_not_regular(st.st_mode))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise fail(os_reason(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
            raise fail(_not_regular(st.st_mode))
        if st.st_size > MAX_CONFIG_BYTES:
            raise fail(f"is {st.st_size} bytes, over the limit of {MAX_CONFIG_BYTES} bytes")
        chunks = []
        total = 0
        while True:  # up to the limit, even if the file grows while we read
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_CONFIG_BYTES:
                raise fail(f"is over the limit of {MAX_CONFIG_BYTES} bytes")
            chunks.append(chunk)
    except OSError as e:
        raise fail(os_reason(e)) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def load_config(path: str) -> Config:
    """Read and parse a config file; unreadable files raise ConfigError too."""
    return read_config_file(path)[0]


def strip_comments(text: str) -> str:
    """Blank out // and /* */ comments outside strings, keeping line/column positions.

    Raises ValueError(message) for an unterminated block comment.
    """
    if "//" not in text and "/*" not in text:
        return text  # no comment can start anywhere (the common, generated, case)

    def blank(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok.startswith('"'):
            return tok
        if tok == "/*":
            line, col = _line_col(text, m.start())
            raise ValueError(f"line {line} column {col}: unterminated /* comment")
        # Keep newlines so json's line numbers still match the file.
        return re.sub(r"[^\n]", " ", tok)

    return _TOKENS.sub(blank, text)


def _line_col(text: str, pos: int) -> Tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def parse_config(text: str, source: str) -> Config:
    """Parse JSON-with-comments text into a Config, or raise ConfigError with all errors."""
    try:
        cfg = _parse_memoised(text)
    except RecursionError:
        cfg = None  # the full way names it
    if cfg is not None:
        return cfg
    try:
        doc = json.loads(strip_comments(text), object_pairs_hook=_object_hook,
                         parse_constant=_NonFinite)
    except RecursionError:
        raise ConfigError(source, [FieldError(
            "", "invalid JSON: nested too deeply (a config needs 5 levels)")]) from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            source, [FieldError("", f"line {e.lineno} column {e.colno}: invalid JSON: {e.msg}")]
        ) from None
    except ValueError as e:
        raise ConfigError(source, [FieldError("", f"invalid JSON: {e}")]) from None
    v = _Validator()
    cfg = v.document(doc)
    if v.errors or cfg is None:
        raise ConfigError(source, v.errors)
    return cfg


# -- the fast path: a per-VIP memo ----------------------------------------------------
#
# Validating a VIP on its own is a pure function of its JSON text: a VIP that
# passes gives the same Vip whatever surrounds it. A reload of a big config
# changes a VIP or two, so the fast path cuts the "vips" array into the text of
# each element (json's own scanner finds where each ends) and looks each text
# up in a memo of VIPs that passed, validating only the ones it has not seen.
# The checks across VIPs (duplicate VIPs, one MAC per real, the tunables'
# limits) run on every parse. Anything short of a clean pass (an invalid or
# unusual document, a repeated key, any error) goes through json.loads and the
# full validator, which name every error: both paths accept the same configs.


class _Fallback(Exception):
    """Leave the fast path: parse and validate the whole document the full way."""


class _VipTexts(List[str]):
    """The JSON text of each element of "vips", in order."""


@dataclass(frozen=True)
class _Checked:
    """A VIP that validated on its own, with what the cross-VIP checks need."""

    vip: Vip
    key: Tuple[str, int, str]  # VipKey with canonical address text
    ips: FrozenSet[int]  # its reals' addresses (_ip_number)
    macs: FrozenSet[int]  # each real's (address, MAC) as one number (_ip_mac_number)
    reals: int


# The cross-VIP checks keep a set of every real per VIP memoised; as numbers they
# take a third of the memory of the address texts (16,000 reals: ~2.5 MB less) and
# hash as fast. An IPv6 address and an IPv4 one never share a number.
def _ip_number(ip: IPAddress) -> int:
    return int(ip) | (ip.version == 6) << 128


def _ip_mac_number(ip: IPAddress, mac: Optional[str]) -> int:
    """A MAC is 48 bits; no MAC (a real resolved by ARP) is the number just past them."""
    return _ip_number(ip) << 49 | (int(mac.replace(":", ""), 16) if mac else 1 << 48)


_memo: Dict[str, _Checked] = {}
MEMO_SLACK = 64  # entries beyond twice the VIPs of the last parse before pruning
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as json.decoder has it
_Scan = Callable[[str, int], Tuple[Any, int]]  # json's scanner: (value, end index)
_scan_value: _Scan = cast(Any, json.JSONDecoder(parse_constant=_no_constants)).scan_once


def _skip(text: str, i: int) -> int:
    """The index of the first non-whitespace character from i."""
    m = _WS.match(text, i)
    return m.end() if m else i


def clear_memo() -> None:
    _memo.clear()


def _parse_memoised(text: str) -> Optional[Config]:
    """The Config by the fast path, or None to go the full way."""
    try:
        top = _top_level(strip_comments(text))
        if top is None:
            return None
        v = _Validator()
        cfg = v.document(top)
    except (_Fallback, ValueError, StopIteration):
        return None
    return cfg if cfg is not None and not v.errors else None


def _top_level(text: str) -> Optional[Dict[str, Any]]:
    """The top-level object, its "vips" array as _VipTexts; None unless the
    document is a plain object (no repeated key) whose "vips" is an array."""
    ws = _skip
    scan_dict: _Scan = cast(Any, json.JSONDecoder(object_pairs_hook=_no_duplicates,
                                                   parse_constant=_no_constants)).scan_once
    i = ws(text, 0)
    if text[i : i + 1] != "{":
        return None
    top: Dict[str, Any] = {}
    i = ws(text, i + 1)
    closed = text[i : i + 1] == "}"
    while not closed:
        if text[i : i + 1] != '"':
            return None
        key, i = scanstring(text, i + 1)
        i = ws(text, i)
        if key in top or text[i : i + 1] != ":":
            return None
        i = ws(text, i + 1)
        if key == "vips" and text[i : i + 1] == "[":
            top[key], i = _elements(text, i + 1)
        else:
            top[key], i = scan_dict(text, i)
        i = ws(text, i)
        sep = text[i : i + 1]
        if sep not in (",", "}"):
            return None
        closed = sep == "}"
        i = ws(text, i + 1)
    return top if i == len(text) else None


def _elements(text: str, i: int) -> Tuple[_VipTexts, int]:
    """The text of each element of the array whose "[" ends at i; and where it ends."""
    ws = _skip
    out = _VipTexts()
    i = ws(text, i)
    if text[i : i + 1] == "]":
        return out, i + 1
    while True:
        _value, end = _scan_value(text, i)
        out.append(text[i:end])
        i = ws(text, end)
        sep = text[i : i + 1]
        if sep == "]":
            return out, i + 1
        if sep != ",":
            raise _Fallback
        i = ws(text, i + 1)


def _check_alone(text: str) -> Optional[_Checked]:
    item = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    v = _Validator()
    vip = v.vip(item, "vips[0]", {})
    if vip is None or v.errors:
        return None
    k = vip.key
    return _Checked(vip, (str(k.addr), k.port, k.proto),
                    frozenset(_ip_number(r.ip) for r in vip.reals),
                    frozenset(_ip_mac_number(r.ip, r.mac) for r in vip.reals), len(vip.reals))


def _vips_memoised(texts: List[str], tun: Tunables) -> Optional[Tuple[Vip, ...]]:
    """The VIPs if every one and every cross-VIP check passes, else None."""
    checked: List[_Checked] = []
    for text in texts:
        c = _memo.get(text)
        if c is None:
            c = _check_alone(text)
            if c is None:
                return None
            _memo[text] = c
        checked.append(c)
    n = len(checked)
    if n > tun.max_vips or sum(c.reals for c in checked) > tun.max_reals - 1:
        return None
    if max((c.reals for c in checked), default=0) * RING_SLOTS_PER_REAL > tun.ring_size:
        return None
    if len({c.key for c in checked}) != n:
        return None  # a duplicate VIP
    ips: Set[int] = set().union(*(c.ips for c in checked))
    if len(set().union(*(c.macs for c in checked))) != len(ips):
        return None  # a real with two MACs
    if len(_memo) > 2 * n + MEMO_SLACK:
        used = dict(zip(texts, checked))
        _memo.clear()
        _memo.update(used)
    return tuple(c.vip for c in checked)


def _describe(value: Any) -> str:
    """How a JSON value is named in a type error."""
    if value is None:
        return "null"
    if isinstance(value, _NonFinite):
        return f"{value.text} (not a JSON number)"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"number {json.dumps(value)}"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def _valid_ifname(name: str) -> bool:
    # The kernel's dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or space.
    return (
        0 < len(name.encode()) <= 15
        and name not in (".", "..")
        and not any(c == "/" or c == ":" or c.isspace() for c in name)
    )


def _valid_hostname(host: str) -> bool:
    host = host[:-1] if host.endswith(".") else host
    return 0 < len(host) <= 253 and all(_HOST_LABEL.match(p) for p in host.split("."))


class _Validator:
    """Walks the parsed JSON, collecting FieldErrors instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: List[FieldError] = []

    def err(self, path: str, reason: str) -> None:
        self.errors.append(FieldError(path, reason))

    # -- generic checks -------------------------------------------------------

    def obj(self, value: Any, path: str, allowed: Sequence[str]) -> Optional[Dict[str, Any]]:
        """Check value is an object with only allowed keys; None if not an object."""
        if not isinstance(value, dict):
            self.err(path, f"must be an object, got {_describe(value)}")
            return None
        for k in getattr(value, "duplicates", ()):
            self.err(_join(path, k), f'key "{k}" is given more than once')
        for k in value:
            if k not in allowed:
                hint = difflib.get_close_matches(k, allowed, n=1)
                dym = f'; did you mean "{hint[0]}"?' if hint else ""
                self.err(
                    _join(path, k),
                    f'unknown key "{k}" (allowed: {", ".join(allowed)}){dym}',
                )
        return value

    def string(self, value: Any, path: str) -> Optional[str]:
        if not isinstance(value, str):
            self.err(path, f"must be a string, got {_describe(value)}")
            return None
        return value

    def integer(self, value: Any, path: str, lo: int, hi: Optional[int]) -> Optional[int]:
        # bool is a subclass of int in Python but not a number in the config.
        if isinstance(value, bool) or not isinstance(value, int):
            quoted = isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+(\.[0-9]*)?\s*", value)
            hint = " (write the number without quotes)" if quoted else ""
            self.err(path, f"must be an integer, got {_describe(value)}{hint}")
            return None
        if value < lo or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            self.err(path, f"{value} is out of range {rng}")
            return None
        return int(value)

    def address(self, value: Any, path: str) -> Optional[IPAddress]:
        s = self.string(value, path)
        if s is None:
            return None
        if "%" in s:
            self.err(path, f"{json.dumps(s)}: scoped IPv6 addresses are not supported")
            return None
        try:
            addr = ipaddress.ip_address(s)
        except ValueError:
            self.err(path, f"{json.dumps(s)} is not an IP address")
            return None
        if addr.is_unspecified:
            self.err(path, f"{json.dumps(s)} is the unspecified address")
        elif addr.is_multicast:
            self.err(path, f"{json.dumps(s)} is a multicast address")
        elif addr == ipaddress.IPv4Address("255.255.255.255"):
            self.err(path, f"{json.dumps(s)} is the broadcast address")
        else:
            return addr
        return None

    def mac(self, value: Any, path: str) -> Optional[str]:
        s = self.string(value, path)
        if s is None:
            return None
        if not _MAC.match(s):
            self.err(path, f"{json.dumps(s)} is not a MAC address")
            return None
        mac = s.lower().replace("-", ":")
        if mac == "ff:ff:ff:ff:ff:ff":
            self.err(path, f"{json.dumps(s)} is the broadcast MAC address")
        elif int(mac[:2], 16) & 1:
            self.err(path, f"{json.dumps(s)} is a multicast MAC address")
        elif mac == "00:00:00:00:00:00":
            self.err(path, f"{json.dumps(s)} is the all-zero MAC address")
        else:
            return sys.intern(mac)  # one string per MAC, however many VIPs list the real
        return None

    # -- sections ---------------------------------------------------------------

    def document(self, doc: Any) -> Optional[Config]:
        top = self.obj(doc, "", _TOP_KEYS)
        if top is None:
            return None
        interface: Optional[str] = None
        if "interface" in top:
            interface = self.string(top["interface"], "interface")
            if interface is not None and not _valid_ifname(interface):
                self.err(
                    "interface",
                    f"{json.dumps(interface)} is not a valid interface name "
                    '(1-15 characters, no "/", ":" or whitespace)',
                )
        xdp_mode = "auto"
        if "xdp_mode" in top:
            mode = self.string(top["xdp_mode"], "xdp_mode")
            if mode is not None and mode not in XDP_MODES:
                self.err(
                    "xdp_mode",
                    f"{json.dumps(mode)} is not an XDP mode (allowed: {', '.join(XDP_MODES)})",
                )
            elif mode is not None:
                xdp_mode = mode
        tunables, tun_ok = self.tunables(top.get("tunables"), "tunables" in top)
        metrics = self.metrics(top["metrics"]) if "metrics" in top else Metrics()
        bird = self.announce(top["announce"]) if "announce" in top else None
        extra_macs = self.extra_macs(top["extra_macs"]) if "extra_macs" in top else ()
        if "vips" not in top:
            self.err("vips", "is required")
            return None
        vips = self.vips(top["vips"], tunables, tun_ok)
        if vips is None:
            return None
        return Config(
            vips=vips,
            interface=interface,
            xdp_mode=xdp_mode,
            tunables=tunables,
            metrics=metrics,
            bird=bird,
            extra_macs=extra_macs,
        )

    def extra_macs(self, value: Any) -> Tuple[str, ...]:
        """MACs besides the interface's that the data plane balances frames to."""
        if not isinstance(value, list):
            self.err("extra_macs", f"must be a list of MAC addresses, got {_describe(value)}")
            return ()
        if len(value) > MAX_EXTRA_MACS:
            self.err("extra_macs", f"has {len(value)} MAC addresses; at most {MAX_EXTRA_MACS}")
            return ()
        macs: List[str] = []
        for i, item in enumerate(value):
            mac = self.mac(item, f"extra_macs[{i}]")
            if mac is None:
                continue
            if mac in macs:
                self.err(f"extra_macs[{i}]", f'"{mac}" is listed twice')
                continue
            macs.append(mac)
        return tuple(macs)

    def tunables(self, value: Any, given: bool) -> Tuple[Tunables, Dict[str, bool]]:
        """The tunables, and which of them are valid (cross-checks skip the rest)."""
        default = Tunables()
        ok = {k: True for k in _TUNABLE_KEYS}
        if not given:
            return default, ok
        obj = self.obj(value, "tunables", _TUNABLE_KEYS)
        if obj is None:
            return default, {k: False for k in _TUNABLE_KEYS}
        limits: Dict[str, Tuple[int, Optional[int]]] = {
            "max_vips": (1, None),
            "max_reals": (1, MAX_REALS_LIMIT),
            "conntrack_size": (1, None),
            "ring_size": (1, MAX_RING_SIZE),
            "udp_timeout": (1, MAX_UDP_TIMEOUT),
        }
        vals: Dict[str, int] = {}
        for key, (lo, hi) in limits.items():
            if key not in obj:
                vals[key] = getattr(default, key)
                continue
            n = self.integer(obj[key], f"tunables.{key}", lo, hi)
            if n is None:
                ok[key] = False
                vals[key] = getattr(default, key)
            else:
                vals[key] = n
        if ok["ring_size"] and not _is_prime(vals["ring_size"]):
            self.err("tunables.ring_size", f"{vals['ring_size']} is not prime")
            ok["ring_size"] = False
        return Tunables(**vals), ok

    def metrics(self, value: Any) -> Metrics:
        obj = self.obj(value, "metrics", _METRICS_KEYS)
        if obj is None or "listen" not in obj:
            return Metrics()
        listen = self.string(obj["listen"], "metrics.listen")
        if listen is None:
            return Metrics()
        reason = _listen_problem(listen)
        if reason:
            self.err("metrics.listen", f"{json.dumps(listen)}: {reason}")
            return Metrics()
        return Metrics(listen=listen)

    def announce(self, value: Any) -> Optional[BirdAnnounce]:
        obj = self.obj(value, "announce", _ANNOUNCE_KEYS)
        if obj is None or "bird" not in obj:
            return None
        bird = self.obj(obj["bird"], "announce.bird", _BIRD_KEYS)
        if bird is None:
            return None
        if "file" not in bird:
            self.err("announce.bird.file", "is required")
            return None
        paths: Dict[str, str] = {}
        for key in _BIRD_KEYS:
            if key not in bird:
                continue
            path = f"announce.bird.{key}"
            s = self.string(bird[key], path)
            if s is None:
                return None
            if not s.startswith("/") or "\0" in s or s.endswith("/"):
                self.err(path, f"{json.dumps(s)} is not an absolute file path")
                return None
            paths[key] = s
        return BirdAnnounce(**paths)

    def vips(self, value: Any, tun: Tunables, tun_ok: Dict[str, bool]) -> Optional[Tuple[Vip, ...]]:
        if isinstance(value, _VipTexts):  # the fast path
            fast = _vips_memoised(value, tun) if all(tun_ok.values()) else None
            if fast is None:
                raise _Fallback
            return fast
        if not isinstance(value, list):
            self.err("vips", f"must be an array, got {_describe(value)}")
            return None
        vips: List[Vip] = []
        seen_vip: Dict[VipKey, int] = {}
        # real ip -> (normalised mac or None, path of its first occurrence)
        seen_mac: Dict[IPAddress, Tuple[Optional[str], str]] = {}
        total_reals = 0
        for i, item in enumerate(value):
            path = f"vips[{i}]"
            n_reals = (
                len(item["reals"])
                if isinstance(item, dict) and isinstance(item.get("reals"), list)
                else 0
            )
            total_reals += n_reals
            if tun_ok["ring_size"] and n_reals * RING_SLOTS_PER_REAL > tun.ring_size:
                self.err(
                    f"{path}.reals",
                    f"{n_reals} real{'s' if n_reals != 1 else ''} need"
                    f"{'s' if n_reals == 1 else ''} tunables.ring_size >= "
                    f"{RING_SLOTS_PER_REAL} x {n_reals} = {n_reals * RING_SLOTS_PER_REAL} "
                    f"(a prime; it is {tun.ring_size})",
                )
            vip = self.vip(item, path, seen_mac)
            if vip is None:
                continue
            if vip.key in seen_vip:
                self.err(path, f"duplicate of vips[{seen_vip[vip.key]}] ({vip.key})")
                continue
            seen_vip[vip.key] = i
            vips.append(vip)
        if tun_ok["max_vips"] and len(value) > tun.max_vips:
            self.err("vips", f"{len(value)} VIPs exceed tunables.max_vips = {tun.max_vips}")
        if tun_ok["max_reals"] and total_reals > tun.max_reals - 1:
            self.err(
                "vips",
                f"{total_reals} reals in total exceed tunables.max_reals - 1 = "
                f"{tun.max_reals - 1} (backend id 0 is reserved)",
            )
        return tuple(vips)

    def vip(
        self, value: Any, path: str, seen_mac: Dict[IPAddress, Tuple[Optional[str], str]]
    ) -> Optional[Vip]:
        obj = self.obj(value, path, _VIP_KEYS)
        if obj is None:
            return None
        ok = True
        for key in _VIP_KEYS:
            if key not in obj and key != "healthcheck":
                self.err(f"{path}.{key}", "is required")
                ok = False
        addr = self.address(obj["vip"], f"{path}.vip") if "vip" in obj else None
        port = self.integer(obj["port"], f"{path}.port", 1, 65535) if "port" in obj else None
        proto: Optional[str] = None
        if "protocol" in obj:
            p = self.string(obj["protocol"], f"{path}.protocol")
            if p is not None and p.lower() not in PROTOCOLS:
                self.err(
                    f"{path}.protocol",
                    f"{json.dumps(p)} is not a protocol (allowed: {', '.join(PROTOCOLS)})",
                )
            elif p is not None:
                proto = p.lower()
        check: Optional[HealthCheck] = None
        if "healthcheck" in obj:
            check = self.healthcheck(obj["healthcheck"], f"{path}.healthcheck", None)
            if check is None:
                ok = False
        reals: Optional[Tuple[Real, ...]] = None
        if "reals" in obj:
            # A VIP check already reported invalid: judge the reals' overrides on the
            # defaults rather than report their missing "type" too.
            base = check if check is not None or "healthcheck" not in obj else HealthCheck()
            reals = self.reals(obj["reals"], f"{path}.reals", addr, seen_mac, base)
        if not ok or addr is None or port is None or proto is None or reals is None:
            return None
        return Vip(key=VipKey(addr=addr, port=port, proto=proto), reals=reals, healthcheck=check)

    def healthcheck(self, value: Any, path: str,
                    base: Optional[HealthCheck]) -> Optional[HealthCheck]:
        """A "healthcheck" object; a real's overrides the keys it gives of its VIP's (base)."""
        obj = self.obj(value, path, _HEALTHCHECK_KEYS)
        if obj is None:
            return None
        n = len(self.errors)
        vals: Dict[str, Any] = {}
        if "type" in obj:
            t = self.string(obj["type"], f"{path}.type")
            if t is not None and t not in HEALTHCHECK_TYPES:
                self.err(f"{path}.type", f"{json.dumps(t)} is not a check type "
                         f"(allowed: {', '.join(HEALTHCHECK_TYPES)})")
            elif t is not None:
                vals["type"] = t
        elif base is None:
            self.err(f"{path}.type", f"is required ({', '.join(HEALTHCHECK_TYPES)})")
        if "port" in obj:
            vals["port"] = self.integer(obj["port"], f"{path}.port", 1, 65535)
        if "dsr" in obj:
            if isinstance(obj["dsr"], bool):
                vals["dsr"] = obj["dsr"]
            else:
                self.err(f"{path}.dsr", f"must be true or false, got {_describe(obj['dsr'])}")
        if "path" in obj:
            p = self.string(obj["path"], f"{path}.path")
            if p is not None and not _HTTP_PATH.match(p):
                self.err(f"{path}.path", f"{json.dumps(p)} must start with / and hold no "
                         "blanks or control characters")
            vals["path"] = p
        if "host" in obj:
            h = self.string(obj["host"], f"{path}.host")
            if h is not None and not _valid_hostname(h) and not _is_ip(h):
                self.err(f"{path}.host", f"{json.dumps(h)} is not a hostname or IP address")
            vals["host"] = h
        if "expect" in obj:
            vals["expect"] = self.expect(obj["expect"], f"{path}.expect")
        for key in ("send", "receive"):
            if key in obj:
                v = self.string(obj[key], f"{path}.{key}")
                if v is not None and v.startswith("hex:") and not _HEX.match(v[4:]):
                    self.err(f"{path}.{key}", f"{json.dumps(v)}: after \"hex:\" give pairs of "
                             "hex digits")
                vals[key] = v
        if "interval" in obj:
            vals["interval"] = self.seconds(obj["interval"], f"{path}.interval",
                                            MIN_INTERVAL, MAX_INTERVAL)
        if "timeout" in obj:
            vals["timeout"] = self.seconds(obj["timeout"], f"{path}.timeout",
                                           MIN_TIMEOUT, MAX_INTERVAL)
        for key in ("rise", "fall"):
            if key in obj:
                vals[key] = self.integer(obj[key], f"{path}.{key}", 1, MAX_RISE_FALL)
        if len(self.errors) > n:
            return None
        check = dataclasses.replace(base or HealthCheck(), **vals)
        for key in obj:
            allowed = _HEALTHCHECK_ONLY.get(key)
            if allowed and check.type not in allowed:
                self.err(f"{path}.{key}", f"applies to type {' or '.join(allowed)} only "
                         f"(this check is {check.type})")
        if check.timeout >= check.interval:
            where = "timeout" if "timeout" in obj else "interval"
            self.err(f"{path}.{where}", f"timeout {check.timeout:g} s must be shorter than "
                     f"interval {check.interval:g} s")
        return None if len(self.errors) > n else check

    def seconds(self, value: Any, path: str, lo: float, hi: float) -> Optional[float]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.err(path, f"must be a number of seconds, got {_describe(value)}")
            return None
        if not lo <= value <= hi:
            self.err(path, f"{value:g} is out of range {lo:g}..{hi:g} s")
            return None
        return float(value)

    def expect(self, value: Any, path: str) -> Optional[Tuple[int, int]]:
        """An HTTP status (200) or an inclusive range ([200, 399])."""
        if isinstance(value, int) and not isinstance(value, bool):
            code = self.integer(value, path, 100, 599)
            return None if code is None else (code, code)
        if not isinstance(value, list) or len(value) != 2:
            self.err(path, f"must be a status code or [lowest, highest], got {_describe(value)}")
            return None
        lo = self.integer(value[0], f"{path}[0]", 100, 599)
        hi = self.integer(value[1], f"{path}[1]", 100, 599)
        if lo is None or hi is None:
            return None
        if lo > hi:
            self.err(path, f"[{lo}, {hi}]: the lowest code is above the highest")
            return None
        return (lo, hi)

    def reals(
        self,
        value: Any,
        path: str,
        vip_addr: Optional[IPAddress],
        seen_mac: Dict[IPAddress, Tuple[Optional[str], str]],
        check: Optional[HealthCheck] = None,
    ) -> Optional[Tuple[Real, ...]]:
        if not isinstance(value, list):
            self.err(path, f"must be an array, got {_describe(value)}")
            return None
        reals: List[Real] = []
        seen_ip: Dict[IPAddress, int] = {}
        ok = True
        for j, item in enumerate(value):
            rpath = f"{path}[{j}]"
            real = self.real(item, rpath, check)
            if real is None:
                ok = False
                continue
            if vip_addr is not None and real.ip.version != vip_addr.version:
                self.err(
                    f"{rpath}.ip",
                    f'"{real.ip}" is IPv{real.ip.version} but the VIP is IPv{vip_addr.version}',
                )
                ok = False
            if real.ip in seen_ip:
                self.err(f"{rpath}.ip", f'"{real.ip}" duplicates {path}[{seen_ip[real.ip]}]')
                ok = False
                continue
            seen_ip[real.ip] = j
            # One host has one MAC: the same real under two VIPs must agree, given
            # everywhere or nowhere (then the neighbour table gives it).
            if real.ip in seen_mac:
                mac, where = seen_mac[real.ip]
                if mac != real.mac:
                    if real.mac is None:
                        why = (f'is missing, but {where} gives {real.ip} the MAC "{mac}" '
                               "(give the same mac everywhere, or none)")
                    elif mac is None:
                        why = (f'"{real.mac}" is given, but {where} gives {real.ip} no mac '
                               "(give the same mac everywhere, or none)")
                    else:
                        why = f'"{real.mac}" differs from the MAC of {real.ip} in {where} ("{mac}")'
                    self.err(f"{rpath}.mac", why)
                    ok = False
            else:
                seen_mac[real.ip] = (real.mac, rpath)
            reals.append(real)
        return tuple(reals) if ok else None

    def real(self, value: Any, path: str, check: Optional[HealthCheck] = None) -> Optional[Real]:
        obj = self.obj(value, path, _REAL_KEYS)
        if obj is None:
            return None
        ip: Optional[IPAddress] = None
        mac: Optional[str] = None
        if "ip" not in obj:
            self.err(f"{path}.ip", "is required")
        if "ip" in obj:
            ip = self.address(obj["ip"], f"{path}.ip")
        mac_ok = True
        if "mac" in obj:  # optional: without it, the neighbour table gives the MAC
            mac = self.mac(obj["mac"], f"{path}.mac")
            mac_ok = mac is not None
        weight: Optional[int] = 1
        if "weight" in obj:
            weight = self.integer(obj["weight"], f"{path}.weight", 0, MAX_WEIGHT)
        if "healthcheck" in obj:
            own = self.healthcheck(obj["healthcheck"], f"{path}.healthcheck", check)
            if own is None:
                return None
            check = own
        if ip is None or not mac_ok or weight is None:
            return None
        return Real(ip=ip, mac=mac, weight=weight, healthcheck=check)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _listen_problem(listen: str) -> str:
    """Why a metrics listen address is unusable, or "" if it is fine."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
        if not sep:
            return 'is not "[IPv6]:port"'
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{json.dumps(host)} is not an IPv6 address"
    else:
        host, sep, port = listen.rpartition(":")
        if not sep:
            return 'is not "host:port"'
        if ":" in host:
            return "IPv6 addresses need brackets, e.g. [::1]:9110"
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _valid_hostname(host) or host.replace(".", "").isdigit():
                return f"{json.dumps(host)} is not an IP address or hostname"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"port {json.dumps(port)} is not in 1..65535"
    return ""
