"""Benches of the running Serve app (load, faults)."""
