"""The namespace lab (client, LB, nginx reals on a bridge) and `make demo`.

May import every other layer; nothing in core, kernel, service or cli
imports it. `python -m xdplbd.lab` builds and tears down a lab;
`python -m xdplbd.lab.demo` is what `make demo` runs.
"""
