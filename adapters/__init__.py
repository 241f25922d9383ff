"""Region adapters: one module per method, one registry."""
