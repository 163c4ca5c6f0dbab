"""The soak's pure parts: seeded steps replay exactly, worlds keep the load servable,
and the counter check catches a total that went down."""

from __future__ import annotations

from xdplbd.lab import chaos
from xdplbd.lab.soak import counter_problems


def _run(seed: int, n: int = 300) -> list:
    src = chaos.steps(seed)
    return [src.next() for _ in range(n)]


def test_a_seed_replays_the_same_steps() -> None:
    assert _run(7) == _run(7)
    assert _run(7) != _run(8)


def test_every_world_keeps_the_loaded_vip_served() -> None:
    for seed in range(20):
        for step in _run(seed):
            active = [r for r, w in step.world[chaos.LOADED].items() if w > 0]
            assert active, step
            if step.kind == "real_bounce":
                assert active != [step.real], step
            for (vip, real) in step.removed:
                assert real not in step.world.get(vip, {})


def test_every_kind_comes_up() -> None:
    assert {s.kind for s in _run(3, 400)} == set(chaos.KINDS)


def test_counter_check() -> None:
    a = {"outcomes": {"tx": 10}, "vips": {("v", 0): 5}, "reals": {("v", "ip", 1): 3}}
    b = {"outcomes": {"tx": 12}, "vips": {("v", 0): 5}, "reals": {("v", "ip", 1): 4}}
    assert counter_problems(a, b) == []
    c = {"outcomes": {"tx": 9}, "vips": {}, "reals": {("v", "ip", 1): 2}}
    assert len(counter_problems(a, c)) == 2  # tx and the real went down; the VIP left
