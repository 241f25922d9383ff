"""Serving: one process, one backbone, hot-swapped region adapters; the HTTP app."""
