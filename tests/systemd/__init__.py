"""Tests under a real systemd, booted with systemd-nspawn (see container.py)."""
