"""The ``regiontune`` command: one module per command group."""
