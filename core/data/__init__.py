"""Data: reading interaction files, the named recipes, per-region splits."""
