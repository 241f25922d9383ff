"""A backbone and an adapter made by the command itself, once for all the CLI tests."""

from __future__ import annotations

import pytest

from tests.cli.helpers import TINY, invoke, ok


@pytest.fixture(scope="package")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="package")
def backbone(workdir):
    out = workdir / "bb"
    text = ok(invoke("pretrain", "--out", out, "--regions", "north,south", *TINY))
    assert "backbone written to" in text
    return out, text


@pytest.fixture(scope="package")
def adapter(workdir, backbone):
    out = workdir / "island"
    result = invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                    "--method", "lora", "--epochs", "1", "--set", "train.progress=false")
    return out, ok(result)
