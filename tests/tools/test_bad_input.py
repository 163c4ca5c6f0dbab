"""Every xdplb command against bad input: a missing, foreign or corrupt pin dir, a
corrupt or newer state.toml, no root, and the malformed config classes. Each case
gets one line (no traceback) and its documented exit code, and docs/bad-input.md
lists every row this test produces (XDPLB_WRITE_BAD_INPUT=FILE writes them out).
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Iterator, List, Tuple

import pytest

from tests.tools.conftest import LabDaemon, run_cli
from xdplbd.core import schema
from xdplbd.core.model import Tunables
from xdplbd.kernel import libbpf

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "bad-input.md")
TAG = f"skbad{os.getpid()}"
EXPLAIN = ["explain", "10.0.0.1", "1000", "10.99.0.100", "80", "tcp"]
# (name as the table shows it, argv without the dirs)
COMMANDS: List[Tuple[str, List[str]]] = [
    ("status", ["status"]), ("stats", ["stats"]), ("top --once", ["top", "--once"]),
    ("explain", EXPLAIN), ("reload", ["reload", "--timeout", "2"]),
    ("check --plan", ["check", "--plan", "CONFIG"]), ("detach", ["detach"]),
    ("start", ["start", "-i", "lo", "-c", "CONFIG", "--pid-file", "PIDFILE"]),
    ("stop", ["stop", "--pid-file", "PIDFILE"]),
]


@pytest.fixture(scope="module")
def dirs(lab_daemon: LabDaemon, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Dict[str, str]]:
    base = str(tmp_path_factory.mktemp("bad"))
    os.chmod(base, 0o755)
    bpf = f"/sys/fs/bpf/{TAG}"
    d = {"missing": f"{bpf}-missing", "foreign": f"{bpf}-foreign", "corrupt": f"{bpf}-corrupt",
         "good_pins": lab_daemon.pin_dir, "good_state": lab_daemon.state_dir,
         "config": lab_daemon.config, "base": base}
    # Foreign: a map of somebody else's, pinned under a name xdplb never uses.
    os.makedirs(d["foreign"])
    fd = libbpf.create_array("other", 8, 4)
    libbpf.obj_pin(fd, os.path.join(d["foreign"], "other_map"))
    # Corrupt: the running daemon's maps pinned again, `backends` swapped for a wrong one.
    os.makedirs(d["corrupt"])
    for spec in schema.map_specs(Tunables()):
        path = os.path.join(d["corrupt"], spec.name)
        if spec.name == "backends":
            libbpf.obj_pin(fd, path)
            continue
        src = libbpf.obj_get(os.path.join(lab_daemon.pin_dir, spec.name))
        libbpf.obj_pin(src, path)
        os.close(src)
    os.close(fd)
    for name, text in (("corrupt", "pid = [[[ not toml\n"),
                       ("newer", 'schema = 99\npid = 1\nfuture = "yes"\n')):
        os.makedirs(os.path.join(base, name))
        with open(os.path.join(base, name, "state.toml"), "w") as f:
            f.write(text)
    yield d
    for k in ("missing", "foreign", "corrupt"):
        shutil.rmtree(d[k], ignore_errors=True)


def _norm(text: str, d: Dict[str, str]) -> str:
    """One line, with this run's paths replaced by placeholders."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    for key, ph in (("missing", "PIN_DIR"), ("foreign", "PIN_DIR"), ("corrupt", "PIN_DIR"),
                    ("good_pins", "PIN_DIR"), ("base", "STATE_DIR/.."),
                    ("good_state", "STATE_DIR"), ("config", "CONFIG")):
        line = line.replace(d[key], ph)
    return line.replace("STATE_DIR/../corrupt", "STATE_DIR").replace(
        "STATE_DIR/../newer", "STATE_DIR")


def _run(d: Dict[str, str], argv: List[str], pins: str, state: str, user: bool = False
         ) -> Tuple[int, str, str]:
    pidfile = os.path.join(d["base"], "xdplb.pid")
    args = [a.replace("CONFIG", d["config"]).replace("PIDFILE", pidfile) for a in argv]
    args += ["--pin-dir", pins, "--state-dir", state]
    if user:  # nobody: drop root, its groups and its capabilities
        import subprocess
        import sys

        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "--inh-caps=-all", sys.executable, "-m", "xdplbd.cli", *args],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        return p.returncode, p.stdout, p.stderr
    r = run_cli(None, *args)
    return r.returncode, r.stdout, r.stderr


# (case, pins, state, user, commands, expected exit code)
def _cases(d: Dict[str, str]) -> List[Tuple[str, str, str, bool, List[str], int]]:
    every = [c for c, _ in COMMANDS]
    return [
        ("missing pin dir", d["missing"], "/nonexistent", False,
         ["stats", "top --once", "explain"], 5),
        ("missing pin dir", d["missing"], "/nonexistent", False, ["status"], 3),
        ("missing pin dir", d["missing"], "/nonexistent", False, ["reload"], 1),
        ("missing pin dir", d["missing"], "/nonexistent", False, ["detach", "stop"], 0),
        ("foreign pin dir", d["foreign"], "/nonexistent", False,
         ["status", "stats", "top --once", "explain", "check --plan", "detach", "start"], 6),
        ("corrupt pin dir", d["corrupt"], "/nonexistent", False,
         ["status", "stats", "top --once", "explain", "check --plan", "start"], 7),
        ("corrupt state.toml", d["missing"], os.path.join(d["base"], "corrupt"), False,
         ["status", "stats", "top --once", "explain", "reload", "check --plan", "detach"], 8),
        ("state.toml of a newer schema", d["missing"], os.path.join(d["base"], "newer"), False,
         ["status", "stats", "top --once", "explain", "reload", "check --plan", "detach"], 9),
        ("not root (nobody)", d["good_pins"], d["good_state"], True, every, 4),
    ]


def test_every_command_answers_bad_input(dirs: Dict[str, str]) -> None:
    argv = dict(COMMANDS)
    rows: List[str] = []
    problems: List[str] = []
    for case, pins, state, user, cmds, want in _cases(dirs):
        for cmd in cmds:
            code, out, err = _run(dirs, argv[cmd], pins, state, user)
            msg = _norm(err or out, dirs)
            if code != want or "Traceback" in err or len(err.strip().splitlines()) > 1:
                problems.append(f"{case} / {cmd}: exit {code} (want {want}): {err or out}")
            rows.append(f"| {case} | `xdplb {cmd}` | {code} | {msg} |")
    # `check FILE` needs no root: a readable config validates as nobody too.
    public = f"/tmp/{TAG}-lb_conf.json"
    shutil.copyfile(dirs["config"], public)
    os.chmod(public, 0o644)
    try:
        code, out, err = _run(dirs, ["check", public], dirs["good_pins"], dirs["good_state"],
                              True)
    finally:
        os.unlink(public)
    out = out.replace(public, "FILE")
    if code != 0:
        problems.append(f"check as nobody: {code} {err}")
    rows.append(f"| not root (nobody) | `xdplb check FILE` | {code} | {_norm(out, dirs)} |")
    out_file = os.environ.get("XDPLB_WRITE_BAD_INPUT")
    if out_file:
        with open(out_file, "w") as f:
            f.write("\n".join(dict.fromkeys(rows)) + "\n")
    assert problems == []
    with open(DOC) as f:
        doc = f.read()
    missing = [r for r in dict.fromkeys(rows) if r not in doc]
    assert missing == [], "docs/bad-input.md lacks:\n" + "\n".join(missing)


CONFIG_CASES: Dict[str, bytes] = {
    "not UTF-8": b'{"vips": [], "interface": "caf\xe9"}',
    "UTF-8 BOM (accepted)": b'\xef\xbb\xbf{"interface": "eth0", "vips": []}',
    "duplicate keys": b'{"interface": "eth0", "interface": "eth1", "vips": []}',
    "NaN": b'{"interface": "eth0", "vips": [{"vip": "10.0.0.1", "port": NaN, '
           b'"protocol": "tcp", "reals": []}]}',
    "Infinity": b'{"interface": "eth0", "vips": [{"vip": "10.0.0.1", "port": Infinity, '
                b'"protocol": "tcp", "reals": []}]}',
    "number as a string": b'{"interface": "eth0", "vips": [{"vip": "10.0.0.1", "port": "80", '
                          b'"protocol": "tcp", "reals": []}]}',
    "deeply nested": b'{"interface": "eth0", "vips": [], "x": ' + b"[" * 100000
                     + b"]" * 100000 + b"}",
    "huge (64 MiB)": b'{"interface": "eth0", "vips": []' + b" " * (64 << 20) + b"}",
}


def test_config_classes_answer_in_one_line(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`xdplb check` on each malformed class: one line, no traceback. The messages are
    core/config.py's (issue 14 owns them); the doc lists each class."""
    base = tmp_path_factory.mktemp("cfg")
    with open(DOC) as f:
        doc = f.read()
    paths = {"not a regular file (a directory)": str(base)}
    for name, data in CONFIG_CASES.items():
        p = base / (name.split()[0] + ".json")
        p.write_bytes(data)
        os.chmod(p, 0o644)
        paths[name] = str(p)
    bad, rows = [], []
    for name, path in paths.items():
        r = run_cli(None, "check", path, timeout=120)
        if "Traceback" in r.stderr or r.returncode not in (0, 1):
            bad.append(f"{name}: exit {r.returncode}: {r.stderr[-300:]}")
        if f"| {name} |" not in doc:
            bad.append(f"docs/bad-input.md lacks config class {name!r}")
        msg = (r.stderr or r.stdout).strip().replace(str(base), "DIR")
        row = f"| {name} | {r.returncode} | {msg.splitlines()[0] if msg else ''} |"
        rows.append(row)
        if len(msg.splitlines()) != 1:
            bad.append(f"{name}: want one line, got {msg!r}")
        if row not in doc:
            bad.append(f"docs/bad-input.md lacks the row: {row}")
    out_file = os.environ.get("XDPLB_WRITE_BAD_INPUT")
    if out_file:
        with open(out_file + ".config", "w") as f:
            f.write("\n".join(rows) + "\n")
    assert bad == []
