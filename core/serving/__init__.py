"""Serving: one process, one backbone, hot-swapped region adapters; the HTTP app.

``recommender`` (the Recommender), ``entries`` (loaded regions, shared bodies, item batches),
``forward`` (the mixed-region forward), ``fetch`` (adapter files and hub downloads),
``errors``; the HTTP side: ``app`` (routes), ``schemas``, ``http_errors``, ``middleware``.
"""
