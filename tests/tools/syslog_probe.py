"""Run inside `unshare -m` (a private mount namespace), as root: put a real datagram
socket at /dev/log, run `xdplb start` / `reload` / `stop` against it, print what
arrived as JSON lines. Nothing of this is visible outside the namespace: /dev is a
fresh tmpfs here, with the few device nodes the tools need bound back in.

argv: CONFIG PIN_DIR STATE_DIR WORKDIR BAD_CONFIG_TEXT
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from typing import List


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def private_dev(workdir: str) -> None:
    old = os.path.join(workdir, "olddev")
    os.makedirs(old, exist_ok=True)
    sh("mount", "--make-rprivate", "/")
    sh("mount", "--rbind", "/dev", old)
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "skdev", "/dev")
    for node in ("null", "zero", "random", "urandom", "full"):
        open(f"/dev/{node}", "w").close()
        sh("mount", "--bind", f"{old}/{node}", f"/dev/{node}")


def main() -> int:
    config, pin_dir, state_dir, workdir, bad = sys.argv[1:6]
    private_dev(workdir)
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind("/dev/log")
    log.settimeout(0.2)
    cli = [sys.executable, "-m", "xdplbd.cli"]
    dirs = ["--pin-dir", pin_dir, "--state-dir", state_dir]
    pidfile, logfile = os.path.join(workdir, "xdplb.pid"), os.path.join(workdir, "xdplb.log")
    got: List[str] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(socket.timeout):
                got.append(log.recv(65536).decode(errors="replace"))

    sh(*cli, "start", "-i", "lb0", "-c", config, "--pid-file", pidfile, "--log-file",
       logfile, *dirs)
    drain(0.5)
    with open(config) as f:
        good = f.read()
    with open(config + ".tmp", "w") as f:
        f.write(bad)
    os.replace(config + ".tmp", config)
    subprocess.run([*cli, "reload", *dirs], check=False)
    drain(0.5)
    with open(config + ".tmp", "w") as f:
        f.write(good)
    os.replace(config + ".tmp", config)
    subprocess.run([*cli, "reload", *dirs], check=True)
    sh(*cli, "stop", "--pid-file", pidfile, *dirs)
    drain(0.5)
    for d in got:
        print(json.dumps(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
