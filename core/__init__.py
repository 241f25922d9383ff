"""Core of regiontune: data, backbone, training, evaluation, serving, hub, CLI."""
