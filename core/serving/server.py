"""``regiontune serve``: load the backbone and the adapters, build the app, run uvicorn."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from regiontune.serving.app import create_app
from regiontune.serving.auth import READ_TOKEN_ENV, TOKEN_ENV
from regiontune.serving.recommender import Recommender
from regiontune.serving.roots import adapter_dirs
from regiontune.serving.schemas import ServingLimits

logger = logging.getLogger("regiontune.serving.app")


def serve(backbone_dir: str | Path, adapters_dir: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 8000, admin_token: str | None = None,
          unknown_region: str = "error", adapters: list[tuple[str, str]] | None = None,
          adapter_roots: Sequence[str | Path] = (), limits: ServingLimits | None = None,
          hub_timeout_s: float = 10.0, hub_deadline_s: float = 120.0,
          batch_wait_ms: float = 2.0, max_loaded_adapters: int | None = None,
          adapter_memory_mb: float | None = None, read_token: str | None = None,
          cors_origins: Sequence[str] = (), text_encoder: str | Path | None = None,
          text_deadline_s: float = 60.0) -> None:
    """Load the backbone and every adapter under ``adapters_dir``, then run uvicorn; each
    ``(region, source)`` of ``adapters`` (a directory or a hub id ``org/name[@revision]``) is
    loaded in the background once the server is up (``/readyz``: 503 until then; one that
    fails is logged and named there, the others serve).

    Admin ``PUT`` loads local adapters only from ``adapters_dir`` and ``adapter_roots``.
    Unknown regions get a 404 unless ``unknown_region="backbone"``. Hub requests give up after
    ``hub_timeout_s`` without connecting or without a byte, a whole download after
    ``hub_deadline_s``. Without ``admin_token``, ``$REGIONTUNE_ADMIN_TOKEN`` is used (keeps it
    off command lines); without ``read_token``, ``$REGIONTUNE_READ_TOKEN`` (none: read routes
    are open). ``cors_origins``: see :func:`create_app`. Temporary download folders are
    removed on shutdown.
    ``batch_wait_ms``: dynamic batching of concurrent requests (0: off; rows per pass:
    ``limits.max_batch``). With ``max_loaded_adapters`` or ``adapter_memory_mb``, the adapter
    roots' regions load on first request (as many as fit are preloaded) and the least
    recently used are evicted past the budget.
    ``text_encoder``: the folder of the backbone's text encoder for item text sent to grow
    calls (None: the one recorded at pretraining); when given it is loaded and checked at
    start. One grow call's encoding may take ``text_deadline_s`` seconds (then a 503).
    """
    import uvicorn

    from regiontune.hub.client import set_timeouts

    limits = limits or ServingLimits()
    admin_token = admin_token or os.environ.get(TOKEN_ENV) or None
    read_token = read_token or os.environ.get(READ_TOKEN_ENV) or None
    roots = [Path(r) for r in ([adapters_dir] if adapters_dir is not None else [])]
    roots += [Path(r) for r in adapter_roots]
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such adapter root directory")
    set_timeouts(hub_timeout_s, hub_timeout_s)
    lazy = max_loaded_adapters is not None or adapter_memory_mb is not None
    recommender = Recommender.from_dirs(backbone_dir, [] if lazy else adapter_dirs(adapters_dir),
                                        unknown_region=unknown_region,
                                        hub_deadline_s=hub_deadline_s,
                                        batch_wait_ms=batch_wait_ms, max_batch=limits.max_batch,
                                        max_loaded=max_loaded_adapters,
                                        adapter_memory_mb=adapter_memory_mb,
                                        lazy_roots=roots if lazy else ())
    recommender.text_encoder_path = text_encoder
    recommender.text_deadline_s = text_deadline_s
    if text_encoder is not None:
        if getattr(recommender.backbone.config, "item_text", False):
            recommender.text_encoder()  # a wrong folder stops the server now, not at a grow
        else:
            logger.warning("--text-encoder is not used: the backbone is id-only")
    try:
        if lazy:
            recommender.preload()
        if admin_token is None and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("admin routes are open to anyone who can reach %s:%s; set %s",
                           host, port, TOKEN_ENV)
        logger.info("serving %d regions on %s:%s (unknown regions: %s)%s",
                    len(recommender.regions()), host, port, unknown_region,
                    f"; {len(adapters)} more loading" if adapters else "")
        app = create_app(recommender, admin_token=admin_token, adapter_roots=roots,
                         read_token=read_token, cors_origins=cors_origins,
                         preload=list(adapters or []), **limits.__dict__)
        uvicorn.run(app, host=host, port=port)
    finally:
        recommender.close()
