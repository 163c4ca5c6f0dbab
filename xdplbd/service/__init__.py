"""The daemon, xdplbd.

Owns the main loop (desired state -> plan -> apply), the config watch,
sd_notify, state.toml, logging (journald, syslog, files), the original
`xdplb start`/`stop` daemonizing, and the Prometheus exporter.

May import: `xdplbd.kernel` and `xdplbd.core`. Never the cli or lab layers.
"""
