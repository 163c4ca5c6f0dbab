"""lb_conf.json parsing and validation: every error names the field path and the reason."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from xdplbd.core import config
from xdplbd.core.config import ConfigError, config_digest, load_config, parse_config, strip_comments
from xdplbd.core.model import Tunables, VipKey

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SRC = "/etc/xdplb/lb_conf.json"


def base() -> Dict[str, Any]:
    return {
        "vips": [
            {
                "vip": "10.0.0.100",
                "port": 80,
                "protocol": "tcp",
                "reals": [
                    {"ip": "10.0.0.11", "mac": "00:0c:29:36:09:78"},
                    {"ip": "10.0.0.12", "mac": "00:0c:29:10:5b:36", "weight": 2},
                ],
            },
            {
                "vip": "10.0.0.101",
                "port": 53,
                "protocol": "udp",
                "reals": [{"ip": "10.0.0.13", "mac": "00:0c:29:aa:bb:cc"}],
            },
        ]
    }


def errors(doc: Any) -> List[str]:
    """The error lines for a document (dict -> JSON text), asserting it is rejected."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(ConfigError) as ei:
        parse_config(text, SRC)
    lines = str(ei.value).splitlines()
    assert len(lines) == len(ei.value.errors)
    return lines


def mutated(fn: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    doc = copy.deepcopy(base())
    fn(doc)
    return doc


# -- accepted -------------------------------------------------------------------


def test_original_readme_example_parses_verbatim() -> None:
    cfg = load_config(str(FIXTURES / "original_readme.json"))
    assert len(cfg.vips) == 1
    vip = cfg.vips[0]
    assert vip.key == VipKey(ipaddress.ip_address("192.168.75.105"), 8080, "tcp")
    assert [str(r.ip) for r in vip.reals] == ["192.168.75.18", "192.168.75.92"]
    assert [r.mac for r in vip.reals] == ["00:0c:29:36:09:78", "00:0c:29:10:5b:36"]
    assert all(r.weight == 1 for r in vip.reals)
    assert cfg.interface is None and cfg.xdp_mode == "auto"
    assert cfg.tunables == Tunables()
    assert cfg.metrics.listen is None


def test_full_document_and_normalisation() -> None:
    doc = {
        "interface": "ens160",
        "xdp_mode": "native",
        "tunables": {
            "max_vips": 16,
            "max_reals": 256,
            "conntrack_size": 1000,
            "ring_size": 251,
            "udp_timeout": 60,
        },
        "metrics": {"listen": "[::1]:9110"},
        "vips": [
            {
                "vip": "2001:DB8::1",
                "port": 443,
                "protocol": "TCP",
                "reals": [{"ip": "2001:db8::a", "mac": "00-0C-29-AA-BB-CC", "weight": 0}],
            },
            {"vip": "10.0.0.1", "port": 80, "protocol": "Udp", "reals": []},
        ],
    }
    cfg = parse_config(json.dumps(doc), SRC)
    assert cfg.interface == "ens160" and cfg.xdp_mode == "native"
    assert cfg.tunables == Tunables(16, 256, 1000, 251, 60)
    assert cfg.metrics.listen == "[::1]:9110"
    v6, v4 = cfg.vips
    assert str(v6.key) == "[2001:db8::1]:443/tcp"
    assert v6.reals[0].mac == "00:0c:29:aa:bb:cc" and v6.reals[0].weight == 0
    assert v4.key.proto == "udp" and v4.reals == ()


def test_empty_vip_list_is_valid() -> None:
    assert parse_config('{"vips": []}', SRC).vips == ()


def test_comments_in_all_forms() -> None:
    text = """// leading line comment
    {
      /* block */ "vips": [ /* multi
         line
         block */
        { "vip": "10.0.0.100", // trailing
          "port": 80, "protocol": /* inline */ "tcp",
          "reals": [] }
      ]
    } // last line, no newline at end"""
    assert len(parse_config(text, SRC).vips) == 1


def test_comment_markers_inside_strings_are_kept() -> None:
    text = '{"a": "http://x /* y */ z", "b": "\\"//"} // gone /* also gone */'
    assert json.loads(strip_comments(text)) == {"a": "http://x /* y */ z", "b": '"//'}
    # ... and so they reach validation untouched.
    (line,) = errors('{"vips": [], "interface": "http://x"}')
    assert '"http://x" is not a valid interface name' in line


def test_comment_blanking_keeps_positions() -> None:
    text = '{ /* a\nb */ "vips": [}'
    (line,) = errors(text)
    assert line.startswith(f"{SRC}: line 2 column ")


def test_unterminated_block_comment() -> None:
    (line,) = errors('{"vips": []}\n  /* oops')
    assert line == f"{SRC}: invalid JSON: line 2 column 3: unterminated /* comment"


def test_json_syntax_error_has_line_and_column() -> None:
    (line,) = errors('{\n  "vips": [\n    {"vip" "10.0.0.1"}\n  ]\n}')
    assert line == f"{SRC}: line 3 column 12: invalid JSON: Expecting ':' delimiter"


def test_trailing_comma_rejected() -> None:
    (line,) = errors('{"vips": [],}')
    assert "line 1 column 13: invalid JSON" in line


def test_top_level_must_be_object() -> None:
    assert errors("[]") == [f"{SRC}: must be an object, got an array"]


def test_vips_required() -> None:
    assert errors("{}") == [f"{SRC}: vips: is required"]


# -- every error class: exact path and reason -----------------------------------


def _set(path: List[Any], value: Any) -> Callable[[Dict[str, Any]], None]:
    def fn(doc: Dict[str, Any]) -> None:
        node: Any = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return fn


def _del(path: List[Any]) -> Callable[[Dict[str, Any]], None]:
    def fn(doc: Dict[str, Any]) -> None:
        node: Any = doc
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]

    return fn


R0 = ["vips", 1, "reals", 0]

CASES = [
    # (mutation, path, reason)
    (
        _set(["wat"], 1),
        "wat",
        'unknown key "wat" (allowed: interface, xdp_mode, extra_macs, vips, tunables, metrics, '
        'announce)',
    ),
    (_set(["vips", 0, "prot"], "tcp"), "vips[0].prot", 'unknown key "prot"'),
    (_set(["interface"], "eth0:1"), "interface", '"eth0:1" is not a valid interface name'),
    (_set(["interface"], "a" * 16), "interface", "is not a valid interface name"),
    (_set(["interface"], "eth 0"), "interface", "is not a valid interface name"),
    (_set(["interface"], ""), "interface", "is not a valid interface name"),
    (_set(["interface"], 3), "interface", "must be a string, got number 3"),
    (
        _set(["xdp_mode"], "fast"),
        "xdp_mode",
        '"fast" is not an XDP mode (allowed: native, generic, auto)',
    ),
    (_set(["vips"], {}), "vips", "must be an array, got an object"),
    (_set(["vips", 0], "x"), "vips[0]", 'must be an object, got string "x"'),
    (_del(["vips", 0, "port"]), "vips[0].port", "is required"),
    (_set(["vips", 0, "vip"], "10.0.0.300"), "vips[0].vip", '"10.0.0.300" is not an IP address'),
    (_set(["vips", 0, "vip"], "0.0.0.0"), "vips[0].vip", '"0.0.0.0" is the unspecified address'),
    (_set(["vips", 0, "vip"], "::"), "vips[0].vip", '"::" is the unspecified address'),
    (_set(["vips", 0, "vip"], "224.0.0.1"), "vips[0].vip", '"224.0.0.1" is a multicast address'),
    (
        _set(["vips", 0, "vip"], "fe80::1%eth0"),
        "vips[0].vip",
        "scoped IPv6 addresses are not supported",
    ),
    (_set(["vips", 0, "vip"], 167772260), "vips[0].vip", "must be a string, got number 167772260"),
    (_set(["vips", 0, "port"], 0), "vips[0].port", "0 is out of range 1..65535"),
    (_set(["vips", 0, "port"], 65536), "vips[0].port", "65536 is out of range 1..65535"),
    (_set(["vips", 0, "port"], "80"), "vips[0].port", 'must be an integer, got string "80"'),
    (_set(["vips", 0, "port"], 80.0), "vips[0].port", "must be an integer, got number 80.0"),
    (_set(["vips", 0, "port"], True), "vips[0].port", "must be an integer, got boolean true"),
    (
        _set(["vips", 0, "protocol"], "sctp"),
        "vips[0].protocol",
        '"sctp" is not a protocol (allowed: tcp, udp)',
    ),
    (_set(["vips", 0, "reals"], None), "vips[0].reals", "must be an array, got null"),
    (
        _set([*R0, "mac"], "00:0c:29:zz:09:78"),
        "vips[1].reals[0].mac",
        '"00:0c:29:zz:09:78" is not a MAC address',
    ),
    (_set([*R0, "mac"], "00:0c:29-aa:bb:cc"), "vips[1].reals[0].mac", "is not a MAC address"),
    (
        _set([*R0, "mac"], "ff:ff:ff:ff:ff:ff"),
        "vips[1].reals[0].mac",
        "is the broadcast MAC address",
    ),
    (_set([*R0, "mac"], "01:00:5e:00:00:01"), "vips[1].reals[0].mac", "is a multicast MAC address"),
    (
        _set([*R0, "mac"], "00:00:00:00:00:00"),
        "vips[1].reals[0].mac",
        "is the all-zero MAC address",
    ),
    (_set([*R0, "ip"], "ff02::1"), "vips[1].reals[0].ip", '"ff02::1" is a multicast address'),
    (
        _set([*R0, "ip"], "2001:db8::1"),
        "vips[1].reals[0].ip",
        '"2001:db8::1" is IPv6 but the VIP is IPv4',
    ),
    (_set([*R0, "weight"], 1001), "vips[1].reals[0].weight", "1001 is out of range 0..1000"),
    (_set([*R0, "weight"], -1), "vips[1].reals[0].weight", "-1 is out of range 0..1000"),
    (_set([*R0, "weight"], 1.5), "vips[1].reals[0].weight", "must be an integer, got number 1.5"),
    (_set(["tunables"], []), "tunables", "must be an object, got an array"),
    (_set(["tunables"], {"ring_size": 65536}), "tunables.ring_size", "65536 is not prime"),
    (
        _set(["tunables"], {"ring_size": 1000033}),
        "tunables.ring_size",
        "1000033 is out of range 1..1000003",
    ),
    (
        _set(["tunables"], {"max_reals": 65536}),
        "tunables.max_reals",
        "65536 is out of range 1..65535",
    ),
    (_set(["tunables"], {"max_vips": 0}), "tunables.max_vips", "0 is out of range >= 1"),
    (
        _set(["tunables"], {"conntrack_size": -5}),
        "tunables.conntrack_size",
        "-5 is out of range >= 1",
    ),
    (_set(["tunables"], {"udp_timeout": 0}), "tunables.udp_timeout", "0 is out of range 1..64800"),
    (
        _set(["tunables"], {"udp_timeout": 64801}),
        "tunables.udp_timeout",
        "64801 is out of range 1..64800",
    ),
    (
        _set(["tunables"], {"ring_size": "65537"}),
        "tunables.ring_size",
        'must be an integer, got string "65537"',
    ),
    (_set(["tunables"], {"maxvips": 1}), "tunables.maxvips", 'did you mean "max_vips"?'),
    (
        _set(["metrics"], {"listen": "::1:9110"}),
        "metrics.listen",
        "IPv6 addresses need brackets, e.g. [::1]:9110",
    ),
    (_set(["metrics"], {"listen": "localhost"}), "metrics.listen", 'is not "host:port"'),
    (_set(["metrics"], {"listen": "127.0.0.1:0"}), "metrics.listen", 'port "0" is not in 1..65535'),
    (_set(["metrics"], {"listen": "[::g]:9110"}), "metrics.listen", '"::g" is not an IPv6 address'),
    (
        _set(["metrics"], {"listen": "10.0.0.300:9110"}),
        "metrics.listen",
        "is not an IP address or hostname",
    ),
    (
        _set(["metrics"], {"listen": "bad_host:9110"}),
        "metrics.listen",
        "is not an IP address or hostname",
    ),
    (_set(["metrics"], {"port": 1}), "metrics.port", 'unknown key "port" (allowed: listen)'),
]


@pytest.mark.parametrize(("mutation", "path", "reason"), CASES)
def test_error_names_path_and_reason(
    mutation: Callable[[Dict[str, Any]], None], path: str, reason: str
) -> None:
    lines = errors(mutated(mutation))
    assert any(line.startswith(f"{SRC}: {path}: ") and reason in line for line in lines), lines


def test_exact_message_format() -> None:
    lines = errors(mutated(_set([*R0, "mac"], "00:0c:29:zz:09:78")))
    assert lines == [f'{SRC}: vips[1].reals[0].mac: "00:0c:29:zz:09:78" is not a MAC address']


def test_unknown_key_typo_weight() -> None:
    doc = mutated(_set(["vips", 0, "reals", 1, "wieght"], 2))
    assert errors(doc) == [
        f'{SRC}: vips[0].reals[1].wieght: unknown key "wieght" '
        '(allowed: ip, mac, weight, healthcheck); did you mean "weight"?'
    ]


def test_duplicate_json_key_rejected() -> None:
    text = '{"vips": [], "xdp_mode": "auto", "xdp_mode": "native"}'
    assert errors(text) == [f'{SRC}: xdp_mode: key "xdp_mode" is given more than once']


def test_duplicate_vip_names_both_indices() -> None:
    def fn(doc: Dict[str, Any]) -> None:
        dup = copy.deepcopy(doc["vips"][0])
        dup["protocol"] = "TCP"
        dup["reals"] = []
        doc["vips"].append(dup)

    assert errors(mutated(fn)) == [f"{SRC}: vips[2]: duplicate of vips[0] (10.0.0.100:80/tcp)"]


def test_same_addr_port_other_protocol_is_not_a_duplicate() -> None:
    doc = base()
    doc["vips"][1].update(vip="10.0.0.100", port=80)
    assert len(parse_config(json.dumps(doc), SRC).vips) == 2


def test_duplicate_real_ip_within_vip() -> None:
    def fn(doc: Dict[str, Any]) -> None:
        doc["vips"][0]["reals"].append({"ip": "10.0.0.11", "mac": "00:0c:29:36:09:78"})

    assert errors(mutated(fn)) == [
        f'{SRC}: vips[0].reals[2].ip: "10.0.0.11" duplicates vips[0].reals[0]'
    ]


def test_same_real_in_two_vips_needs_same_mac() -> None:
    def fn(doc: Dict[str, Any]) -> None:
        doc["vips"][1]["reals"].append({"ip": "10.0.0.11", "mac": "00:0C:29:36:09:78"})

    parse_config(json.dumps(mutated(fn)), SRC)  # same MAC (after normalising): fine

    def bad(doc: Dict[str, Any]) -> None:
        doc["vips"][1]["reals"].append({"ip": "10.0.0.11", "mac": "00:0c:29:00:00:01"})

    assert errors(mutated(bad)) == [
        f'{SRC}: vips[1].reals[1].mac: "00:0c:29:00:00:01" differs from the MAC of '
        '10.0.0.11 in vips[0].reals[0] ("00:0c:29:36:09:78")'
    ]


def test_too_many_vips() -> None:
    doc = mutated(_set(["tunables"], {"max_vips": 1}))
    assert errors(doc) == [f"{SRC}: vips: 2 VIPs exceed tunables.max_vips = 1"]


def test_too_many_reals_in_total() -> None:
    doc = mutated(_set(["tunables"], {"max_reals": 3}))  # ids 1..2, 3 reals
    assert errors(doc) == [
        f"{SRC}: vips: 3 reals in total exceed tunables.max_reals - 1 = 2 "
        "(backend id 0 is reserved)"
    ]
    parse_config(json.dumps(mutated(_set(["tunables"], {"max_reals": 4}))), SRC)


def test_ring_too_small_for_reals() -> None:
    doc = mutated(_set(["tunables"], {"ring_size": 199}))  # < 100 x 2 reals of vips[0]
    assert errors(doc) == [
        f"{SRC}: vips[0].reals: 2 reals need tunables.ring_size >= 100 x 2 = 200 "
        "(a prime; it is 199)"
    ]
    parse_config(json.dumps(mutated(_set(["tunables"], {"ring_size": 211}))), SRC)


def test_all_errors_reported_together() -> None:
    def fn(doc: Dict[str, Any]) -> None:
        doc["xdp_mode"] = "turbo"
        doc["vips"][0]["port"] = 0
        doc["vips"][0]["reals"][1]["mac"] = "nope"
        doc["vips"][1]["protocol"] = "icmp"
        doc["vips"][1]["reals"][0]["wieght"] = 1

    lines = errors(mutated(fn))
    paths = [line.split(": ")[1] for line in lines]
    assert paths == [
        "xdp_mode",
        "vips[0].port",
        "vips[0].reals[1].mac",
        "vips[1].protocol",
        "vips[1].reals[0].wieght",
    ]


def test_metrics_listen_forms_accepted() -> None:
    for listen in ("127.0.0.1:9110", "[::1]:9110", "localhost:9110", "lb-1.example.com:80"):
        cfg = parse_config(json.dumps({"vips": [], "metrics": {"listen": listen}}), SRC)
        assert cfg.metrics.listen == listen


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as ei:
        load_config(str(missing))
    assert str(ei.value) == f"{missing}: cannot read: No such file or directory"


def test_load_config_reads_file(tmp_path: Path) -> None:
    p = tmp_path / "lb_conf.json"
    p.write_text('{"vips": [] /* none yet */}')
    assert load_config(str(p)).vips == ()


def test_config_digest() -> None:
    assert config_digest(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


# -- the per-VIP memo: a reload looks unchanged VIPs up instead of validating them ----------


def _cold(text: str) -> List[str]:
    """Errors (or [] if accepted) of a parse with an empty memo."""
    config.clear_memo()
    return _outcome(text)


def _outcome(text: str) -> List[str]:
    try:
        parse_config(text, SRC)
    except ConfigError as e:
        return str(e).splitlines()
    return []


def test_memo_gives_the_same_config_and_reuses_unchanged_vips() -> None:
    text = json.dumps(base())
    config.clear_memo()
    cold = parse_config(text, SRC)
    warm = parse_config(text, SRC)
    assert warm == cold
    assert all(a is b for a, b in zip(warm.vips, cold.vips))
    # Another layout of the same values: other texts, so validated again; equal.
    assert parse_config(json.dumps(base(), indent=2), SRC) == cold


def _result(text: str) -> Any:
    """The Config, or the error lines."""
    try:
        return parse_config(text, SRC)
    except ConfigError as e:
        return str(e).splitlines()


def _full_way(text: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(config, "_parse_memoised", lambda text: None)
        return _result(text)


_BASE = json.dumps(base())
_VIPS = json.dumps(base()["vips"])


@pytest.mark.parametrize("text", [
    _BASE,
    json.dumps(base(), indent=4),
    "\n\t " + _BASE + " \r\n",
    _BASE + " x",  # trailing garbage
    _BASE + "{}",
    _BASE[:-1],  # unterminated
    '{"vips": []}',
    '{"vips": [ ]}',
    '{"vips": [], "vips": []}',
    '{"v\\u0069ps": ' + _VIPS + "}",  # an escaped key
    '{"vips": ' + _VIPS + ', "tunables": {"ring_size": 101, "ring_size": 103}}',
    '{"vips": ' + _VIPS + ', "tunables": {"ring_size": NaN}}',
    '{"vips": ' + _VIPS[:-1] + ",]}",  # trailing comma
    '{"vips": ' + _VIPS[:-1] + " 1]}",
    '{"vips": {}}',
    '{"vips": "all"}',
    '{"vips": [1, [], null, "x"]}',
    "[" + _VIPS + "]",
    '{"vips": ' + _VIPS + ",}",
    '{"vips": ' + _VIPS + ' "x": 1}',
    '{vips: []}',
    "{}",
    "",
    '{"vips": ' + _VIPS + ", // a comment\n \"xdp_mode\": \"native\" /* more */}",
    '{"vips": ' + _VIPS + ', "xdp_mode": "native" /* unterminated}',
    '{"interface": "eth0/1", "vips": ' + _VIPS + "}",
])
def test_fast_path_and_full_way_agree(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config.clear_memo()
    cold = _result(text)
    assert _result(text) == cold  # warm
    assert _full_way(text, monkeypatch) == cold


@pytest.mark.parametrize("change", [
    _set(["vips", 0, "reals", 1, "weight"], 3),
    _set(["vips", 0, "reals", 1, "weight"], 0),
    _set(["vips", 0, "reals", 0, "mac"], "00:0c:29:36:09:79"),
    _set(["vips", 0, "reals", 0, "ip"], "10.0.0.21"),
    _set(["vips", 0, "port"], 81),
    _set(["vips", 0, "protocol"], "udp"),
    _set(["vips", 0, "vip"], "10.0.0.102"),
    lambda doc: doc["vips"][0]["reals"].pop(),
    lambda doc: doc["vips"][0]["reals"].append({"ip": "10.0.0.14", "mac": "00:0c:29:00:00:14"}),
    lambda doc: doc["vips"].reverse(),
])
def test_memo_never_serves_a_changed_vip(change: Callable[[Dict[str, Any]], None]) -> None:
    config.clear_memo()
    parse_config(json.dumps(base()), SRC)  # every VIP of base() is now remembered
    text = json.dumps(mutated(change))
    warm = parse_config(text, SRC)
    config.clear_memo()
    assert warm == parse_config(text, SRC)


def _dup_vip(doc: Dict[str, Any]) -> None:
    doc["vips"].append(copy.deepcopy(doc["vips"][0]))


def _other_mac(doc: Dict[str, Any]) -> None:
    doc["vips"][1]["reals"].append({"ip": "10.0.0.11", "mac": "00:0c:29:00:00:01"})


def _bad_real(doc: Dict[str, Any]) -> None:
    doc["vips"][1]["reals"][0]["mac"] = "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("change", [
    _dup_vip, _other_mac, _bad_real,
    _set(["tunables"], {"max_vips": 1}),
    _set(["tunables"], {"max_reals": 3}),
    _set(["tunables"], {"ring_size": 197}),
    _set(["tunables"], {"ring_size": 198}),
    _set(["vips", 1, "reals"], "none"),
    _set(["vips", 1], 7),
])
def test_memo_keeps_every_check_and_the_same_errors(
    change: Callable[[Dict[str, Any]], None],
) -> None:
    text = json.dumps(mutated(change))
    cold = _cold(text)
    assert cold  # each of these is an invalid config
    parse_config(json.dumps(base()), SRC)  # remember the valid VIPs
    assert _outcome(text) == cold


def test_memo_does_not_hide_a_repeated_key() -> None:
    parse_config(json.dumps(base()), SRC)
    # The same values as a remembered VIP, but "port" is given twice.
    text = json.dumps(base()).replace('"port": 80,', '"port": 80, "port": 80,')
    assert _outcome(text) == [f'{SRC}: vips[0].port: key "port" is given more than once']


def test_memo_stays_bounded() -> None:
    config.clear_memo()
    doc = base()
    for port in range(1, 300):
        doc["vips"][0]["port"] = port
        parse_config(json.dumps(doc), SRC)
    assert len(config._memo) <= 2 * len(doc["vips"]) + config.MEMO_SLACK + 1


def test_text_without_comments_is_left_as_is() -> None:
    text = json.dumps(base())
    assert strip_comments(text) is text


def test_extra_macs() -> None:
    doc = base()
    assert parse_config(json.dumps(doc), SRC).extra_macs == ()
    doc["extra_macs"] = ["00:00:5E:00:01:01", "00-00-5e-00-01-02"]
    assert parse_config(json.dumps(doc), SRC).extra_macs == (
        "00:00:5e:00:01:01", "00:00:5e:00:01:02")
    for value, reason in [
        ("00:00:5e:00:01:01",
         'extra_macs: must be a list of MAC addresses, got string "00:00:5e:00:01:01"'),
        (["00:00:5e:00:01:01", "00:00:5E:00:01:01"],
         'extra_macs[1]: "00:00:5e:00:01:01" is listed twice'),
        (["01:00:5e:00:00:01"], 'extra_macs[0]: "01:00:5e:00:00:01" is a multicast MAC address'),
        (["zz"], 'extra_macs[0]: "zz" is not a MAC address'),
        ([f"00:00:5e:00:01:{i:02x}" for i in range(9)],
         "extra_macs: has 9 MAC addresses; at most 8"),
    ]:
        doc["extra_macs"] = value
        assert errors(doc) == [f"{SRC}: {reason}"], value
