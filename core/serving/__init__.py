"""Serving: one process, one backbone, hot-swapped region adapters; the HTTP app.

``recommender`` (the Recommender), ``budget`` (adapter budget: lazy loads, LRU eviction),
``growth`` (catalogue growth of a loaded region), ``entries`` (loaded regions, shared bodies,
item batches), ``item_item`` (the adapters' item-item part in a batch), ``forward`` (the
mixed-region forward), ``batching`` (dynamic batching), ``fetch`` (adapter files and hub
downloads), ``errors``; the HTTP side: ``app`` (routes, ``create_app``), ``server``
(``serve``: load, then uvicorn), ``auth`` (bearer tokens), ``ops`` (readiness), ``roots``
(adapter roots, public paths), ``docs`` (offline API docs), ``schemas``, ``http_errors``,
``middleware``.
"""
