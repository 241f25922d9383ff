"""The model hub: push and pull backbones and adapters."""
