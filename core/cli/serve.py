"""``regiontune serve``: every region from one process over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from regiontune.cli.common import VerboseOpt, app, command


@app.command()
@command
def serve(backbone: Path = typer.Option(..., "--backbone", help="Backbone directory."),
          adapters: Path = typer.Option(None, "--adapters", help="Directory whose "
                                        "sub-directories are adapters; all are served, and "
                                        "admin PUT may load others from it."),
          adapter: list[str] = typer.Option([], "--adapter", help="REGION=SOURCE: one more "
                                            "adapter, SOURCE a directory or a hub id "
                                            "org/name[@revision]. Repeatable."),
          adapter_root: list[Path] = typer.Option([], "--adapter-root", help="A directory "
                                                  "admin PUT may load local adapters from "
                                                  "(besides --adapters). Repeatable."),
          host: str = typer.Option("127.0.0.1", "--host"),
          port: int = typer.Option(8000, "--port"),
          unknown_region: str = typer.Option("error", "--unknown-region", help="error: a "
                                             "region without an adapter gets a 404; backbone: "
                                             "served by the un-adapted backbone (a WARNING "
                                             "names each such region once)."),
          max_body_bytes: int = typer.Option(2 * 2**20, "--max-body-bytes", min=1,
                                             help="Larger request bodies get a 413."),
          max_history: int = typer.Option(200, "--max-history", min=1,
                                          help="Items per history."),
          max_item_chars: int = typer.Option(256, "--max-item-chars", min=1,
                                             help="Characters per item id."),
          max_batch: int = typer.Option(256, "--max-batch", min=1,
                                        help="Requests per batch request, and rows per "
                                        "dynamically gathered pass."),
          batch_wait_ms: float = typer.Option(2.0, "--batch-wait-ms", min=0.0,
                                              help="Dynamic batching: milliseconds a request "
                                              "may wait for concurrent ones to share its "
                                              "forward pass (0 disables)."),
          max_loaded_adapters: int = typer.Option(None, "--max-loaded-adapters", min=1,
                                                  help="At most this many adapters in "
                                                  "memory: regions under --adapters / "
                                                  "--adapter-root load on first request, the "
                                                  "least recently used are evicted."),
          adapter_memory_mb: float = typer.Option(None, "--adapter-memory-mb", min=0.001,
                                                  help="As --max-loaded-adapters, bounding "
                                                  "the MiB of adapter tensors instead."),
          max_k: int = typer.Option(1000, "--max-k", min=1, help="Items per answer."),
          max_grow_items: int = typer.Option(1000, "--max-grow-items", min=1, help="Items "
                                             "one admin POST /v1/regions/{region}/items may "
                                             "add."),
          max_grow_pairs: int = typer.Option(20000, "--max-grow-pairs", min=1, help="Co-"
                                             "occurrence pairs one such call may send."),
          max_item_text_chars: int = typer.Option(2000, "--max-item-text-chars", min=1,
                                                  help="Characters of one item's text in "
                                                  "such a call."),
          text_encoder: Path = typer.Option(None, "--text-encoder", help="The backbone's "
                                            "text encoder folder, for item text sent to grow "
                                            "calls (default: the one recorded at "
                                            "pretraining); checked at start."),
          text_deadline: float = typer.Option(60.0, "--text-deadline", min=0.001,
                                              help="Seconds one grow call's item texts may "
                                              "take to encode (then a 503)."),
          hub_timeout: float = typer.Option(10.0, "--hub-timeout", min=0.001, help="Seconds a "
                                            "hub request may wait to connect or for a byte."),
          hub_deadline: float = typer.Option(120.0, "--hub-deadline", min=0.001, help="Seconds "
                                             "a whole hub download may take (then a 422)."),
          read_token: str = typer.Option(None, "--read-token", envvar="REGIONTUNE_READ_TOKEN",
                                         show_envvar=True, help="Bearer token required on read "
                                         "routes (recommend, regions, metrics; the admin token "
                                         "is accepted too); health and readiness stay open. "
                                         "Prefer the env var (keeps it off the command line)."),
          cors_origin: list[str] = typer.Option([], "--cors-origin", help="An origin "
                                                 "(https://host[:port], or *) allowed "
                                                 "cross-origin requests. Repeatable; none by "
                                                 "default."),
          verbose: bool = VerboseOpt) -> None:
    """Serve every region from one process over HTTP.

    Admin routes (PUT/DELETE /v1/regions/..., POST /v1/regions/.../items) require the
    token in REGIONTUNE_ADMIN_TOKEN.
    --adapter sources load in the background: GET /readyz answers 503 until they are loaded.
    """
    from regiontune.serving.app import ServingLimits
    from regiontune.serving.server import serve as run

    pairs = [tuple(a.split("=", 1)) for a in adapter]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("--adapter takes REGION=SOURCE")
    limits = ServingLimits(max_body_bytes=max_body_bytes, max_history=max_history,
                           max_item_chars=max_item_chars, max_batch=max_batch, max_k=max_k,
                           max_grow_items=max_grow_items, max_grow_pairs=max_grow_pairs,
                           max_item_text_chars=max_item_text_chars)
    run(backbone, adapters, host, port, os.environ.get("REGIONTUNE_ADMIN_TOKEN"),
        unknown_region, pairs, adapter_roots=adapter_root, limits=limits,
        hub_timeout_s=hub_timeout, hub_deadline_s=hub_deadline, batch_wait_ms=batch_wait_ms,
        max_loaded_adapters=max_loaded_adapters, adapter_memory_mb=adapter_memory_mb,
        read_token=read_token, cors_origins=cors_origin, text_encoder=text_encoder,
        text_deadline_s=text_deadline)
