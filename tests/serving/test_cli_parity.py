"""``regiontune recommend`` and the server rank with one scoring path: the same top items for
any history, an empty one and one whose items the region does not know included."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from regiontune.cli.main import app as cli
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories, make_adapter

K = 8


@pytest.fixture(scope="module")
def setup(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity_adapters")
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 11)
    rec = Recommender.from_dirs(tiny_backbone_dir, [root / "west"], unknown_region="backbone")
    yield tiny_backbone_dir, root / "west", TestClient(create_app(rec)), tiny_regions
    rec.close()


def cli_top(backbone, adapter, region: str, history: list[str]) -> list[str]:
    result = CliRunner().invoke(cli, ["recommend", "--model", str(backbone), "--adapter",
                                      str(adapter), "--region", region, "--history",
                                      ",".join(history), "-k", str(K)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return [line.split()[1] for line in result.output.splitlines()
            if line.strip()[:1].isdigit() and line.split()[0].endswith(".")]


@pytest.mark.parametrize("region", ["west", "atlantis"])  # adapter; un-adapted backbone
@pytest.mark.parametrize("kind", ["empty", "all-unknown", "known"])
def test_cli_and_server_agree(setup, region, kind):
    backbone, adapter, client, regions = setup
    history = {"empty": [], "all-unknown": ["ghost-1", "ghost-2"],
               "known": histories(regions["west"], 2)[1]}[kind]
    served = client.post("/v1/recommend", json={"region": region, "history": history,
                                                "k": K})
    assert served.status_code == 200, served.text
    assert cli_top(backbone, adapter, region, history) == served.json()["items"]
