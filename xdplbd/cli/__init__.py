"""The operator CLI, xdplb: its commands, `status`, and the `top`/`debug` dashboard.

May import: `xdplbd.service`, `xdplbd.kernel` and `xdplbd.core`. Never the lab.
Reading commands go through libbpf only: they never import bcc (~70 MB).
"""
