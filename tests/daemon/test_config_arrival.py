"""How configs arrive: a ConfigMap-style symlink swap and a replaced directory each
reload exactly once; anything at the path that is not a readable regular file is
refused with one clear line, never a hang, and the last good config stays live."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from tests.daemon.conftest import Daemon, Netns, make_config, real, vip4
from tests.daemon.test_daemon import assert_consistent, live_reals, wait_reals
from xdplbd.core.config import MAX_CONFIG_BYTES
from xdplbd.service.daemon import DEBOUNCE_S

VIP = "10.50.0.100:80/tcp"
FIRST = {VIP: {"10.50.0.11": 1, "10.50.0.12": 1, "10.50.0.13": 1}}


def _configmap(root: str, version: str, text: str) -> None:
    """Write a ConfigMap version and swap `..data` to it atomically, as kubelet does."""
    vdir = os.path.join(root, f"..2026_12_05_{version}")
    os.makedirs(vdir)
    with open(os.path.join(vdir, "lb_conf.json"), "w") as f:
        f.write(text)
    tmp = os.path.join(root, "..data_tmp")
    os.symlink(os.path.basename(vdir), tmp)
    old = os.path.realpath(os.path.join(root, "..data")) if os.path.islink(
        os.path.join(root, "..data")) else None
    os.rename(tmp, os.path.join(root, "..data"))
    if old is not None:
        shutil.rmtree(old)  # kubelet removes the old version right after the swap


def test_configmap_symlink_swap_reloads_exactly_once(netns: Netns, workdir: str) -> None:
    root = os.path.join(workdir, "configmap")
    os.makedirs(root)
    _configmap(root, "a", make_config([vip4(reals=[real(1), real(2), real(3)])]))
    os.symlink("..data/lb_conf.json", os.path.join(root, "lb_conf.json"))
    d = Daemon(netns, workdir)
    d.config = os.path.join(root, "lb_conf.json")
    try:
        d.start()
        assert live_reals(d) == FIRST
        _configmap(root, "b", make_config([vip4(reals=[real(1), real(4, weight=3)])]))
        wait_reals(d, {VIP: {"10.50.0.11": 1, "10.50.0.14": 3}})
        time.sleep(DEBOUNCE_S * 4)  # any straggling event would reload again
        st = d.state()
        assert st["reloads"] == 1, d.read_log()
        # And again: the watch follows the new version's directory.
        _configmap(root, "c", make_config([vip4(reals=[real(2)])]))
        wait_reals(d, {VIP: {"10.50.0.12": 1}})
        time.sleep(DEBOUNCE_S * 4)
        assert d.state()["reloads"] == 2, d.read_log()
        assert_consistent(d)
    finally:
        d.cleanup()


def test_replaced_directory_reloads_exactly_once(daemon: Daemon) -> None:
    daemon.start()
    conf_dir = os.path.dirname(daemon.config)
    new_dir = conf_dir + ".new"
    os.makedirs(new_dir)
    with open(os.path.join(new_dir, "lb_conf.json"), "w") as f:
        f.write(make_config([vip4(reals=[real(5)])]))
    os.rename(conf_dir, conf_dir + ".old")
    os.rename(new_dir, conf_dir)
    shutil.rmtree(conf_dir + ".old")
    wait_reals(daemon, {VIP: {"10.50.0.15": 1}})
    time.sleep(DEBOUNCE_S * 4)
    assert daemon.state()["reloads"] == 1, daemon.read_log()
    # The new directory is watched: a plain edit in it is seen.
    daemon.write_config(make_config([vip4(reals=[real(6)])]))
    wait_reals(daemon, {VIP: {"10.50.0.16": 1}})


def _fifo(p: str) -> None:
    os.mkfifo(p)


def _directory(p: str) -> None:
    os.mkdir(p)


def _device(p: str) -> None:
    os.symlink("/dev/zero", p)  # a device that never ends: reading it must not hang either


def _socket(p: str) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(p)
    _keep.append(s)


def _loop(p: str) -> None:
    os.symlink(p + ".b", p)
    os.symlink(p, p + ".b")


def _huge(p: str) -> None:
    with open(p, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)


def _unreadable(p: str) -> None:
    # root reads any mode; a file whose read fails is one on a directory path component
    # that is a file: the kernel answers ENOTDIR.
    os.symlink(os.path.join(os.path.dirname(p), "daemon-file", "x"), p)
    with open(os.path.join(os.path.dirname(p), "daemon-file"), "w") as f:
        f.write("{}")


_keep: list = []
BAD_PATHS = {
    "fifo": (_fifo, "is a FIFO (named pipe), not a regular file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "device": (_device, "is a character device, not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "symlink loop": (_loop, "cannot read: a symbolic link loop"),
    "huge": (_huge, f"over the limit of {MAX_CONFIG_BYTES} bytes"),
    "unreadable": (_unreadable, "cannot read: Not a directory"),
}


@pytest.mark.parametrize("name", sorted(BAD_PATHS))
def test_not_a_regular_file_is_one_clear_error(daemon: Daemon, name: str) -> None:
    daemon.start()
    make, reason = BAD_PATHS[name]
    os.unlink(daemon.config)
    make(daemon.config)
    try:
        st = daemon.wait_state(lambda s: s.get("last_reload", {}).get("result") == "rejected")
        err = st["last_reload"]["error"]
        assert err.splitlines() == [f"{daemon.config}: {err.split(': ', 1)[1]}"]
        assert reason in err, err
        assert live_reals(daemon) == FIRST  # the last good config stays live
        assert daemon.proc is not None and daemon.proc.poll() is None
        log = daemon.read_log()
        assert "Traceback" not in log
        assert sum(1 for ln in log.splitlines() if reason in ln) >= 1
        # It keeps serving: a good file afterwards is applied.
        if os.path.isdir(daemon.config) and not os.path.islink(daemon.config):
            os.rmdir(daemon.config)
        else:
            os.unlink(daemon.config)
        daemon.write_config(make_config([vip4(reals=[real(7)])]))
        wait_reals(daemon, {VIP: {"10.50.0.17": 1}})
    finally:
        for s in _keep:
            s.close()
        _keep.clear()
