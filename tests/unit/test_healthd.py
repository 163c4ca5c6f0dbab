"""service/healthd.py's bookkeeping, without probing: pure, no root."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import pytest

from xdplbd.core.config import parse_config
from xdplbd.core.health import HealthState, Result, checks_of, state_to_dict
from xdplbd.core.healthwire import vip_checks_to_wire, vipkey_to_wire
from xdplbd.core.model import Config, Vip
from xdplbd.service.healthd import Channel, Checker, Lateness, _members, _options, _vk


def sorted_percentile_ms(samples: List[float], p: float) -> float:
    """What health.json reported when it sorted every sample."""
    late = sorted(samples)
    return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 2) if late else 0.0


@pytest.mark.parametrize("seed", range(20))
def test_lateness_percentiles_are_those_of_the_last_samples(seed: int) -> None:
    rnd = random.Random(seed)
    size = rnd.choice([1, 7, 100, 1000])
    late, kept = Lateness(size), []
    for _ in range(rnd.randint(0, 3 * size)):
        x = rnd.choice([0.0, rnd.uniform(-1e-6, 0.002), rnd.uniform(0, 0.65), rnd.uniform(0.7, 3)])
        late.add(x)
        kept = [*kept, x][-size:]
    assert late.samples == len(kept)
    for p in (0.0, 0.5, 0.99, 1.0):
        want, got = sorted_percentile_ms(kept, p), late.percentile_ms(p)
        if want <= 655:  # exact to the 10 us tick
            assert abs(got - want) <= 0.0100001, (p, got, want)
        else:  # 10 ms steps
            assert want - 10.0100001 <= got <= want + 0.0000001, (p, got, want)


def test_lateness_far_beyond_the_histogram() -> None:
    late = Lateness(4)
    for x in (0.001, 1.0, 5000.0, 0.002):
        late.add(x)
    assert late.percentile_ms(0.0) == 1.0
    assert late.percentile_ms(0.25) == 2.0
    assert late.percentile_ms(0.5) == 995.36  # the 10 ms step from 995.36 ms
    assert late.percentile_ms(1.0) == 655.36 + 4095 * 10  # the last step holds the rest
    assert Lateness(3).percentile_ms(0.99) == 0.0


# -- the checker's view of the config, and health.json ---------------------------------


class FakeChannel:
    def __init__(self) -> None:
        self.sent: List[Dict[str, Any]] = []

    def send(self, msg: Dict[str, Any]) -> None:
        self.sent.append(msg)

    def send_text(self, pieces: Iterable[str]) -> None:
        self.sent.append(json.loads("".join(pieces)))


def vips_doc(n_vips: int, reals: Sequence[str], check: bool = True) -> Dict[str, Any]:
    """n_vips VIPs sharing the same reals: one TCP check per real, used by every VIP."""
    hc = {"type": "tcp", "dsr": False, "interval": 1, "timeout": 0.5}
    return {"vips": [{"vip": f"10.0.{1 + i // 250}.{1 + i % 250}", "port": 80, "protocol": "tcp",
                      **({"healthcheck": hc} if check else {}),
                      "reals": [{"ip": ip, "mac": "02:00:00:00:00:01"} for ip in reals]}
                     for i in range(n_vips)]}


@pytest.fixture
def checker(tmp_path: Path) -> Iterator[Checker]:
    loop = asyncio.new_event_loop()
    c = Checker(loop, FakeChannel(), str(tmp_path), "lo")  # type: ignore[arg-type]
    yield c
    for h in c._timers.values():
        h.cancel()
    loop.close()


def send(c: Checker, msg: Dict[str, Any]) -> None:
    c.handle_line(json.dumps(msg, separators=(",", ":")).encode())


def configure(c: Checker, cfg: Config, *, dels: Sequence[Vip] = ()) -> None:
    send(c, {"op": "vips", "set": [vip_checks_to_wire(v.key, checks_of(v)) for v in cfg.vips],
             "del": [vipkey_to_wire(v.key) for v in dels]})


def publish(c: Checker, cfg: Config, health: str = "up", dels: Sequence[Tuple[Vip, str]] = ()
            ) -> None:
    send(c, {"op": "reals", "set": [[vipkey_to_wire(v.key), r.ip.exploded, health, "active",
                                     "" if health == "up" else "health check failing"]
                                    for v in cfg.vips for r in v.reals],
             "del": [[vipkey_to_wire(v.key), ip] for v, ip in dels],
             "failing_open": []})


def health_json(c: Checker) -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads("".join(c._pieces()))
    return doc


def test_health_json_names_each_real_and_its_check(checker: Checker) -> None:
    cfg = parse_config(json.dumps(vips_doc(3, ["10.0.0.11", "10.0.0.12"])), "f")
    send(checker, {"op": "init", "optimistic": False, "states": {}})
    configure(checker, cfg)
    publish(checker, cfg)
    doc = health_json(checker)
    keys = {c.key for v in cfg.vips for _ip, c in checks_of(v)}
    assert set(doc["checks"]) == keys and len(keys) == 2  # one per real, however many VIPs
    assert doc["stats"]["checks"] == 2
    assert sorted((r["vip"], r["port"], r["protocol"], r["ip"], r["health"], r["state"],
                   r["check"]) for r in doc["reals"]) == sorted(
        (str(v.key.addr), 80, "tcp", str(ip), "up", "active", c.key)
        for v in cfg.vips for ip, c in checks_of(v))
    # The daemon was told every new check's state, once.
    assert [set(m["states"]) for m in checker.chan.sent] == [keys]  # type: ignore[attr-defined]

    # A VIP gone, a real gone from another, one down, one not checked any more.
    cfg2 = parse_config(json.dumps(vips_doc(2, ["10.0.0.11"])), "f")
    unchecked = parse_config(json.dumps(vips_doc(1, ["10.0.0.11"], check=False)), "f")
    configure(checker, cfg2, dels=[cfg.vips[2]])
    configure(checker, unchecked)
    publish(checker, cfg2, "down", dels=[(v, "10.0.0.12") for v in cfg.vips[:2]]
            + [(cfg.vips[2], ip) for ip in ("10.0.0.11", "10.0.0.12")])
    doc = health_json(checker)
    (key,) = {c.key for v in cfg2.vips for _ip, c in checks_of(v)}
    assert list(doc["checks"]) == [key] and doc["stats"]["checks"] == 1
    assert sorted((r["vip"], r["ip"], r["health"], r.get("reason"), r.get("check"))
                  for r in doc["reals"]) == [
        ("10.0.1.1", "10.0.0.11", "down", "health check failing", None),
        ("10.0.1.2", "10.0.0.11", "down", "health check failing", key)]
    assert set(checker._timers) == set(checker._users) == {c for _, c in checks_of(cfg2.vips[1])}


def test_a_transition_is_logged_for_each_vip_and_real_using_the_check(
        checker: Checker, caplog: pytest.LogCaptureFixture) -> None:
    d = vips_doc(2, ["10.0.0.11", "10.0.0.12"])
    d["vips"][1]["reals"][1]["ip"] = "10.0.0.13"
    cfg = parse_config(json.dumps(d), "f")
    send(checker, {"op": "init", "optimistic": True, "states": {}})
    configure(checker, cfg)
    (_ip, c), _ = checks_of(cfg.vips[0])
    for _ in range(c.fall):
        checker._on_result(checker._intern[c], Result(False, "tcp: refused", 1.0))
    assert [r.getMessage() for r in caplog.records] == [
        "vip 10.0.1.1:80/tcp: real 10.0.0.11 down: tcp: refused (3/3 failed)",
        "vip 10.0.1.2:80/tcp: real 10.0.0.11 down: tcp: refused (3/3 failed)"]
    assert not checker.states[c.key].up


def test_a_save_replaces_health_json_whole(checker: Checker, tmp_path: Path) -> None:
    cfg = parse_config(json.dumps(vips_doc(300, [f"10.0.0.{i}" for i in range(1, 11)])), "f")
    send(checker, {"op": "init", "optimistic": False, "states": {}})
    configure(checker, cfg)
    publish(checker, cfg)
    for h in [*checker._timers.values(), checker._save_handle]:
        if h is not None:
            h.cancel()  # no probe, and no save but this one
    checker._loop.run_until_complete(checker._save_async())  # 3000 reals: several slices
    assert os.listdir(tmp_path) == ["health.json"]
    with open(tmp_path / "health.json") as f:
        doc = json.load(f)
    assert doc == {**health_json(checker), "written_at": doc["written_at"]}
    assert len(doc["reals"]) == 3000 and len(doc["checks"]) == 10
    publish(checker, cfg, "down")
    checker._save()  # on the way out: at once
    assert os.listdir(tmp_path) == ["health.json"]
    with open(tmp_path / "health.json") as f:
        doc = json.load(f)
    assert {r["health"] for r in doc["reals"]} == {"down"}
    assert doc == {**health_json(checker), "written_at": doc["written_at"]}


# -- messages decoded member by member -------------------------------------------------


@pytest.mark.parametrize("doc", [
    {}, {"op": "stop"}, {"a": []}, {"a": [[]], "b": {}},
    {"op": "vips", "set": [["10.0.0.1", [["x", [1, 2.5, None, True, "é\"\n"]]]]], "del": []},
    {"set": [1, {"a": [2]}, "]", "[,"], "op": "reals", "x": [{"y": []}]},
    {"op": "init", "optimistic": True, "states": {"k": {"up": True, "last": {"ok": "}"}},
                                                  "k2": {"a": []}}},
])
@pytest.mark.parametrize("indent", [None, 1])
def test_members_decode_what_json_loads_does(doc: Dict[str, Any], indent: Any) -> None:
    text = json.dumps(doc, indent=indent, separators=None if indent else (",", ":"))
    got = {k: (dict(v) if isinstance(doc[k], dict) else list(v)) if isinstance(v, Iterator) else v
           for k, v in _members(text)}
    assert got == doc
    # Arrays left unread, or read in part, are skipped.
    assert [k for k, _ in _members(text)] == list(doc)
    for k, v in _members(text):
        if isinstance(v, Iterator):
            next(v, None)
        assert k in doc


@pytest.mark.parametrize("text", ["", "[]", '{"a" 1}', '{"a": [1 2]}', '{"a": 1', '{1: 2}'])
def test_members_reject_what_is_not_an_object(text: str) -> None:
    with pytest.raises(ValueError):
        list(_members(text))


def test_a_message_whose_op_is_not_first_is_taken_whole(checker: Checker) -> None:
    cfg = parse_config(json.dumps(vips_doc(2, ["10.0.0.11"])), "f")
    send(checker, {"op": "init", "optimistic": False, "states": {}})
    configure(checker, cfg)
    checker.handle_line(json.dumps({"set": [[vipkey_to_wire(cfg.vips[0].key), "10.0.0.11", "up",
                                             "active", ""]],
                                    "del": [], "failing_open": ["x"], "op": "reals"}).encode())
    doc = health_json(checker)
    assert [(r["vip"], r["ip"]) for r in doc["reals"]] == [("10.0.1.1", "10.0.0.11")]
    assert doc["failing_open"] == ["x"]


def test_saved_states_are_resumed_and_told_back(checker: Checker) -> None:
    cfg = parse_config(json.dumps(vips_doc(2, ["10.0.0.11", "10.0.0.12"])), "f")
    (_, a), (_, b) = checks_of(cfg.vips[0])
    up = state_to_dict(HealthState(True, 1, 5.0, Result(True, "tcp: connected", 4.0)))
    send(checker, {"op": "init", "optimistic": False,
                   "states": {a.key: up, "tcp 10.9.9.9:80 gone": up}})
    configure(checker, cfg)
    assert checker.states[a.key].up and not checker.states[b.key].up
    assert {a.key, b.key} <= set(checker.states)
    (told,) = checker.chan.sent  # type: ignore[attr-defined]
    assert told["op"] == "verdicts" and told["states"][a.key] == up
    assert not told["states"][b.key]["up"]
    assert health_json(checker)["checks"][a.key] == up


def test_the_channel_sends_whole_lines() -> None:
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    try:
        chan = Channel(loop, ours)
        chan.send({"op": "log", "level": 20, "msg": "é"})
        chan.send_text(iter(['{"op":"verdicts",', '"states":{}}']))
        theirs.settimeout(5)
        data = b""
        while data.count(b"\n") < 2:
            data += theirs.recv(4096)
        assert [json.loads(x) for x in data.splitlines()] == [
            {"op": "log", "level": 20, "msg": "é"}, {"op": "verdicts", "states": {}}]
    finally:
        ours.close()
        theirs.close()
        loop.close()


def test_the_command_line() -> None:
    want = {"--fd": "3", "--parent": "42", "--interface": "lb0", "--state-dir": "/run/x"}
    assert _options(["--fd", "3", "--parent", "42", "--interface", "lb0",
                     "--state-dir", "/run/x"]) == want
    assert _options(["--state-dir=/run/x", "--interface=lb0", "--parent=42", "--fd=3"]) == want
    for bad in (["--fd", "3"], ["--fd", "x", "--parent", "42", "--interface", "lb0",
                                "--state-dir", "/"], ["--fd", "3", "--fd", "3"], ["--fd"],
                ["--fd=3", "--parent=42", "--interface=lb0", "--state-dir=/", "--x=1"]):
        with pytest.raises(SystemExit) as e:
            _options(bad)
        assert e.value.code != 0, bad


def test_checks_share_their_common_values(checker: Checker) -> None:
    d = vips_doc(2, ["10.0.0.11", "10.0.0.12"])
    d["vips"][1]["healthcheck"] = {"type": "tcp"}  # DSR: the probes go to the VIP
    d["vips"][1]["reals"] = [{"ip": "10.0.0.13", "mac": "02:00:00:00:00:03"},
                             {"ip": "10.0.0.14", "mac": "02:00:00:00:00:04"}]
    cfg = parse_config(json.dumps(d), "f")
    send(checker, {"op": "init", "optimistic": False, "states": {}})
    checker._open_prober = lambda: None  # type: ignore[method-assign]  # no raw socket
    configure(checker, cfg)
    (a, b), (c, e) = ([checker._vips[_vk(vipkey_to_wire(v.key))][str(ip)] for ip, _ in checks_of(v)]
                      for v in cfg.vips)
    assert [x for x in (a, b, c, e)] == [x for v in cfg.vips for _, x in checks_of(v)]
    assert a.probe.kind is b.probe.kind and a.probe.timeout is b.probe.timeout
    assert a.interval is b.interval and a.probe.expect is b.probe.expect
    assert c != e and c.probe.addr is e.probe.addr and c.probe.kind is e.probe.kind
    assert c.probe.addr is not a.probe.addr
    assert set(checker._intern) == {a, b, c, e}
    assert all(any(k is x for k in checker._intern) for x in (a, b, c, e))  # keyed by x


def test_a_result_for_a_check_removed_and_added_back_still_counts(
        checker: Checker, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(json.dumps(vips_doc(1, ["10.0.0.11"])), "f")
    send(checker, {"op": "init", "optimistic": True, "states": {}})
    configure(checker, cfg)
    ((_, c),) = checks_of(cfg.vips[0])
    old = checker._intern[c]
    configure(checker, parse_config(json.dumps(vips_doc(1, ["10.0.0.11"], check=False)), "f"))
    configure(checker, cfg)
    assert checker._intern[c] is not old
    assert not checker.states[c.key].up  # back as a new check
    caplog.set_level(logging.INFO, logger="xdplbd")
    for _ in range(c.rise):  # results of probes sent before the first reload
        checker._on_result(old, Result(True, "tcp: connected", 1.0))
    assert [r.getMessage() for r in caplog.records] == [
        "vip 10.0.1.1:80/tcp: real 10.0.0.11 up: tcp: connected (2/2 passed)"]
