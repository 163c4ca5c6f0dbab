"""Reading lb_conf.json: optional macs, and everything at the path that is not a
readable, sane, regular JSON file gets one clear line naming the file and the reason."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from xdplbd.core import config
from xdplbd.core.config import ConfigError, parse_config, read_config_file

SRC = "/etc/xdplb/lb_conf.json"


def doc(reals: List[Dict[str, Any]], more: str = "") -> str:
    return json.dumps({"vips": [{"vip": "10.0.0.100", "port": 80, "protocol": "tcp",
                                 "reals": reals}]})


def one_error(text: str) -> str:
    config.clear_memo()
    with pytest.raises(ConfigError) as ei:
        parse_config(text, SRC)
    assert len(ei.value.errors) == 1, str(ei.value)
    lines = str(ei.value).splitlines()
    assert len(lines) == 1
    return lines[0]


def read_error(path: str) -> str:
    with pytest.raises(ConfigError) as ei:
        read_config_file(path)
    lines = str(ei.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(path + ": ")
    return lines[0]


def test_mac_is_optional() -> None:
    cfg = parse_config(doc([{"ip": "10.0.0.11"}, {"ip": "10.0.0.12", "mac": "02:00:00:00:00:12"}]),
                       SRC)
    assert [r.mac for r in cfg.vips[0].reals] == [None, "02:00:00:00:00:12"]


def test_a_real_gives_its_mac_everywhere_or_nowhere() -> None:
    text = json.dumps({"vips": [
        {"vip": "10.0.0.100", "port": 80, "protocol": "tcp",
         "reals": [{"ip": "10.0.0.11", "mac": "02:00:00:00:00:11"}]},
        {"vip": "10.0.0.100", "port": 443, "protocol": "tcp", "reals": [{"ip": "10.0.0.11"}]}]})
    assert one_error(text) == (
        f'{SRC}: vips[1].reals[0].mac: is missing, but vips[0].reals[0] gives 10.0.0.11 the MAC '
        '"02:00:00:00:00:11" (give the same mac everywhere, or none)')


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_numbers(value: str) -> None:
    text = doc([{"ip": "10.0.0.11", "weight": 1}]).replace('"weight": 1', f'"weight": {value}')
    assert one_error(text) == (
        f"{SRC}: vips[0].reals[0].weight: must be an integer, got {value} (not a JSON number)")


def test_a_number_given_as_a_string_says_so() -> None:
    text = doc([{"ip": "10.0.0.11"}]).replace('"port": 80', '"port": "80"')
    assert one_error(text) == (
        f'{SRC}: vips[0].port: must be an integer, got string "80" '
        "(write the number without quotes)")


def test_duplicate_keys_are_named() -> None:
    text = doc([{"ip": "10.0.0.11"}]).replace('"port": 80', '"port": 80, "port": 81')
    assert one_error(text) == f'{SRC}: vips[0].port: key "port" is given more than once'


def test_deep_nesting_is_one_clear_error() -> None:
    text = '{"vips": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert one_error(text) == (
        f"{SRC}: invalid JSON: nested too deeply (a config needs 5 levels)")


def test_bom_is_accepted_and_other_encodings_are_not(tmp_path: Path) -> None:
    p = tmp_path / "lb_conf.json"
    p.write_bytes(b"\xef\xbb\xbf" + doc([{"ip": "10.0.0.11"}]).encode())
    assert read_config_file(str(p))[0].vips[0].reals[0].mac is None
    p.write_bytes(b'{"vips": [],\n "interface": "\xe9th0"}')
    assert read_error(str(p)) == (
        f"{p}: line 2 column 16: not UTF-8 text (byte 0xe9 at offset 28)")


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    p = tmp_path / "lb_conf.json"
    os.mkfifo(p)
    result: List[str] = []
    t = threading.Thread(target=lambda: result.append(read_error(str(p))), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO hung"
    assert result == [f"{p}: is a FIFO (named pipe), not a regular file"]


def test_directory_socket_device_and_loop_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir.json"
    d.mkdir()
    assert read_error(str(d)) == f"{d}: is a directory, not a regular file"
    s = tmp_path / "sock.json"
    with socket.socket(socket.AF_UNIX) as sk:
        sk.bind(str(s))
        assert read_error(str(s)) == f"{s}: is a socket, not a regular file"
    dev = tmp_path / "null.json"
    dev.symlink_to("/dev/null")
    assert read_error(str(dev)) == f"{dev}: is a character device, not a regular file"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.symlink_to(b)
    b.symlink_to(a)
    assert read_error(str(a)) == (
        f"{a}: cannot read: a symbolic link loop (too many levels of symbolic links)")


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "missing.json"
    assert read_error(str(p)) == f"{p}: cannot read: No such file or directory"
    if os.geteuid() != 0:  # root reads anything; the daemon test covers EACCES for root-less
        p.write_text("{}")
        p.chmod(0)
        assert "Permission denied" in read_error(str(p))


def test_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "lb_conf.json"
    with open(p, "wb") as f:
        f.truncate(config.MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    assert read_error(str(p)) == (
        f"{p}: is {config.MAX_CONFIG_BYTES + 1} bytes, over the limit of "
        f"{config.MAX_CONFIG_BYTES} bytes")
