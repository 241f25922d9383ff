"""What a recommender refuses, and the region-name check (region names reach paths)."""

from __future__ import annotations

import re
from typing import Any

from regiontune.artifacts import ArtifactError

REGION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ServingError(Exception):
    """Base class of the errors a recommender raises on a bad call."""


class InvalidRequestError(ServingError, ValueError):
    """A malformed request (bad region name, k, lengths)."""


class UnknownRegionError(ServingError, LookupError):
    """No adapter is loaded for the region and the recommender refuses to guess."""


class AdapterLoadError(ServingError, ArtifactError):
    """An adapter could not be loaded; whatever served the region before still does."""


class TextEncodingError(ServingError):
    """Item text was sent but the server cannot encode it (its text encoder is missing)."""


class PersistError(ServingError):
    """A change asked to be saved to the adapter's folder cannot be: nothing was changed."""


def check_region(region: Any) -> str:
    """A region name: letters, digits, ``_``, ``-``, ``.``; no ``..`` (names reach paths)."""
    if not isinstance(region, str) or not REGION_NAME.fullmatch(region) or ".." in region \
            or region.strip(".") == "":
        raise InvalidRequestError(f"invalid region name {region!r}: use 1-64 letters, digits, "
                                  "'_', '-' or '.', without '..'")
    return region
