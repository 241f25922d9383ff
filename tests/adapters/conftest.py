"""Fixtures of the adapter tests."""

from __future__ import annotations

import pytest

from tests.adapters.common import REGION


@pytest.fixture(scope="package")
def island(tiny_regions):
    return tiny_regions[REGION]
