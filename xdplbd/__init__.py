"""xdplb: XDP L4 load balancer with Direct Server Return."""

__version__ = "0.1.0"
