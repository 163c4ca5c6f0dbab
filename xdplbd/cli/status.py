"""`xdplb status`: is the daemon running, is the data plane attached and where, what
config is live, and the VIPs with their reals, read from state.toml and the pins.

The JSON form is a stable interface (schema 1, docs/operating.md): keys are only
ever added, never renamed or removed, within a schema number.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set, Tuple

from xdplbd.core.config import ConfigError, config_digest, parse_config
from xdplbd.kernel import libbpf, loader
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.kernel.snapshot import open_pinned
from xdplbd.service import daemonize
from xdplbd.service.health import read_health
from xdplbd.service.statefile import read_state

STATUS_SCHEMA = 1


@dataclass(frozen=True)
class Attachment:
    interface: str
    ifindex: int
    mode: str  # "native" | "generic" | "offload"
    prog_id: int


def pinned_prog_ids(pin_dir: str) -> Set[int]:
    ids = set()
    for name in loader.pinned_programs(pin_dir):
        try:
            fd = libbpf.obj_get(os.path.join(pin_dir, name))
        except libbpf.BpfError:
            continue
        try:
            ids.add(libbpf.prog_info(fd).id)
        finally:
            os.close(fd)
    return ids


def find_attachment(pin_dir: str, hint: Optional[str] = None) -> Optional[Attachment]:
    """The interface of *this network namespace* running one of `pin_dir`'s programs.

    Tries `hint` (state.toml's interface) first, then every interface: a netlink
    query each, so it stays cheap enough for a dashboard refresh.
    """
    ours = pinned_prog_ids(pin_dir)
    if not ours:
        return None
    names = [hint] if hint else []
    with contextlib.suppress(OSError):
        names += [n for _, n in socket.if_nameindex() if n != hint]
    for name in names:
        try:
            idx = socket.if_nametoindex(name)
            q = libbpf.xdp_query(idx)
        except (OSError, libbpf.BpfError):
            continue
        if q.prog_id in ours:
            return Attachment(name, idx, q.mode, q.prog_id)
    return None


def _vips_from_maps(dp: DataPlane) -> List[Dict[str, Any]]:
    return [
        {
            "vip": str(v.key.addr), "port": v.key.port, "protocol": v.key.proto, "vip_id": v.id,
            "ring_digest": f"{v.ring_digest:016x}",
            "reals": [{"ip": str(b.ip), "mac": b.mac, "weight": b.weight,
                       "state": "active" if b.weight else "draining", "backend_id": b.id}
                      for b in v.backends],
        }
        for v in dp.read_live().vips
    ]


def _vips_from_state(state: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The VIPs last applied, as state.toml recorded them. Above a size
    (daemon.STATE_REALS_MAX reals in all) it records no reals: they are read
    from the config file then, if it is still the one applied (same digest),
    without backend ids (null)."""
    listed = state.get("vips", [])
    from_config = None
    if any("reals" not in v for v in listed):
        from_config = _reals_from_config(state)
    out = []
    for v in listed:
        if "reals" in v or from_config is None:
            reals = [{k: r.get(k) for k in ("ip", "mac", "weight", "state", "backend_id")}
                     for r in v.get("reals", [])]
        else:
            reals = from_config.get((v.get("vip"), v.get("port"), v.get("protocol")), [])
        out.append({"vip": v.get("vip"), "port": v.get("port"), "protocol": v.get("protocol"),
                    "vip_id": v.get("vip_id"), "ring_digest": v.get("ring_digest"),
                    "reals": reals})
    return out


def _reals_from_config(state: Dict[str, Any]) -> Optional[Dict[Tuple[Any, ...], List[Any]]]:
    path = state.get("config")
    try:
        with open(str(path), "rb") as f:
            raw = f.read()
        if config_digest(raw) != state.get("config_digest"):
            return None  # edited since: not what was applied
        cfg = parse_config(raw.decode("utf-8-sig"), str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return None
    return {
        (str(v.key.addr), v.key.port, v.key.proto): [
            {"ip": str(r.ip), "mac": r.mac, "weight": r.weight,
             "state": "active" if r.weight else "draining", "backend_id": None}
            for r in v.reals]
        for v in cfg.vips
    }


def vip_name(v: Dict[str, Any]) -> str:
    """A VIP entry of the status document as str(VipKey) names it: "10.0.0.1:80/tcp",
    "[fd00::1]:80/tcp" (the daemon keys its health and announcement records so)."""
    host = f"[{v['vip']}]" if ":" in str(v["vip"]) else str(v["vip"])
    return f"{host}:{v['port']}/{v['protocol']}"


def status_data(pin_dir: str, state_dir: str, dp: Optional[DataPlane] = None) -> Dict[str, Any]:
    """The `status --json` document. VIPs come from the maps when the data plane is
    pinned (they are the truth), else from state.toml (what was last applied)."""
    state = read_state(state_dir)
    pid = int(state.get("pid", 0) or 0)
    alive = daemonize.running(pid)
    pinned = bool(loader.pinned_programs(pin_dir))
    att = find_attachment(pin_dir, state.get("interface")) if pinned else None
    if dp is not None:
        vips = _vips_from_maps(dp)
    elif os.path.exists(os.path.join(pin_dir, "vips")):
        with open_pinned(pin_dir, state) as own:
            vips = _vips_from_maps(own)
    else:
        vips = _vips_from_state(state)
    add_health(vips, read_health(state_dir))
    last = state.get("last_reload")
    announce = state.get("announce") if isinstance(state.get("announce"), dict) else None
    for v in vips:
        per_vip = (announce or {}).get("vips", {}).get(vip_name(v))
        v["announce"] = dict(per_vip) if isinstance(per_vip, dict) else None
    world = neighbour_status(state, vips)
    return {
        "schema": STATUS_SCHEMA,
        "daemon": {
            "running": alive,
            "pid": pid if alive else None,
            "version": state.get("version"),
            "started_at": state.get("started_at") if alive else None,
        },
        "dataplane": {
            "pinned": pinned,
            "pin_dir": os.path.abspath(pin_dir),
            "attached": att is not None,
            "interface": att.interface if att else state.get("interface"),
            "mode": att.mode if att else None,
            "prog_id": att.prog_id if att else None,
            "prog_tag": state.get("prog_tag"),
            "source_digest": state.get("source_digest"),
            "problem": world["problem"],
        },
        "config": {
            "path": state.get("config"),
            "digest": state.get("config_digest"),
            "generation": state.get("generation"),
            "applied_at": state.get("applied_at"),
        },
        "reloads": int(state.get("reloads", 0) or 0),
        "last_reload": dict(last) if isinstance(last, dict) else None,
        "announce": None if announce is None else {
            k: announce.get(k) for k in ("file", "socket", "maintenance", "routes",
                                         "configured_at", "error")},
        "vips": vips,
        "warnings": world["warnings"],
    }


def _iso(t: Any) -> Optional[str]:
    if not isinstance(t, (int, float)) or t <= 0:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def add_health(vips: List[Dict[str, Any]], doc: Dict[str, Any]) -> None:
    """Each real's health (up | down | unchecked), state (active | draining | down), last
    check result and since when, and each VIP's failing_open, from health.json."""
    failing = set(doc.get("failing_open", []))
    checks = doc.get("checks", {})
    by_real = {(r.get("vip"), r.get("port"), r.get("protocol"), r.get("ip")): r
               for r in doc.get("reals", [])}
    for v in vips:
        v["failing_open"] = vip_name(v) in failing
        for r in v["reals"]:
            rec = by_real.get((v["vip"], v["port"], v["protocol"], r["ip"]), {})
            st = checks.get(rec.get("check", ""), {})
            last = st.get("last") or {}
            r["health"] = rec.get("health", "unchecked")
            if rec.get("state"):
                r["state"] = rec["state"]
            r["reason"] = rec.get("reason")
            r["health_since"] = _iso(st.get("since")) if st else None
            r["last_check"] = ({"ok": bool(last.get("ok")), "result": last.get("detail"),
                                "at": _iso(last.get("at"))} if last.get("at") else None)


def neighbour_status(state: Dict[str, Any], vips: List[Dict[str, Any]]) -> Dict[str, Any]:
    """What state.toml says of the link and the neighbour table: reals without a MAC
    (no backend: listed as state "down", mac null, with the reason) join their VIPs,
    and a configured mac that the neighbour table contradicts becomes a warning."""
    by_key = {(v["vip"], v["port"], v["protocol"]): v for v in vips}
    for u in state.get("unresolved", []):
        v = by_key.get((u.get("vip"), u.get("port"), u.get("protocol")))
        if v is None:
            continue
        listed = next((r for r in v["reals"] if r["ip"] == u.get("ip")), None)
        if listed is None:
            listed = {"ip": u.get("ip"), "mac": None, "weight": 0, "state": "down",
                      "backend_id": None}
            v["reals"].append(listed)
        else:  # known before, now draining on its last MAC
            listed["state"] = "down"
        listed["reason"] = u.get("reason", "unresolved")
    warnings = [f"real {c['ip']}: configured mac {c['config_mac']} but the neighbour table "
                f"says {c['neighbour_mac']} (the configured one is used)"
                for c in state.get("mac_conflicts", [])]
    if state.get("neighbour_error"):
        warnings.append(f"neighbour watch stopped: {state['neighbour_error']}")
    return {"problem": state.get("interface_problem") or None, "warnings": warnings}


def render_text(data: Dict[str, Any]) -> str:
    d, p, c = data["daemon"], data["dataplane"], data["config"]
    lines = []
    lines.append("daemon:      " + (f"running, pid {d['pid']}, since {d['started_at']}"
                                    if d["running"] else "not running"))
    if p["attached"]:
        where = f"attached to {p['interface']} ({p['mode']} XDP, program {p['prog_id']})"
    elif p["pinned"]:
        where = (f"pinned in {p['pin_dir']}, not attached to any interface of this network "
                 "namespace")
    else:
        where = f"not loaded (nothing pinned in {p['pin_dir']})"
    lines.append(f"data plane:  {where}")
    if p.get("problem"):
        lines.append(f"WARNING:     {p['problem']}")
    lines += [f"WARNING:     {w}" for w in data.get("warnings", [])]
    if c["digest"]:
        lines.append(f"config:      {c['path']}, generation {c['generation']}, digest "
                     f"{c['digest'][:12]}, applied {c['applied_at']}")
    lr = data["last_reload"]
    if lr:
        res = lr.get("result")
        more = (f", {lr.get('operations', 0)} map operations in {lr.get('duration_ms')} ms"
                if res == "ok" else "")
        lines.append(f"last reload: {lr.get('at')} ({lr.get('trigger')}): {res}{more} "
                     f"[{data['reloads']} reloads]")
        if lr.get("error"):
            lines += ["  " + ln for ln in str(lr["error"]).splitlines()]
    a = data.get("announce")
    if a:
        routes = a.get("routes") or []
        shown = ", ".join(r["prefix"] + (" (last resort)" if r.get("last_resort") else "")
                          for r in routes) or "nothing"
        lines.append(f"announce:    {'MAINTENANCE: ' if a.get('maintenance') else ''}"
                     f"{shown} via BIRD ({a.get('file')})")
        if a.get("error"):
            lines.append(f"  problem: {a['error']}")
    lines.append(f"VIPs:        {len(data['vips'])}")
    for v in data["vips"]:
        ann = v.get("announce")
        why = ""
        if ann:
            why = f"  [{ann.get('state')}{': ' + ann['reason'] if ann.get('reason') else ''}]"
        fo = "  all reals down: failing open" if v.get("failing_open") else ""
        lines.append(f"  {vip_name(v)}  ({len(v['reals'])} reals){fo}{why}")
        for r in v["reals"]:
            health = r.get("health", "unchecked")
            why = f" ({r['reason']})" if r.get("reason") else ""
            line = (f"    {r['ip']:<39} {r['mac'] or '-':<17}  weight {r['weight']:<4} "
                    f"{r['state']:<8} health {health}")
            if r.get("health_since"):
                line += f" since {r['health_since']}"
            lines.append(line + why)
            last = r.get("last_check")
            if last:
                lines.append(f"      last check {last['at']}: {last['result']}")
    return "\n".join(lines)
