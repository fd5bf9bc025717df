"""Subcommands of the ``qrhead`` CLI (one module each)."""
