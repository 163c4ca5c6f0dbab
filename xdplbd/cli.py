"""xdplb: the operator's command line.

Reads the pinned maps directly through libbpf (never imports bcc), so it
works whoever started the daemon, and while no daemon runs at all.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any, Dict, Optional, Sequence

from . import __version__, bpfsys, loader
from .config import ConfigError
from .daemon import DEFAULT_CONFIG, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR, read_config
from .dataplane import DataPlane
from .model import LiveState, Tunables
from .plan import PlanError, make_plan, render_plan
from .state import read_state

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"xdplb: {msg}", file=sys.stderr)


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running xdplbd (not a reused pid of something else)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"xdplbd" in cmd


def _tunables_from_state(state: Dict[str, Any], pin_dir: str) -> Tunables:
    """The live tunables: state.toml's, else map sizes read from the pins themselves."""
    if isinstance(state.get("tunables"), dict):
        return Tunables(**state["tunables"])
    sizes = {}
    for spec, field in (("vips", "max_vips"), ("backends", "max_reals"),
                        ("conntrack", "conntrack_size")):
        fd = bpfsys.obj_get(os.path.join(pin_dir, spec))
        try:
            sizes[field] = bpfsys.map_info(fd).max_entries
        finally:
            os.close(fd)
    return Tunables(**sizes)


def open_dataplane(pin_dir: str, state: Dict[str, Any]) -> DataPlane:
    if not os.path.exists(os.path.join(pin_dir, "vips")):
        raise FileNotFoundError(f"no data plane pinned under {pin_dir}")
    return DataPlane(pin_dir, _tunables_from_state(state, pin_dir))


# --- check -------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg, _ = read_config(args.file)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAIL
    if not args.plan:
        reals = sum(len(v.reals) for v in cfg.vips)
        print(f"{args.file}: OK ({len(cfg.vips)} VIPs, {reals} reals)")
        return EXIT_OK
    live = LiveState()
    if os.path.exists(os.path.join(args.pin_dir, "vips")):
        with open_dataplane(args.pin_dir, read_state(args.state_dir)) as dp:
            live = dp.read_live()
    try:
        plan = make_plan(live, cfg)
    except PlanError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_FAIL
    print(render_plan(plan))
    return EXIT_OK


# --- reload ------------------------------------------------------------------

def cmd_reload(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir)
    pid = int(state.get("pid", 0))
    if not pid_alive(pid):
        _err(f"no running xdplbd found (state in {args.state_dir})")
        return EXIT_FAIL
    before = int(state.get("reloads", 0))
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = read_state(args.state_dir)
        if int(state.get("reloads", 0)) > before:
            last = state.get("last_reload", {})
            if last.get("result") == "ok":
                print(f"reloaded: generation {state.get('generation')}, "
                      f"{last.get('operations', 0)} map operations")
                return EXIT_OK
            print(f"reload rejected, previous config stays live:\n{last.get('error', '')}",
                  file=sys.stderr)
            return EXIT_FAIL
        time.sleep(0.05)
    _err(f"xdplbd (pid {pid}) did not finish reloading within {args.timeout:.0f} s")
    return EXIT_FAIL


# --- status / stats --------------------------------------------------------------

def collect_stats(dp: DataPlane) -> Dict[str, Any]:
    """Every counter, summed across CPUs, keyed the way `stats --json` prints them."""
    live = dp.read_live()
    out: Dict[str, Any] = {
        "outcomes": {k: {"packets": p, "bytes": b} for k, (p, b) in dp.outcomes().items()},
        "vips": [],
    }
    for v in live.vips:
        p, b = dp.counter("vip_stats", v.id)
        reals = []
        for be in v.backends:
            rp, rb = dp.counter("backend_stats", be.id)
            reals.append({"ip": str(be.ip), "packets": rp, "bytes": rb})
        out["vips"].append({"vip": str(v.key.addr), "port": v.key.port,
                            "protocol": v.key.proto, "packets": p, "bytes": b,
                            "reals": reals})
    return out


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        with open_dataplane(args.pin_dir, read_state(args.state_dir)) as dp:
            stats = collect_stats(dp)
    except (FileNotFoundError, bpfsys.BpfError) as e:
        _err(str(e))
        return EXIT_FAIL
    if args.json:
        print(json.dumps(stats, indent=2))
        return EXIT_OK
    for name, c in stats["outcomes"].items():
        print(f"{name:12} {c['packets']:>14} pkts {c['bytes']:>16} bytes")
    for v in stats["vips"]:
        print(f"{v['vip']}:{v['port']}/{v['protocol']:4} {v['packets']:>14} pkts "
              f"{v['bytes']:>16} bytes")
        for r in v["reals"]:
            print(f"  {r['ip']:38} {r['packets']:>10} pkts {r['bytes']:>14} bytes")
    return EXIT_OK


def status_data(args: argparse.Namespace) -> Dict[str, Any]:
    state = read_state(args.state_dir)
    pid = int(state.get("pid", 0))
    progs = loader.pinned_programs(args.pin_dir)
    attached: Optional[Dict[str, Any]] = None
    ifindex = int(state.get("ifindex", 0))
    if ifindex:
        try:
            q = bpfsys.xdp_query(ifindex)
            attached = {"interface": state.get("interface"), "mode": q.mode,
                        "prog_id": q.prog_id, "ours": q.prog_id == state.get("prog_id")}
        except bpfsys.BpfError:
            attached = None
    return {
        "daemon": {"running": pid_alive(pid), "pid": pid if pid_alive(pid) else None},
        "dataplane": {"pinned": bool(progs), "pin_dir": args.pin_dir,
                      "attached": bool(attached and attached["prog_id"] and attached["ours"]),
                      "xdp": attached},
        "config": {"path": state.get("config"), "digest": state.get("config_digest"),
                   "generation": state.get("generation"), "applied_at": state.get("applied_at")},
        "last_reload": state.get("last_reload"),
        "vips": state.get("vips", []),
    }


def cmd_status(args: argparse.Namespace) -> int:
    data = status_data(args)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        d, p, c = data["daemon"], data["dataplane"], data["config"]
        xdp = p["xdp"] or {}
        daemon = f"running, pid {d['pid']}" if d["running"] else "not running"
        where = f"attached to {xdp.get('interface')} ({xdp.get('mode')})"
        print(f"daemon:     {daemon}")
        print(f"data plane: {where if p['attached'] else 'not attached'}")
        print(f"config:     {c['path']} generation {c['generation']} applied {c['applied_at']}")
        if data["last_reload"]:
            lr = data["last_reload"]
            print(f"last reload: {lr.get('at')} ({lr.get('trigger')}): {lr.get('result')}")
        for v in data["vips"]:
            print(f"  {v['vip']}:{v['port']}/{v['protocol']}")
            for r in v["reals"]:
                print(f"    {r['ip']:38} {r['mac']}  weight {r['weight']}  {r['state']}")
    return EXIT_OK if data["daemon"]["running"] else 3


# --- detach --------------------------------------------------------------------

def cmd_detach(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir)
    pid = int(state.get("pid", 0))
    if pid_alive(pid):
        _err(f"xdplbd (pid {pid}) is running; stop it first")
        return EXIT_FAIL
    ifname = args.interface or state.get("interface")
    ours = set()
    for name in loader.pinned_programs(args.pin_dir):
        fd = bpfsys.obj_get(os.path.join(args.pin_dir, name))
        try:
            ours.add(bpfsys.prog_info(fd).id)
        finally:
            os.close(fd)
    if ifname:
        from .iface import InterfaceError, ifindex

        try:
            idx = ifindex(ifname)
            q = bpfsys.xdp_query(idx)
            if q.prog_id and (q.prog_id in ours or q.prog_id == state.get("prog_id")):
                bpfsys.xdp_detach(idx, q.mode)
                print(f"detached XDP program {q.prog_id} from {ifname}")
        except InterfaceError as e:
            _err(f"{e}; removing the pins only")
    if os.path.isdir(args.pin_dir):
        for name in os.listdir(args.pin_dir):
            os.unlink(os.path.join(args.pin_dir, name))
        os.rmdir(args.pin_dir)
        print(f"removed pins under {args.pin_dir}")
    return EXIT_OK


# --- parser ----------------------------------------------------------------------

def _dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-dir", default=DEFAULT_PIN_DIR,
                   help=f"bpffs pin directory (default {DEFAULT_PIN_DIR})")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help=f"daemon state directory (default {DEFAULT_STATE_DIR})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xdplb", description="Operate the xdplb XDP load balancer.")
    p.add_argument("--version", action="version", version=f"xdplb {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="validate a config file (exit 0 valid, 1 invalid)")
    c.add_argument("file", nargs="?", default=DEFAULT_CONFIG,
                   help=f"config file (default {DEFAULT_CONFIG})")
    c.add_argument("--plan", action="store_true",
                   help="also show what would change against the live maps, touching nothing")
    _dirs(c)
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("reload", help="make the running daemon re-read its config")
    r.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    _dirs(r)
    r.set_defaults(func=cmd_reload)

    s = sub.add_parser("status", help="daemon, data plane, config and VIPs")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _dirs(s)
    s.set_defaults(func=cmd_status)

    st = sub.add_parser("stats", help="raw counters from the maps, summed across CPUs")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    _dirs(st)
    st.set_defaults(func=cmd_stats)

    d = sub.add_parser("detach", help="remove the XDP program and all pins (drops traffic)")
    d.add_argument("-i", "--interface", help="interface (default: the one in state.toml)")
    _dirs(d)
    d.set_defaults(func=cmd_detach)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
