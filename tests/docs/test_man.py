"""Man pages and shell completion: they render cleanly and cover the real interface.

The options come from the argparse parsers themselves (what `--help` prints),
the config keys from xdplbd/config.py's key tuples, so a new option or key that
is not documented fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Set

import pytest

from xdplbd.cli import commands
from xdplbd.core import config
from xdplbd.core.config import parse_config
from xdplbd.core.model import Tunables
from xdplbd.service import daemon

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = {"xdplbd.8": MAN / "xdplbd.8", "xdplb.8": MAN / "xdplb.8",
         "lb_conf.json.5": MAN / "lb_conf.json.5"}
COMPLETION = ROOT / "completion" / "xdplb.bash"
EXAMPLE_CONFIG = ROOT / "etc" / "xdplb" / "lb_conf.json"


# --------------------------------------------------------------------------- helpers


def options(parser: argparse.ArgumentParser) -> Set[str]:
    """Every option string `--help` shows (suppressed ones excluded)."""
    return {s for a in parser._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings}


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    raise AssertionError("xdplb has no subcommands")


_JOINED = {"BR", "RB", "IR", "RI", "BI", "IB"}  # alternating fonts: arguments run together


def _args(line: str) -> List[str]:
    """A macro line's arguments: blank-separated, "quoted" ones may hold blanks."""
    return [a[1:-1].replace('""', '"') if a.startswith('"') else a
            for a in re.findall(r'"(?:[^"]|"")*"|\S+', line)]


def plain(roff: str) -> str:
    """Roff (man macros) to searchable text, one output line per input line."""
    out = []
    for line in roff.splitlines():
        if line.startswith("."):
            name, _, rest = line[1:].partition(" ")
            args = _args(rest)
            line = ("" if name in _JOINED else " ").join(args)
        line = re.sub(r"\\f[BIRP]|\\f\(..|\\&", "", line)
        line = line.replace("\\ ", " ").replace("\\-", "-").replace("\\(dq", '"')
        out.append(line.replace("\\(em", "-").replace("\\e", "\\"))
    return "\n".join(out)


def sections(roff: str, macro: str) -> Dict[str, str]:
    """{heading: body} for each `.SH`/`.SS` heading (quotes stripped), in plain text."""
    parts = re.split(rf"^\.{macro} (.*)$", roff, flags=re.M)
    return {" ".join(_args(plain(parts[i]))): plain(parts[i + 1])
            for i in range(1, len(parts), 2)}


def rendered(page: Path) -> str:
    env = {**os.environ, "MANWIDTH": "200", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    r = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env=env,
                       check=True)
    return r.stdout


def help_text(argv: List[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r
    return r.stdout


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("name", sorted(PAGES))
def test_renders_without_warnings(name: str) -> None:
    page = PAGES[name]
    if shutil.which("groff") is None or shutil.which("man") is None:
        pytest.fail("groff and man are needed (scripts/bootstrap.sh installs groff-base, man-db)")
    r = subprocess.run(["groff", "-ww", "-z", "-man", str(page)], capture_output=True,
                       text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                       env=env, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = r.stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "FILES", "SEE ALSO"):
        assert re.search(rf"^{heading}$", text, re.M), f"{name} has no {heading} section"
    title, section = name.rsplit(".", 1)
    assert text.startswith(f"{title.upper()}({section})")


def test_pages_cross_reference_each_other() -> None:
    for name, page in PAGES.items():
        see_also = sections(page.read_text(), "SH")["SEE ALSO"]
        for other in PAGES:
            if other != name:
                title, section = other.rsplit(".", 1)
                assert f"{title}({section})" in see_also, f"{name} does not cite {other}"


# --------------------------------------------------------------------------- coverage


def test_xdplbd_options_are_documented() -> None:
    text = plain(PAGES["xdplbd.8"].read_text())
    opts = options(daemon.build_parser())
    assert {"-c", "--config", "-i", "--interface", "--xdp-mode", "--pin-dir",
            "--state-dir"} <= opts
    missing = sorted(o for o in opts if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])",
                                                       text))
    assert not missing, f"xdplbd options not in man/xdplbd.8: {missing}"
    # the parser and `--help` agree (what an operator sees is what is checked)
    shown = help_text([str(ROOT / ".venv/bin/xdplbd"), "--help"])
    assert all(o in shown for o in opts)
    for choice in ("native", "generic", "auto"):
        assert choice in text


def test_xdplb_commands_and_options_are_documented() -> None:
    roff = PAGES["xdplb.8"].read_text()
    subs = sections(roff, "SS")
    by_cmd = {heading.split()[0]: body + heading for heading, body in subs.items()}
    common = sections(roff, "SH")["COMMON OPTIONS"]
    synopsis = sections(roff, "SH")["SYNOPSIS"]
    parser = commands.build_parser()
    missing = []
    for cmd, sub in subcommands(parser).items():
        if cmd not in by_cmd:
            missing.append(f"command {cmd} (no .SS section)")
            continue
        if f"xdplb {cmd}" not in re.sub(r"\s+", " ", synopsis):
            missing.append(f"command {cmd} (not in the SYNOPSIS)")
        for opt in sorted(options(sub)):
            pat = rf"(?<![\w-]){re.escape(opt)}(?![\w-])"
            if not re.search(pat, by_cmd[cmd]) and not re.search(pat, common):
                missing.append(f"{cmd} {opt}")
        # positionals by their metavar (explain SRC_IP ..., check FILE)
        for a in sub._actions:
            if not a.option_strings and a.help != argparse.SUPPRESS:
                name = a.metavar if isinstance(a.metavar, str) else a.dest.upper()
                if name not in by_cmd[cmd]:
                    missing.append(f"{cmd} positional {name}")
        # every command's --help works
        help_text([str(ROOT / ".venv/bin/xdplb"), cmd, "--help"])
    for opt in options(parser):
        if opt not in plain(roff):
            missing.append(f"xdplb {opt}")
    assert not missing, "not documented in man/xdplb.8: " + ", ".join(missing)


def test_config_keys_defaults_and_limits_are_documented() -> None:
    roff = PAGES["lb_conf.json.5"].read_text()
    text = plain(roff)
    keys = (*config._TOP_KEYS, *config._VIP_KEYS, *config._REAL_KEYS, *config._TUNABLE_KEYS,
            *config._METRICS_KEYS, *config._HEALTHCHECK_KEYS)
    # each key is a .TP term of its own: "key (type, ...)"
    terms = {m.group(1): m.start() for m in re.finditer(r"^\.TP\n\.BR? (\w+)", roff, re.M)}
    missing = [k for k in keys if k not in terms]
    assert not missing, f"config keys without an entry in man/lb_conf.json.5: {missing}"
    # every tunable's entry gives its default and its limits
    entries = {}
    for m in re.finditer(r"^\.TP\n(.*?)(?=^\.TP|^\.SH|^\.PP)", roff, re.M | re.S):
        head = re.match(r"\.BR? (\w+)", m.group(1))
        if head:
            entries[head.group(1)] = plain(m.group(1))
    for f in dataclasses.fields(Tunables):
        default = getattr(Tunables(), f.name)
        assert f"default {default}" in entries[f.name], (f.name, entries[f.name])
    limits = {"max_reals": config.MAX_REALS_LIMIT, "ring_size": config.MAX_RING_SIZE,
              "udp_timeout": config.MAX_UDP_TIMEOUT, "weight": config.MAX_WEIGHT}
    for key, limit in limits.items():
        assert str(limit) in entries[key], (key, entries[key])
    assert "default 1" in entries["weight"] and "default \"auto\"" in entries["xdp_mode"]
    assert str(config.RING_SLOTS_PER_REAL) in entries["ring_size"]
    for word in ("tcp", "udp", "native", "generic", "auto"):
        assert f'"{word}"' in text
    # comments, ownership/mode and the reload semantics are there
    for needle in ("//", "/* */", "world-writable", "chmod o-w", "not root", "rejected"):
        assert needle in text, needle


def test_examples_in_lb_conf_json_5_are_valid() -> None:
    roff = PAGES["lb_conf.json.5"].read_text()
    blocks = [plain(b) for b in re.findall(r"^\.nf\n(.*?)^\.fi", roff, re.M | re.S)]
    configs = [b for b in blocks if b.lstrip().startswith("{")]
    assert len(configs) >= 2
    for text in configs:
        cfg = parse_config(text, "lb_conf.json(5) example")
        assert cfg.vips


def test_shipped_config_is_valid_and_documented() -> None:
    cfg = parse_config(EXAMPLE_CONFIG.read_text(), str(EXAMPLE_CONFIG))
    assert cfg.vips == () and cfg.interface is None
    assert oct(EXAMPLE_CONFIG.stat().st_mode & 0o777) == "0o644"
    assert "lb_conf.json(5)" in EXAMPLE_CONFIG.read_text()


def test_exit_codes_signals_and_files_are_documented() -> None:
    sh = sections(PAGES["xdplbd.8"].read_text(), "SH")
    codes = {v for k, v in vars(daemon).items() if k.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3}
    for code in codes:
        assert re.search(rf"^{code}$", sh["EXIT STATUS"], re.M), code
    for sig in ("SIGHUP", "SIGTERM", "SIGINT"):
        assert sig in sh["SIGNALS"]
    for path in (daemon.DEFAULT_CONFIG, daemon.DEFAULT_STATE_DIR + "/state.toml",
                 daemon.DEFAULT_PIN_DIR):
        assert path in sh["FILES"], path
    for msg in ("READY=1", "RELOADING=1", "MONOTONIC_USEC", "STATUS=", "WATCHDOG=1",
                "STOPPING=1"):
        assert msg in sh["SYSTEMD"], msg
    for needle in ("arp_ignore=1", "arp_announce=2", "dev lo"):
        assert needle in sh["REAL SERVER SETUP"]
    xdplb = sections(PAGES["xdplb.8"].read_text(), "SH")
    assert re.search(r"^3$", xdplb["EXIT STATUS"], re.M)
    assert commands.EXIT_NOT_RUNNING == 3


# --------------------------------------------------------------------------- completion


def complete(words: List[str]) -> List[str]:
    """COMPREPLY of the completion function for a command line (last word = current)."""
    script = (f"source {COMPLETION}\n"
              'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _xdplb; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True,
                       check=True)
    assert r.stderr == "", r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_completion_lists_every_subcommand_and_option() -> None:
    parser = commands.build_parser()
    subs = subcommands(parser)
    assert set(complete(["xdplb", ""])) == set(subs) | {"--version", "-h", "--help"}
    for cmd, sub in subs.items():
        offered = set(complete(["xdplb", cmd, "-"]))
        assert options(sub) <= offered, (cmd, sorted(options(sub) - offered))
    assert complete(["xdplb", "start", "--xdp-mode", ""]) == ["native", "generic", "auto"]
    assert complete(["xdplb", "explain", "10.0.0.1", "999", "10.0.0.100", "80", ""]) == \
        ["tcp", "udp"]
    assert complete(["xdplb", "stat"]) == ["status", "stats"]
    assert "lo" in complete(["xdplb", "detach", "-i", ""])
    assert complete(["xdplb", "check", "--plan", str(EXAMPLE_CONFIG)[:-5]]) == \
        [str(EXAMPLE_CONFIG)]
