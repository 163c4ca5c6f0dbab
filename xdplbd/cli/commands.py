"""xdplb: the operator's command line.

Reads the pinned maps directly through libbpf (never imports bcc), so it
works whoever started the daemon, and while no daemon runs at all. Each
command is a thin shell over a module: daemonize (start/stop), dashboard
(top/debug), status, snapshot (stats), explain.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

from xdplbd import __version__
from xdplbd.cli.preflight import (
    EXIT_FAIL,
    EXIT_INTERNAL,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_USAGE,
)
from xdplbd.cli.status import pinned_prog_ids
from xdplbd.core import schema
from xdplbd.core.announce import PROTOCOL_V4, PROTOCOL_V6
from xdplbd.core.config import ConfigError
from xdplbd.core.effective import Neighbour, effective
from xdplbd.core.model import LiveState, VipKey
from xdplbd.core.plan import PlanError, make_plan, render_plan
from xdplbd.kernel import libbpf, loader
from xdplbd.kernel.snapshot import open_pinned, stats_json, take
from xdplbd.service import bird, daemonize
from xdplbd.service.announcer import set_maintenance, withdraw
from xdplbd.service.daemon import DEFAULT_CONFIG, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR, read_config
from xdplbd.service.statefile import read_state


def _err(msg: str) -> None:
    print(f"xdplb: {msg}", file=sys.stderr)


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running xdplbd (not a reused pid of something else)."""
    return daemonize.running(pid)


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
        with open_pinned(args.pin_dir, read_state(args.state_dir)) as dp:
            live = dp.read_live()
    # A real without a mac takes the MAC the maps hold for its IP (the daemon's last
    # known one); one that is not in the maps yet waits for xdplbd to resolve it.
    known = {b.ip: Neighbour(b.mac, True) for v in live.vips for b in v.backends}
    eff = effective(cfg, {}, known)
    try:
        plan = make_plan(live, eff.config)
    except PlanError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_FAIL
    print(render_plan(plan))
    waiting = sorted({str(ip) for (_, ip), st in eff.reals.items() if st.mac is None})
    if waiting:
        print(f"not planned: {len(waiting)} real{'s' if len(waiting) != 1 else ''} without a "
              f"mac, until xdplbd resolves them from the neighbour table: "
              f"{', '.join(waiting[:8])}{' ...' if len(waiting) > 8 else ''}")
    return EXIT_OK


# --- reload ------------------------------------------------------------------

def cmd_reload(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir)
    pid = int(state.get("pid", 0))
    if not pid_alive(pid):
        _err(f"no running xdplbd found (state in {args.state_dir})")
        return EXIT_FAIL
    after = sighup_and_wait(args.state_dir, pid, state, args.timeout)
    if after is None:
        _err(f"xdplbd (pid {pid}) did not finish reloading within {args.timeout:.0f} s")
        return EXIT_FAIL
    last = after.get("last_reload", {})
    if last.get("result") == "ok":
        print(f"reloaded: generation {after.get('generation')}, "
              f"{last.get('operations', 0)} map operations")
        return EXIT_OK
    print(f"reload rejected, previous config stays live:\n{last.get('error', '')}",
          file=sys.stderr)
    return EXIT_FAIL


def sighup_and_wait(state_dir: str, pid: int, state: Dict[str, Any], timeout: float,
                    done: Callable[[Dict[str, Any]], bool] = lambda _st: True
                    ) -> Optional[Dict[str, Any]]:
    """Make the daemon reload and wait until state.toml counts it and `done` holds; the
    state then, or None on time-out. `state` is state.toml as read before the signal."""
    before = int(state.get("reloads", 0))
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(state_dir)
        if int(state.get("reloads", 0)) > before and done(state):
            return state
        time.sleep(0.05)
    return None


# --- status / stats --------------------------------------------------------------

def cmd_stats(args: argparse.Namespace) -> int:
    try:
        with open_pinned(args.pin_dir, read_state(args.state_dir)) as dp:
            snap = take(dp)
    except (FileNotFoundError, libbpf.BpfError) as e:
        _err(str(e))
        return EXIT_FAIL
    stats = stats_json(snap)
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


def cmd_status(args: argparse.Namespace) -> int:
    from xdplbd.cli.status import render_text, status_data

    try:
        data = status_data(args.pin_dir, args.state_dir)
    except libbpf.BpfError as e:
        _err(str(e))
        return EXIT_FAIL
    print(json.dumps(data, indent=2) if args.json else render_text(data))
    return EXIT_OK if data["daemon"]["running"] else EXIT_NOT_RUNNING


# --- route announcement ---------------------------------------------------------

def withdraw_all(announce: Dict[str, Any], timeout: float) -> Optional[str]:
    """Empty this node's BIRD fragment and wait until BIRD holds none of its routes.
    Returns None when done, else why not."""
    path, sock = str(announce.get("file", "")), str(announce.get("socket", ""))
    try:
        withdraw(path, sock)
        deadline = time.monotonic() + timeout
        while any(bird.route_count(sock, p) for p in (PROTOCOL_V4, PROTOCOL_V6)):
            if time.monotonic() > deadline:
                return f"BIRD still holds VIP routes after {timeout:.0f} s"
            time.sleep(0.02)
    except (OSError, bird.BirdError) as e:
        return str(e)
    return None


def cmd_maintenance(args: argparse.Namespace) -> int:
    on = args.state == "on"
    state = read_state(args.state_dir)
    set_maintenance(args.state_dir, on)
    announce = state.get("announce")
    pid = int(state.get("pid", 0))
    word = "on: this node withdraws its VIPs" if on else "off: this node announces its VIPs"
    if pid_alive(pid):
        # Any reload, applied or rejected, re-reads the flag and re-announces.
        # (A reload that was already under way may finish first: wait for the flag.)
        after = sighup_and_wait(
            args.state_dir, pid, state, args.timeout,
            lambda st: (st.get("announce") or {}).get("maintenance", on) == on)
        if after is None:
            _err(f"xdplbd (pid {pid}) did not apply maintenance within {args.timeout:.0f} s")
            return EXIT_FAIL
        a = after.get("announce") or {}
        if a.get("error"):
            _err(f"maintenance {args.state}, but BIRD did not take it: {a['error']}")
            return EXIT_FAIL
        print(f"maintenance {word}" + ("" if a else " (no route announcement is configured)"))
        return EXIT_OK
    if on and isinstance(announce, dict) and announce.get("file"):
        why = withdraw_all(announce, args.timeout)
        if why:
            _err(f"maintenance on, but the routes are not withdrawn: {why}")
            return EXIT_FAIL
        print(f"maintenance {word} (xdplbd is not running: emptied {announce['file']})")
        return EXIT_OK
    print(f"maintenance {args.state} recorded; xdplbd is not running"
          + ("" if on else ": start it to announce again"))
    return EXIT_OK


# --- doctor --------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from xdplbd.cli import doctor

    try:
        cfg, ifname = doctor.load(args.state_dir)
        vips = doctor.diagnose(cfg, ifname, args.vip)
    except (doctor.DoctorError, OSError) as e:
        _err(str(e))
        return EXIT_FAIL
    ok = all(v["ok"] for v in vips)
    if args.json:
        print(json.dumps({"schema": 1, "ok": ok, "interface": ifname, "vips": vips}, indent=2))
    else:
        print(doctor.render(vips))
        print("all checks passed" if ok else "some checks failed: see the fixes above")
    return EXIT_OK if ok else EXIT_FAIL


# --- detach --------------------------------------------------------------------

def cmd_detach(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir)
    pid = int(state.get("pid", 0))
    if pid_alive(pid):
        _err(f"xdplbd (pid {pid}) is running; stop it first")
        return EXIT_FAIL
    announce = state.get("announce")
    if isinstance(announce, dict) and announce.get("file"):
        # Withdraw before anything that stops forwarding: the router must stop
        # sending us the VIPs before the program goes.
        why = withdraw_all(announce, args.timeout)
        if why:
            _err(f"not detaching: the VIP routes are not withdrawn: {why}")
            return EXIT_FAIL
        print(f"withdrew the VIP routes ({announce['file']})")
    ifname = args.interface or state.get("interface")
    ours = pinned_prog_ids(args.pin_dir)
    if ifname:
        from xdplbd.kernel.iface import InterfaceError, ifindex

        try:
            idx = ifindex(ifname)
            q = libbpf.xdp_query(idx)
            if q.prog_id and (q.prog_id in ours or q.prog_id == state.get("prog_id")):
                libbpf.xdp_detach(idx, q.mode)
                print(f"detached XDP program {q.prog_id} from {ifname}")
        except InterfaceError as e:
            _err(f"{e}; removing the pins only")
    if loader.remove_pins(args.pin_dir):
        print(f"removed pins under {args.pin_dir}")
    else:
        print(f"nothing pinned under {args.pin_dir}")
    return EXIT_OK


# --- start / stop / debug (the original xdplb's commands) ---------------------------

def _start_options(args: argparse.Namespace) -> daemonize.StartOptions:
    return daemonize.StartOptions(
        config=args.config, pin_dir=args.pin_dir, state_dir=args.state_dir,
        interface=args.interface, xdp_mode=args.xdp_mode, pid_file=args.pid_file,
        log_file=args.log_file, syslog=not args.no_syslog, verbose=args.verbose,
        timeout=args.timeout,
    )


def cmd_start(args: argparse.Namespace) -> int:
    try:
        _pid, summary = daemonize.start(_start_options(args))
    except (daemonize.StartError, OSError) as e:
        _err(str(e))
        return EXIT_FAIL
    print(summary)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    code, msg = daemonize.stop(args.pid_file, args.pin_dir, args.timeout)
    if code:
        _err(msg)
    else:
        print(msg)
    return code


def cmd_debug(args: argparse.Namespace) -> int:
    """The daemon as a foreground child, the dashboard (with its log) on top."""
    from xdplbd.cli.dashboard import TopSource, run_live, tail_lines

    opts = _start_options(args).absolute()
    why = daemonize.conflict(opts.pin_dir, opts.state_dir, None)
    if why:
        _err(why)
        return EXIT_FAIL
    os.makedirs(os.path.dirname(opts.log_file), exist_ok=True)
    offset = daemonize.log_offset(opts.log_file)
    opts.syslog = False
    opts.verbose = True
    argv = [sys.executable, "-m", "xdplbd.service.daemon", *opts.daemon_args()]
    print(f"starting xdplbd (log {opts.log_file}) ...", file=sys.stderr)
    with open(opts.log_file, "ab") as log, open(os.devnull, "rb") as null:
        child = subprocess.Popen(argv, stdin=null, stdout=log, stderr=log,
                                 env=daemonize.child_env(), start_new_session=True,
                                 preexec_fn=_die_with_parent)
    try:
        outcome, _state = daemonize.wait_ready(child.pid, opts.state_dir, opts.timeout)
        if outcome != "ready":
            _err(f"xdplbd {'failed to start' if outcome == 'exited' else 'is not ready'}; "
                 f"its log ({opts.log_file}) says:\n"
                 + daemonize.log_tail(opts.log_file, offset))
            return EXIT_FAIL
        src = TopSource(opts.pin_dir, opts.state_dir, title=f"xdplb debug (pid {child.pid})")
        src.log_lines = lambda: tail_lines(opts.log_file, 8)

        def alive() -> Optional[str]:
            code = child.poll()
            return None if code is None else f"xdplbd exited with status {code}"

        try:
            died = run_live(src.frame, args.interval, alive=alive)
        except (FileNotFoundError, libbpf.BpfError) as e:
            died = f"cannot read the data plane: {e}"
        finally:
            src.close()
        if died:
            _err(died + f"; its log ({opts.log_file}) says:\n"
                 + daemonize.log_tail(opts.log_file, offset))
            return EXIT_FAIL
        return EXIT_OK
    finally:
        if child.poll() is None:
            child.terminate()  # SIGTERM: the daemon exits, the data plane stays attached
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            print(f"xdplbd stopped; the data plane stays attached "
                  f"(`xdplb detach --pin-dir {opts.pin_dir}` removes it)")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """PR_SET_PDEATHSIG: if `xdplb debug` is killed, its daemon gets SIGTERM."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


# --- top ------------------------------------------------------------------------------

def cmd_top(args: argparse.Namespace) -> int:
    from xdplbd.cli.dashboard import TopSource, render_once, run_live

    src = TopSource(args.pin_dir, args.state_dir, flows=not args.no_flows)
    try:
        if args.once:
            render_once(src.frame, args.interval)
        else:
            run_live(src.frame, args.interval)
    except (FileNotFoundError, libbpf.BpfError) as e:
        _err(str(e))
        return EXIT_FAIL
    finally:
        src.close()
    return EXIT_OK


# --- explain ---------------------------------------------------------------------------

def explain_data(pin_dir: str, state_dir: str, src: str, sport: int, vip: str, port: int,
                 proto: str, syn: bool) -> Dict[str, Any]:
    from xdplbd.core.explain import explain, infer_ring_size
    from xdplbd.kernel.dataplane import lookup_flow

    state = read_state(state_dir)
    key = VipKey(ipaddress.ip_address(vip), port, proto)
    src_ip = ipaddress.ip_address(src)
    if src_ip.version != key.addr.version:
        raise ValueError(f"{src} and {vip} are not of the same IP version")
    with open_pinned(pin_dir, state) as dp:
        raw = dp.maps["vips"].lookup(schema.pack_vip_key(key))
        vip_id = schema.VIP_INFO.unpack(raw[: schema.VIP_INFO.size])[0] if raw else None
        ring = None
        if vip_id is not None:
            ring = dp.ring(vip_id)
            if ring is not None and not isinstance(state.get("tunables"), dict):
                ring = ring[: infer_ring_size(ring)]  # M unknown without state.toml
        ct = lookup_flow(dp, src_ip, key.addr, sport, port, proto)
        now, udp_limit = dp.ct_time()
        d = explain(src_ip, sport, key, vip_id, ct, ring, dp.backend_entries(), syn=syn,
                    udp_timeout_ticks=udp_limit, now_tick=now)
    host = f"[{src_ip}]" if src_ip.version == 6 else str(src_ip)
    return {"flow": {"src": str(src_ip), "sport": sport, "vip": str(key.addr), "port": port,
                     "protocol": proto, "syn": syn},
            "text": f"{host}:{sport} -> {key}", **d.to_json()}


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        data = explain_data(args.pin_dir, args.state_dir, args.src_ip, args.src_port, args.vip,
                            args.port, args.proto, args.syn)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    except (FileNotFoundError, libbpf.BpfError) as e:
        _err(str(e))
        return EXIT_FAIL
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    what = "a SYN of flow" if args.syn else "flow"
    verdict = {"tx": f"XDP_TX to real {data['real']} ({data['mac']}, backend "
                     f"{data['backend_id']})",
               "drop": "XDP_DROP (no usable real)",
               "pass": "XDP_PASS (not a VIP: the kernel stack gets it)"}[data["verdict"]]
    print(f"{what} {data['text']}: {verdict}")
    print(f"  why: {data['detail']}")
    if data["flow_hash"] is not None:
        print(f"  flow hash {data['flow_hash']:#010x}"
              + (f", ring slot {data['ring_slot']} of {data['ring_size']}"
                 if data["ring_slot"] is not None else ""))
    return EXIT_OK


def _port(text: str) -> int:
    p = int(text)
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535)")
    return p


# --- parser ----------------------------------------------------------------------

def _dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-dir", default=DEFAULT_PIN_DIR,
                   help=f"bpffs pin directory (default {DEFAULT_PIN_DIR})")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help=f"daemon state directory (default {DEFAULT_STATE_DIR})")


def _daemon_opts(p: argparse.ArgumentParser, log_default: str) -> None:
    p.add_argument("-i", "--interface", metavar="IF",
                   help="interface to attach to (default: the config's)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--xdp-mode", choices=["native", "generic", "auto"],
                   help="XDP attach mode (default: the config's)")
    p.add_argument("--log-file", default=log_default,
                   help=f"the daemon's log file (default {log_default})")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the daemon to be ready (default 60)")
    _dirs(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xdplb", description="Operate the xdplb XDP load balancer.",
        epilog="docs/operating.md describes every command, the status/stats JSON and the "
        "Prometheus metrics.")
    p.add_argument("--version", action="version", version=f"xdplb {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    st = sub.add_parser("start", help="start xdplbd in the background (PID file, syslog, "
                        "log file); returns once it is ready")
    _daemon_opts(st, daemonize.DEFAULT_LOG_FILE)
    st.add_argument("--pid-file", default=daemonize.DEFAULT_PID_FILE,
                    help=f"PID file (default {daemonize.DEFAULT_PID_FILE})")
    st.add_argument("--no-syslog", action="store_true", help="log to the log file only")
    st.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    st.set_defaults(func=cmd_start)

    sp = sub.add_parser("stop", help="stop the xdplbd that `start` started (SIGTERM); the "
                        "data plane stays attached")
    sp.add_argument("--pid-file", default=daemonize.DEFAULT_PID_FILE,
                    help=f"PID file (default {daemonize.DEFAULT_PID_FILE})")
    sp.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for it to exit (default 30)")
    _dirs(sp)
    sp.set_defaults(func=cmd_stop)

    db = sub.add_parser("debug", help="run xdplbd in the foreground under the live dashboard "
                        "(with its log); q stops both")
    _daemon_opts(db, daemonize.DEFAULT_LOG_FILE)
    db.add_argument("--interval", type=float, default=1.0, help="refresh period in seconds")
    db.set_defaults(func=cmd_debug, pid_file="", no_syslog=True, verbose=True)

    tp = sub.add_parser("top", help="live dashboard of the pinned maps: rates, flows, "
                        "outcomes (q quits)")
    tp.add_argument("--interval", type=float, default=1.0, help="refresh period in seconds")
    tp.add_argument("--once", action="store_true",
                    help="print one frame (rates over one interval) and exit")
    tp.add_argument("--no-flows", action="store_true",
                    help="skip the conntrack walk (the flows column)")
    _dirs(tp)
    tp.set_defaults(func=cmd_top)

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

    s = sub.add_parser("status", help="daemon, data plane, config and VIPs (exit 3 if the "
                       "daemon is not running)")
    s.add_argument("--json", action="store_true", help="machine-readable output (schema 1)")
    _dirs(s)
    s.set_defaults(func=cmd_status)

    sa = sub.add_parser("stats", help="raw counters from the maps, summed across CPUs")
    sa.add_argument("--json", action="store_true", help="machine-readable output (schema 1)")
    _dirs(sa)
    sa.set_defaults(func=cmd_stats)

    e = sub.add_parser("explain", help="which real a flow goes to, and why")
    e.add_argument("src_ip", metavar="SRC_IP")
    e.add_argument("src_port", metavar="SRC_PORT", type=_port)
    e.add_argument("vip", metavar="VIP")
    e.add_argument("port", metavar="PORT", type=_port)
    e.add_argument("proto", metavar="PROTO", type=str.lower, choices=["tcp", "udp"])
    e.add_argument("--syn", action="store_true",
                   help="explain a TCP SYN (a new connection skips conntrack)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    _dirs(e)
    e.set_defaults(func=cmd_explain)

    dr = sub.add_parser("doctor", help="check every real's DSR setup and health check, each "
                        "failure with its fix (exit 0 only if all pass)")
    dr.add_argument("vip", metavar="VIP", nargs="?",
                    help="only this VIP: ADDR, ADDR:PORT or ADDR:PORT/PROTO")
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    _dirs(dr)
    dr.set_defaults(func=cmd_doctor)

    d = sub.add_parser("detach", help="withdraw the VIP routes, then remove the XDP program "
                       "and all pins (drops traffic)")
    d.add_argument("-i", "--interface", help="interface (default: the one in state.toml)")
    d.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for BIRD to drop the routes (default 10)")
    _dirs(d)
    d.set_defaults(func=cmd_detach)
    m = sub.add_parser("maintenance", help="withdraw (on) or announce again (off) this "
                       "node's VIPs; returns once BIRD has the new routes")
    m.add_argument("state", metavar="on|off", choices=["on", "off"])
    m.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    _dirs(m)
    m.set_defaults(func=cmd_maintenance)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from xdplbd.cli import preflight

    args = build_parser().parse_args(argv)
    try:
        refused = preflight.check(args)
        if refused is not None:
            _err(refused[1])
            return refused[0]
        rc: int = args.func(args)
    except BrokenPipeError:  # `xdplb status | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except PermissionError as e:  # a file or process of root's, past the up-front check
        _err(f"permission denied: {e}")
        return EXIT_PERMISSION
    except KeyboardInterrupt:
        return EXIT_FAIL
    except Exception as e:  # a bug: one line, not a traceback; XDPLB_DEBUG=1 shows it
        if os.environ.get("XDPLB_DEBUG"):
            raise
        _err(f"internal error: {type(e).__name__}: {e} (set XDPLB_DEBUG=1 for the traceback, "
             "and please report it)")
        return EXIT_INTERNAL
    return rc


if __name__ == "__main__":
    sys.exit(main())

