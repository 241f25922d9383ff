"""``regiontune push`` and ``regiontune pull``: publish to and fetch from a hub. Hub errors
(``HubError``) are RuntimeErrors, so the ``command`` wrapper reports them like any known error."""

from __future__ import annotations

from pathlib import Path

import typer

from regiontune.cli.common import VerboseOpt, app, command

EndpointOpt = typer.Option(None, "--endpoint", help="Hub URL (default: HF_ENDPOINT or "
                           "https://huggingface.co). The token comes from HF_TOKEN or the "
                           "hub's login cache.")


@app.command()
@command
def push(directory: Path = typer.Argument(..., help="Adapter or backbone directory."),
         repo: str = typer.Option(..., "--repo", help="ORG/NAME on the hub."),
         private: bool = typer.Option(False, "--private"),
         revision: str = typer.Option(None, "--revision", help="Branch to push to."),
         endpoint: str = EndpointOpt, verbose: bool = VerboseOpt) -> None:
    """Publish an adapter or backbone (safetensors only) with its model card."""
    from regiontune.hub.client import push as run

    commit = run(directory, repo, endpoint=endpoint, private=private, revision=revision)
    typer.echo(f"pushed {directory} to {repo} (commit {commit})")


@app.command()
@command
def pull(repo: str = typer.Argument(..., help="ORG/NAME on the hub."),
         out: Path = typer.Option(..., "--out", help="Directory to write."),
         revision: str = typer.Option(None, "--revision", help="Branch, tag or commit."),
         backbone: Path = typer.Option(None, "--backbone", help="Check that a pulled adapter "
                                       "was made for this backbone."),
         endpoint: str = EndpointOpt, verbose: bool = VerboseOpt) -> None:
    """Download an adapter or backbone; refuses pickle weights and foreign backbones."""
    from regiontune.hub.client import pull as run

    path = run(repo, out, revision=revision, endpoint=endpoint, backbone_dir=backbone)
    typer.echo(f"pulled {repo} into {path}")
