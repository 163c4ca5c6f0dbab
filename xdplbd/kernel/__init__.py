"""The thin shell over the kernel.

Owns libbpf through ctypes (maps, pins, program info, XDP attach, test_run,
raw-instruction programs), the BCC loader, the pinned maps (`DataPlane`)
and the plan's application to them, attaching, snapshots of the maps, the
jiffies calibration, and interface and network-namespace helpers.

May import: `xdplbd.core`. Never the service, cli or lab layers.
"""
