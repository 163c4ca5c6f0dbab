"""The functional core: pure, typed, root-free.

Owns the config (parsing, validation, the model), Maglev rings, the plan (a
pure diff of the desired state against the live state), the map layouts
(schema) and flow hashing, the conntrack layout and clock arithmetic, the
counters ledger's arithmetic, and `explain`.

May import: the standard library and other `xdplbd.core` modules, nothing
else. import-linter enforces it (`make lint`); tests run it without root.
"""
