"""The chaos soak's decisions, pure: which step comes next, and what the config becomes.

Everything random comes from one `random.Random(seed)`, so a seed replays the
same sequence of steps and configs (the kernel's timing is not replayed: where
a kill lands inside an apply varies, and the runner reports what it found).

The world is a set of VIPs, each with its reals and weights. One VIP carries
the wrk load (LOADED) and is never removed nor left without a real that takes
new flows; a stopped real is never its only one. Everything else is fair game.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple

# name -> (address key in the lab: "vip4" | "vip6" | a literal address, port, protocol)
VIP_POOL: Dict[str, Tuple[str, int, str]] = {
    "v4http": ("vip4", 80, "tcp"),
    "v4udp": ("vip4", 5353, "udp"),
    "v6http": ("vip6", 80, "tcp"),
    "x1": ("10.99.0.101", 80, "tcp"),
    "x2": ("10.99.0.102", 8080, "tcp"),
    "x6": ("fd00:99::101", 443, "tcp"),
}
LOADED = "v4http"
REALS = ("real1", "real2", "real3", "real4")

# Step kinds and their weights: config changes most, process and real events often.
KINDS: Dict[str, int] = {
    "add_real": 4, "remove_real": 3, "weight": 4, "drain": 3, "add_vip": 2, "remove_vip": 2,
    "sighup": 2, "invalid_config": 1, "restart": 2, "kill9": 2, "kill9_mid_apply": 3,
    "real_bounce": 2,
}
CONFIG_KINDS = frozenset({"add_real", "remove_real", "weight", "drain", "add_vip",
                          "remove_vip"})

World = Dict[str, Dict[str, int]]  # vip name -> {real name: weight}, in insertion order


def initial_world() -> World:
    return {"v4http": {"real1": 1, "real2": 1, "real3": 1},
            "v4udp": {"real1": 1, "real2": 1},
            "v6http": {"real2": 1, "real3": 1}}


@dataclass(frozen=True)
class Step:
    n: int
    kind: str
    world: World  # the config after the step
    detail: str
    real: Optional[str] = None  # real_bounce: the real stopped and started
    kill_after_ms: float = 0.0  # kill9_mid_apply: delay between the write and the kill
    down_s: float = 0.0  # real_bounce: how long nginx stays down
    removed: FrozenSet[Tuple[str, str]] = field(default_factory=frozenset)  # (vip, real)
    removed_vips: FrozenSet[str] = field(default_factory=frozenset)

    @property
    def changes_config(self) -> bool:
        return self.world is not None and self.kind in CONFIG_KINDS | {"kill9_mid_apply"}

    def removes_loaded_real(self) -> bool:
        return any(v == LOADED for v, _ in self.removed)


def _copy(w: World) -> World:
    return {v: dict(r) for v, r in w.items()}


def _active(w: World, vip: str) -> List[str]:
    return [r for r, wt in w.get(vip, {}).items() if wt > 0]


def _keeps_load(w: World) -> bool:
    """The loaded VIP has at least one real taking new flows."""
    return bool(_active(w, LOADED))


def config_change(rng: random.Random, world: World, kind: str
                  ) -> Optional[Tuple[World, str, FrozenSet[Tuple[str, str]], FrozenSet[str]]]:
    """One config change of `kind`, or None if none is possible in this world."""
    w = _copy(world)
    removed: FrozenSet[Tuple[str, str]] = frozenset()
    gone: FrozenSet[str] = frozenset()
    if kind == "add_real":
        opts = [(v, r) for v in sorted(w) for r in REALS if r not in w[v]]
        if not opts:
            return None
        v, r = rng.choice(opts)
        w[v][r] = rng.randint(1, 3)
        detail = f"{v}: +{r} weight {w[v][r]}"
    elif kind == "remove_real":
        opts = [(v, r) for v in sorted(w) for r in w[v] if len(w[v]) > 1]
        opts = [(v, r) for v, r in opts if v != LOADED or len(_active(w, v)) > 1
                or w[v][r] == 0]
        if not opts:
            return None
        v, r = rng.choice(opts)
        del w[v][r]
        removed = frozenset({(v, r)})
        detail = f"{v}: -{r}"
    elif kind in ("weight", "drain"):
        opts = [(v, r) for v in sorted(w) for r in w[v]]
        if kind == "drain":
            opts = [(v, r) for v, r in opts if w[v][r] > 0
                    and (v != LOADED or len(_active(w, v)) > 1)]
        if not opts:
            return None
        v, r = rng.choice(opts)
        w[v][r] = 0 if kind == "drain" else rng.choice([x for x in range(1, 6) if x != w[v][r]])
        detail = f"{v}: {r} weight {w[v][r]}"
    elif kind == "add_vip":
        free = [name for name in VIP_POOL if name not in w]
        if not free:
            return None
        v = rng.choice(free)
        w[v] = {r: rng.randint(0, 2) for r in rng.sample(REALS, rng.randint(1, len(REALS)))}
        detail = f"+vip {v} {w[v]}"
    elif kind == "remove_vip":
        others = [name for name in sorted(w) if name != LOADED]
        if not others:
            return None
        v = rng.choice(others)
        removed = frozenset((v, r) for r in w[v])
        gone = frozenset({v})
        del w[v]
        detail = f"-vip {v}"
    else:
        raise ValueError(kind)
    assert _keeps_load(w)
    return w, detail, removed, gone


def next_step(rng: random.Random, n: int, world: World) -> Step:
    """Step number `n` from `world` (the config in force)."""
    kinds = list(KINDS)
    while True:
        kind = rng.choices(kinds, weights=[KINDS[k] for k in kinds])[0]
        if kind in CONFIG_KINDS or kind == "kill9_mid_apply":
            sub = kind if kind in CONFIG_KINDS else rng.choice(sorted(CONFIG_KINDS))
            change = config_change(rng, world, sub)
            if change is None:
                continue
            w, detail, removed, gone = change
            kill_ms = rng.uniform(0.0, 80.0) if kind == "kill9_mid_apply" else 0.0
            if kill_ms:
                detail += f", kill -9 {kill_ms:.0f} ms after the write"
            return Step(n, kind, w, detail, kill_after_ms=kill_ms, removed=removed,
                        removed_vips=gone)
        if kind == "real_bounce":
            # Never the loaded VIP's only active real: that would fail every request.
            opts = [r for r in REALS if _active(world, LOADED) != [r]]
            real = rng.choice(opts)
            down = rng.uniform(0.1, 0.6)
            return Step(n, kind, _copy(world), f"nginx on {real} down {down:.1f} s", real=real,
                        down_s=down)
        return Step(n, kind, _copy(world), kind)


def steps(seed: int, world: Optional[World] = None) -> StepSource:
    return StepSource(random.Random(seed), world or initial_world())


class StepSource:
    """The seeded sequence of steps; each step's world becomes the next one's."""

    def __init__(self, rng: random.Random, world: World) -> None:
        self.rng = rng
        self.world = world
        self.n = 0

    def next(self) -> Step:
        self.n += 1
        step = next_step(self.rng, self.n, self.world)
        self.world = step.world
        return step
